"""Autoscaling with real processes: a cluster deployed with min_workers 0 and max_workers 2 on a real
`portal run` with three demo agents. A Ray job needing more GPUs than the one-node cluster has makes Ray's
autoscaler (v2, on the head, with the portal's node provider) ask the portal for workers; the portal books
the two other devices and their agents start Ray workers that join the head; the job runs on three nodes.
Once idle past the timeout, the autoscaler releases the workers: the cluster is one node again, still
running, the devices are back in the pool, and the added nodes were charged like any other."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import RunningPortal, start_portal, stop_process_group
from tests.test_chaos import run_job
from tests.test_cluster_journey import sign_in, wait_for

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
    running = start_portal(
        tmp_path_factory.mktemp("autoscaling"),
        env={
            "PORTAL_DEMO_AGENTS": "3",
            "PORTAL_AUTOSCALE_IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S),
            "PORTAL_METERING_INTERVAL_S": "5",
        },
    )
    try:
        provider = sign_in(running, "provider")
        wait_for(
            lambda: provider.get("/devices").json(),
            lambda devices: len(devices) == 3 and all(d["state"] == "ready" for d in devices),
            timeout_s=120,
        )
        yield running
    finally:
        stop_process_group(running.process)


def active(cluster: dict) -> list[dict]:
    return [n for n in cluster["nodes"] if n["state"] in ("assigned", "starting", "joined")]


def test_a_cluster_grows_with_its_ray_load_and_shrinks_back_when_idle(portal):
    customer, provider = sign_in(portal, "customer"), sign_in(portal, "provider")
    reply = customer.post(
        "/clusters",
        json={
            "name": "elastic",
            "gpu_model": "H100-80GB",
            "gpu_count": 1,
            "duration_hours": 1,
            "min_workers": 0,
            "max_workers": 2,
        },
    )
    assert reply.status_code == 202, reply.text
    cluster_id = reply.json()["id"]
    fetch = lambda: customer.get(f"/clusters/{cluster_id}").json()  # noqa: E731
    cluster = wait_for(fetch, lambda c: c["state"] == "running", timeout_s=120, every_s=1)
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
    cluster = wait_for(fetch, lambda c: len(active(c)) == 1, timeout_s=IDLE_TIMEOUT_S + 90, every_s=1)
    assert cluster["state"] == "running" and cluster["gpu_count"] == 1
    assert len([e for e in cluster["events"] if e["kind"] == "scaled_down"]) == 2
    assert not [e for e in cluster["events"] if e["kind"] in ("node_lost", "scale_refused")]
    wait_for(
        lambda: provider.get("/devices").json(),
        lambda devices: sorted(d["state"] for d in devices) == ["hired", "ready", "ready"],
        timeout_s=60,
    )

    # The added workers were metered like any other node: their devices have usage lines.
    assert customer.delete(f"/clusters/{cluster_id}").status_code in (200, 202)
    wait_for(fetch, lambda c: c["state"] == "terminated", timeout_s=60, every_s=1)
    usage = customer.get("/billing/usage", params={"cluster_id": cluster_id, "limit": 100}).json()
    charged_devices = {line["device_name"] for line in usage["items"]}
    assert len(charged_devices) == 3
