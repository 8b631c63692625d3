"""A customer's autoscaled cluster on a real `portal run` whose two agents (`gpu-pool worker --isolation
container`, simulated GPUs) run its Ray nodes in Podman containers: deploy one node, a job that needs a GPU on
each of two nodes makes Ray's autoscaler in the head's container ask for a worker (through its agent's relay:
the device's token never enters the container), terminate, and nothing of the rental left on the machine.
Podman's settings and the worker image: tests/containers.py."""

import json
import os
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
from solders.keypair import Keypair
from sqlmodel import select

from gpu_pool.isolation import LABEL_DEVICE
from portal.infra.db import build_engine, session_scope
from portal.models import User
from tests.conftest import VENV_BIN, RunningPortal, start_portal, stop_process_group, wait_until
from tests.containers import NOTHING, of_label
from tests.test_cluster_journey import sign_in

pytestmark = pytest.mark.slow
# A GPU on each of two distinct nodes at once, on a one-node cluster: the autoscaler must add a worker.
SPREAD_GPU_JOB = (
    'python -c "import ray; from ray.util.placement_group import placement_group; '
    "from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy as In; ray.init(); "
    "g = placement_group([{'GPU': 1, 'CPU': 1}] * 2, strategy='STRICT_SPREAD'); ray.get(g.ready()); "
    "f = ray.remote(num_gpus=1)(lambda: (ray.get_runtime_context().get_node_id(), ray.get_gpu_ids())); "
    "r = ray.get([f.options(scheduling_strategy=In(g, i)).remote() for i in range(2)]); "
    "print('GPUS', ray.cluster_resources().get('GPU'), 'NODES', len({n for n, _ in r}), "
    "'IDS', sorted(len(x) for _, x in r))\""
)


@pytest.fixture
def portal_without_agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPortal]:
    running = start_portal(tmp_path_factory.mktemp("isolated"), env={"PORTAL_DEMO_AGENTS": "0"})
    yield running
    stop_process_group(running.process)


def add_devices(portal: RunningPortal, provider: httpx.Client, count: int) -> list[tuple[str, str]]:
    """Devices added through the API, their ids and tokens; the provider gets a payout wallet (hireable)."""
    added = [provider.post("/devices", json={"name": f"boxed-{n}", "country": "DE"}) for n in range(count)]
    assert all(reply.status_code == 201 for reply in added), added[0].text
    engine = build_engine(portal.database_url)
    with session_scope(engine) as session:
        owner = session.exec(select(User).where(User.email == provider.get("/me").json()["email"])).one()
        owner.wallet_address = str(Keypair().pubkey())
        session.add(owner)
    engine.dispose()
    return [(reply.json()["device"]["id"], reply.json()["device_token"]) for reply in added]


def test_a_cluster_of_containerised_nodes_deploys_runs_a_gpu_job_and_leaves_nothing(
    portal_without_agents, worker_image, tmp_path
):
    portal = portal_without_agents
    customer, provider = sign_in(portal, "customer"), sign_in(portal, "provider")
    devices = add_devices(portal, provider, 2)
    agents = [
        subprocess.Popen(
            [
                str(VENV_BIN / "gpu-pool"),
                "worker",
                "--portal",
                portal.url,
                "--simulate",
                "1xH100-80GB",
                "--isolation",
                "container",
                "--engine",
                "podman",
                "--image",
                worker_image,
                "--container-memory-gb",
                "3",
                "--container-cpus",
                "1",
            ],
            env={**os.environ, "GPU_POOL_TOKEN": token},
            stdout=(tmp_path / f"agent-{n}.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for n, (_, token) in enumerate(devices)
    ]
    try:
        ids = {device_id for device_id, _ in devices}

        def ready() -> bool:
            return {d["id"] for d in provider.get("/devices").json() if d["state"] == "ready"} >= ids

        wait_until(ready, timeout_s=120, what="both containerised devices ready")
        spec = {
            "gpu_model": "H100-80GB",
            "gpu_count": 1,
            "duration_hours": 1,
            "min_workers": 0,
            "max_workers": 1,
        }
        started = time.monotonic()
        reply = customer.post("/clusters", json={"name": "boxed", **spec})
        assert reply.status_code == 202, reply.text
        cluster_id = reply.json()["id"]
        cluster = wait_until(
            lambda: customer.get(f"/clusters/{cluster_id}").json(),
            lambda c: c["state"] in ("running", "failed"),
            timeout_s=180,
            every_s=0.25,
        )
        assert cluster["state"] == "running", cluster["events"]
        print(f"containerised deploy to running: {time.monotonic() - started:.1f} s")
        (head,) = [c for d in ids for c in of_label(f"{LABEL_DEVICE}={d}")["containers"]]
        (inspected,) = json.loads(subprocess.run(["podman", "inspect", head], capture_output=True).stdout)
        assert [(m["Destination"], m["RW"]) for m in inspected["Mounts"] if m["Type"] == "bind"] == [
            ("/run/gpu-pool", False)
        ]
        assert not [token for _, token in devices if token in json.dumps(inspected)]

        job = customer.post(f"/clusters/{cluster_id}/jobs", json={"entrypoint": SPREAD_GPU_JOB})
        assert job.status_code == 201, job.text
        job_id = job.json()["id"]
        finished = wait_until(
            lambda: customer.get(f"/clusters/{cluster_id}/jobs/{job_id}").json(),
            lambda j: j["status"] in ("succeeded", "failed", "stopped"),
            timeout_s=180,
            every_s=1,
        )
        logs = customer.get(f"/clusters/{cluster_id}/jobs/{job_id}/logs").json()["logs"]
        assert finished["status"] == "succeeded", logs
        assert "GPUS 2.0 NODES 2 IDS [1, 1]" in logs
        cluster = customer.get(f"/clusters/{cluster_id}").json()
        assert [e["kind"] for e in cluster["events"]].count("scaled_up") == 1, cluster["events"]
        for device_id in ids:
            assert len(of_label(f"{LABEL_DEVICE}={device_id}")["containers"]) == 1

        assert customer.delete(f"/clusters/{cluster_id}").status_code == 202
        wait_until(
            lambda: customer.get(f"/clusters/{cluster_id}").json()["state"],
            lambda state: state == "terminated",
            timeout_s=120,
        )
        wait_until(ready, timeout_s=60, what="both devices ready again")
        for device_id in ids:
            assert of_label(f"{LABEL_DEVICE}={device_id}") == NOTHING
    finally:
        for agent in agents:
            stop_process_group(agent)
        for device_id, _ in devices:
            for container in of_label(f"{LABEL_DEVICE}={device_id}")["containers"]:
                subprocess.run(["podman", "rm", "--force", container], capture_output=True)
        for n in range(len(agents)):
            print(f"--- agent {n}:", json.dumps((tmp_path / f"agent-{n}.log").read_text()[-1500:]))
