"""The customer's journey on a real `portal run`: two local agents with simulated GPUs run real Ray nodes.

Over the API: deploy a 2-GPU cluster, see it reach ``running`` with a head and a worker, run a Ray job that
gets a GPU on each node, read its logs, extend, terminate, and see both devices back to ready. In the
browser: the marketplace, the deploy wizard's live quote, the cluster page following the cluster to
``running``, a job and its output, and terminate.
"""

import json
import re
import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.conftest import RunningPortal, start_portal, stop_process_group, wait_until

pytestmark = pytest.mark.slow

# Two tasks of one GPU each, held for 2 s so that they run at once: each lands on its own node and sees
# the one GPU Ray gave it.
GPU_JOB = (
    'python -c "import ray, time; ray.init(); '
    "f = ray.remote(num_gpus=1)(lambda: (time.sleep(2), ray.get_runtime_context().get_node_id(), "
    "ray.get_gpu_ids())[1:]); r = ray.get([f.remote(), f.remote()]); "
    "print('GPUS', ray.cluster_resources().get('GPU'), 'NODES', len({n for n, _ in r}), "
    "'IDS', sorted(len(g) for _, g in r))\""
)


@pytest.fixture(scope="module")
def demo_portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPortal]:
    """`portal run` as `make run` starts it: demo accounts and two agents with one simulated H100 each."""
    running = start_portal(
        tmp_path_factory.mktemp("journey"),
        # Pay the provider as soon as anything is earned, so the journey sees a payout land.
        env={
            "PORTAL_DEMO_AGENTS": "2",
            "PORTAL_PAYOUT_THRESHOLD_MICRO": "1000",
            "PORTAL_SETTLEMENT_INTERVAL_S": "5",
            "PORTAL_DEPOSIT_SCAN_INTERVAL_S": "2",
        },
    )
    yield running
    stop_process_group(running.process)


def sign_in(portal: RunningPortal, role: str) -> httpx.Client:
    logins = {
        login["role"]: login for login in json.loads((portal.data_dir / "demo_logins.json").read_text())
    }
    client = httpx.Client(base_url=portal.url + "/api/v1", timeout=30)
    reply = client.post(
        "/auth/login", json={"email": logins[role]["email"], "password": logins[role]["password"]}
    )
    assert reply.status_code == 200, reply.text
    client.headers["Authorization"] = f"Bearer {reply.json()['access_token']}"
    return client


def devices_ready(provider: httpx.Client) -> bool:
    devices = provider.get("/devices").json()
    return len(devices) == 2 and all(d["state"] == "ready" for d in devices)


