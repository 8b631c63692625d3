"""Autoscaling with real processes: a cluster deployed with min_workers 0 and max_workers 2 on a real
`portal run` with three demo agents. A Ray job needing more GPUs than the one-node cluster has makes Ray's
autoscaler (v2, on the head, with the portal's node provider) ask the portal for workers; the portal books
the two other devices and their agents start Ray workers that join the head; the job runs on three nodes.
Once idle past the timeout, the autoscaler releases the workers: the cluster is one node again, still
running, the devices are back in the pool, and the added nodes were charged like any other."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import RunningPortal, wait_until
from tests.test_chaos import run_job, three_agent_portal
from tests.test_cluster_journey import sign_in

pytestmark = [pytest.mark.slow, pytest.mark.browser]
IDLE_TIMEOUT_S = 15
# Three one-GPU bundles on three distinct nodes, on a one-node cluster: the autoscaler must add two
# one-GPU workers, and a task in each bundle reports its node.
SPREAD_JOB = (
    'python -c "import ray; from ray.util.placement_group import placement_group; '
    "from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy as In; ray.init(); "
    "g = placement_group([{'GPU': 1, 'CPU': 1}] * 3, strategy='STRICT_SPREAD'); ray.get(g.ready()); "
    "f = ray.remote(num_gpus=1)(lambda: ray.get_runtime_context().get_node_id()); "
    "r = ray.get([f.options(scheduling_strategy=In(g, i)).remote() for i in range(3)]); "
    "print('NODES', len(set(r)), 'GPUS', ray.cluster_resources().get('GPU'))\""
)


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPortal]:
    idle = {"PORTAL_AUTOSCALE_IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S)}
    with three_agent_portal(tmp_path_factory.mktemp("autoscaling"), idle) as running:
        yield running


def active(cluster: dict) -> list[dict]:
    return [n for n in cluster["nodes"] if n["state"] in ("assigned", "starting", "joined")]


def test_a_cluster_grows_with_its_ray_load_and_shrinks_back_when_idle(portal, page: Page):
    customer, provider = sign_in(portal, "customer"), sign_in(portal, "provider")
    # Deployed from the wizard: one GPU, autoscaling between 0 and 2 workers.
    logins = {
        login["role"]: login for login in json.loads((portal.data_dir / "demo_logins.json").read_text())
    }
    page.goto(portal.url + "/login?next=/deploy")
    page.locator("#email").fill(logins["customer"]["email"])
    page.locator("#password").fill(logins["customer"]["password"])
    page.locator("#submit-sign-in").click()
    expect(page).to_have_url(re.compile(r"/deploy/?$"))
    expect(page.locator("#quote-total")).to_have_text("$4.00")  # the wizard's default: 2 GPUs, 1 h
    page.locator("#deploy-name").fill("elastic")
    page.locator("#deploy-gpus").fill("1")
    page.locator("#deploy-autoscale").click()
    page.locator("#deploy-max-workers").fill("2")
    expect(page.locator("#quote-total")).to_have_text("$2.00")
    page.locator("#deploy-button").click()
    expect(page).to_have_url(re.compile(r"/cluster/[0-9a-f-]+/?$"), timeout=15_000)
    expect(page.locator("#cluster-autoscaling")).to_have_text("0 to 2 workers, with the Ray load")
    cluster_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    fetch = lambda: customer.get(f"/clusters/{cluster_id}").json()  # noqa: E731
    cluster = wait_until(fetch, lambda c: c["state"] == "running", timeout_s=120, every_s=1)
    assert len(active(cluster)) == 1

    # The load needs three GPUs: the autoscaler adds two workers and the job spreads over three nodes.
    logs = run_job(customer, cluster_id, SPREAD_JOB)
    assert "NODES 3 GPUS 3.0" in logs, logs
    cluster = fetch()
    assert cluster["state"] == "running" and cluster["gpu_count"] == 3
    assert [n["role"] for n in active(cluster)] == ["head", "worker", "worker"]
    messages = [e["message"] for e in cluster["events"] if e["kind"] == "scaled_up"]
    assert messages and all("The Ray autoscaler asked for" in m for m in messages)

    # Idle past the timeout: both workers are released, the cluster runs on as one node.
    cluster = wait_until(fetch, lambda c: len(active(c)) == 1, timeout_s=IDLE_TIMEOUT_S + 90, every_s=1)
    assert cluster["state"] == "running" and cluster["gpu_count"] == 1
    assert len([e for e in cluster["events"] if e["kind"] == "scaled_down"]) == 2
    assert not [e for e in cluster["events"] if e["kind"] in ("node_lost", "scale_refused")]
    wait_until(
        lambda: provider.get("/devices").json(),
        lambda devices: sorted(d["state"] for d in devices) == ["hired", "ready", "ready"],
        timeout_s=60,
    )
    expect(page.locator("#cluster-log")).to_contain_text("released an idle worker", timeout=15_000)

    # The added workers were metered like any other node: their devices have usage lines.
    assert customer.delete(f"/clusters/{cluster_id}").status_code in (200, 202)
    wait_until(fetch, lambda c: c["state"] == "terminated", timeout_s=60, every_s=1)
    usage = customer.get("/billing/usage", params={"cluster_id": cluster_id, "limit": 100}).json()
    charged_devices = {line["device_name"] for line in usage["items"]}
    assert len(charged_devices) == 3