def test_deploy_run_a_gpu_job_extend_and_terminate(demo_portal):
    customer, provider = sign_in(demo_portal, "customer"), sign_in(demo_portal, "provider")
    wait_until(lambda: devices_ready(provider), timeout_s=90, what="both demo devices ready")

    offers = customer.get("/market/offers", params={"gpu_model": "H100-80GB"}).json()
    assert sum(o["gpus"] for o in offers) == 2 and all(o["simulated"] for o in offers)
    spec = {"gpu_model": "H100-80GB", "gpu_count": 2, "duration_hours": 1}
    quote = customer.post("/market/quote", json=spec).json()
    assert quote["available"] and quote["total_micro"] == 2 * 2_000_000

    started = time.monotonic()
    reply = customer.post("/clusters", json={"name": "journey", **spec})
    assert reply.status_code == 202, reply.text
    cluster_id = reply.json()["id"]
    assert customer.post("/clusters", json={"name": "too many", **spec}).json()["error"]["code"] == (
        "capacity_short"
    )
    cluster = wait_until(
        lambda: customer.get(f"/clusters/{cluster_id}").json(),
        lambda c: c["state"] in ("running", "failed"),
        timeout_s=120,
        every_s=0.25,
    )
    assert cluster["state"] == "running", cluster["events"]
    print(f"deploy to running: {time.monotonic() - started:.1f} s")
    assert sorted(n["role"] for n in cluster["nodes"]) == ["head", "worker"]
    assert all(n["state"] == "joined" and n["simulated"] for n in cluster["nodes"])
    assert cluster["ray_address"] and cluster["client_address"].startswith("ray://")
    assert cluster["simulated"] and cluster["escrow_micro"] <= 4_000_000
    kinds = [e["kind"] for e in cluster["events"]]
    assert kinds.count("node_joined") == 2 and kinds[-1] == "running"

    job = customer.post(f"/clusters/{cluster_id}/jobs", json={"entrypoint": GPU_JOB})
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    finished = wait_until(
        lambda: customer.get(f"/clusters/{cluster_id}/jobs/{job_id}").json(),
        lambda j: j["status"] in ("succeeded", "failed", "stopped"),
        timeout_s=120,
        every_s=1,
    )
    logs = customer.get(f"/clusters/{cluster_id}/jobs/{job_id}/logs").json()
    assert finished["status"] == "succeeded", logs["logs"]
    assert "GPUS 2.0 NODES 2 IDS [1, 1]" in logs["logs"]
    assert [j["id"] for j in customer.get(f"/clusters/{cluster_id}/jobs").json()["items"]] == [job_id]

    before = cluster["expires_at"]
    extended = customer.post(f"/clusters/{cluster_id}/extend", json={"hours": 2}).json()
    assert extended["duration_hours"] == 3 and extended["expires_at"] > before

    assert customer.delete(f"/clusters/{cluster_id}").status_code == 202
    ended = wait_until(
        lambda: customer.get(f"/clusters/{cluster_id}").json(),
        lambda c: c["state"] == "terminated",
        timeout_s=120,
        every_s=0.25,
    )
    assert ended["escrow_micro"] == 0 and all(n["state"] == "released" for n in ended["nodes"])
    assert ended["spent_micro"] > 0
    wait_until(lambda: devices_ready(provider), timeout_s=60, what="both demo devices ready")
    # Ended: jobs can no longer be submitted, and other people never see the cluster.
    assert customer.post(f"/clusters/{cluster_id}/jobs", json={"entrypoint": "true"}).status_code == 409
    assert provider.get(f"/clusters/{cluster_id}").status_code == 403


@pytest.mark.browser
def test_the_wizard_deploys_the_cluster_page_follows_it_and_terminate_ends_it(demo_portal, page: Page):
    provider = sign_in(demo_portal, "provider")
    wait_until(lambda: devices_ready(provider), timeout_s=90, what="both demo devices ready")
    login = {
        item["role"]: item for item in json.loads((demo_portal.data_dir / "demo_logins.json").read_text())
    }

    # The marketplace is public: both simulated H100s show, labelled as simulated.
    page.goto(demo_portal.url + "/market")
    expect(page.locator("#offers-table")).to_contain_text("H100-80GB")
    expect(page.locator("#offers-table")).to_contain_text("simulated")

    page.goto(demo_portal.url + "/login?next=/deploy")
    page.locator("#email").fill(login["customer"]["email"])
    page.locator("#password").fill(login["customer"]["password"])
    page.locator("#submit-sign-in").click()
    expect(page).to_have_url(re.compile(r"/deploy/?$"))
    # The quote follows the choices: 2 GPUs for 1 hour, then 3 hours.
    expect(page.locator("#quote-total")).to_have_text("$4.00")
    page.locator("#deploy-hours").fill("3")
    expect(page.locator("#quote-total")).to_have_text("$12.00")
    page.locator("#deploy-gpus").fill("5")
    expect(page.locator("#quote-unavailable")).to_contain_text("No set of available H100-80GB devices")
    expect(page.locator("#deploy-button")).to_be_disabled()
    page.locator("#deploy-gpus").fill("2")
    page.locator("#deploy-name").fill("from-the-wizard")
    expect(page.locator("#quote-total")).to_have_text("$12.00")
    page.locator("#deploy-button").click()

    expect(page).to_have_url(re.compile(r"/cluster/[0-9a-f-]+/?$"), timeout=15_000)
    expect(page.locator("#cluster-state")).to_have_text("running", timeout=90_000)
    expect(page.locator("#cluster-log")).to_contain_text("joined the head")
    expect(page.locator("#nodes-table")).to_contain_text("head")
    expect(page.locator("#client-address")).to_contain_text("ray://")
    # Live GPU charts: drawn from the agents' heartbeats, and growing without a page reload.
    expect(page.locator("#chart-util .js-plotly-plot")).to_be_visible(timeout=30_000)
    first = page.locator("#chart-points").inner_text()
    expect(page.locator("#chart-points")).not_to_have_text(first, timeout=30_000)

    page.locator("#job-entrypoint").fill("python -c \"print('hello from', 6 * 7)\"")
    page.locator("#submit-job").click()
    expect(page.locator("#jobs-table")).to_contain_text("succeeded", timeout=60_000)
    expect(page.locator("#job-logs")).to_contain_text("hello from 42", timeout=10_000)

    page.locator("#terminate-button").click()
    page.get_by_role("button", name="Terminate", exact=True).last.click()
    expect(page.locator("#cluster-state")).to_have_text("terminated", timeout=30_000)
    expect(page.locator("#cluster-log")).to_contain_text("returned")
    page.goto(demo_portal.url + "/clusters")
    expect(page.locator("#cluster-table")).to_contain_text("from-the-wizard")
    wait_until(lambda: devices_ready(provider), timeout_s=60, what="both demo devices ready")

    # Billing: the cluster's uptime is charged per device, the rest of the escrow came back.
    page.goto(demo_portal.url + "/billing")
    expect(page.locator("#usage-table")).to_contain_text("demo-rig-1")
    expect(page.locator("#usage-table")).to_contain_text("demo-rig-2")
    expect(page.locator("#ledger-table")).to_contain_text("Escrow returned")
    expect(page.locator("#balance-escrow")).to_have_text("$0.00")
    # The demo deposit on the local chain was swept and credited once.
    expect(page.locator("#deposits-table")).to_contain_text("$25.00")
    expect(page.locator("#deposits-table")).to_contain_text("confirmed")
    expect(page.locator("#ledger-table")).to_contain_text("Deposit")
    page.locator("#show-deposit-address").click()
    expect(page.locator("#deposit-address")).to_have_text(re.compile(r"^[1-9A-HJ-NP-Za-km-z]{32,44}$"))
    expect(page.get_by_alt_text("Deposit address QR code")).to_be_visible()
    expect(page.get_by_text("Local development chain (LiteSVM)")).to_be_visible()
    with page.expect_download() as download:
        page.locator("#download-invoice").click()
    invoice = download.value.path().read_text()
    assert invoice.startswith("period_start,") and "demo-rig-1" in invoice
    # The provider sees what the devices earned.
    page.context.clear_cookies()
    page.goto(demo_portal.url + "/login?next=/earnings")
    page.locator("#email").fill(login["provider"]["email"])
    page.locator("#password").fill(login["provider"]["password"])
    page.locator("#submit-sign-in").click()
    expect(page.locator("#earnings-devices")).to_contain_text("demo-rig-1")
    # Paid on chain: the payout is confirmed with its transaction signature linked to an explorer.
    expect(page.locator("#payouts-table")).to_contain_text("confirmed", timeout=60_000)
    expect(page.locator("#payouts-table a").first).to_have_attribute("href", re.compile(r"explorer"))
    expect(page.locator("#earned-paid")).not_to_have_text("$0.00")
    expect(page.locator("#chart-earnings .js-plotly-plot")).to_be_visible()
    # The public explorer draws the network's history (a picture a minute).
    page.goto(demo_portal.url + "/explorer")
    expect(page.locator("#explorer-online .js-plotly-plot")).to_be_visible(timeout=90_000)
    # ...and its figures now, as /api/v1/stats/network serves them.
    expect(page.locator("#stat-gpus-online")).to_have_text("2")
    expect(page.locator("#explorer-countries")).to_contain_text("NL")
    expect(page.locator("#stat-paid")).not_to_have_text("$0.00")
