"""Deploy to running: a 2-device Ray cluster on two local agents with simulated GPUs, against its floor.

Figures (seconds, min and median of a few runs):

- sequential floor: the same two Ray nodes started by hand with ``gpu_pool.ray_node``, as the agents
  start them (a head with its dashboard, then a worker joining it), one after the other, without the
  portal; and, as a second figure, until the head's dashboard reports both nodes alive, which the portal
  checks before it calls a cluster ``running``;
- parallel floor: both started by hand at once, the head on a GCS port given up front and the worker
  waiting until that port answers, as the portal now starts them;
- portal: ``POST /api/v1/clusters`` on a real ``portal run`` with two demo agents, until
  ``GET /api/v1/clusters/{id}`` (polled every 50 ms) says ``running``: placement, escrow, the start
  commands delivered to the agents, both Ray nodes started, the head's check, all included.

Then the steps of the portal's deploys from the cluster's own events (median time after the request,
and since the step before). Target (issue 18): the portal at most 0.7x the sequential floor (it was
1.2x when the worker was asked only after the head had joined). The floors run first, on a host with
nothing else started. All on loopback; the overlay's figure is bench.mesh's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.serving import portal_port
from bench.sizes import size
from gpu_pool import ray_node
from gpu_pool.ray_node import NodeSpec, RayNode

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RUNS = size(3, 1)
GPU_MODEL = "H100-80GB"
POLL_S = 0.05
DEPLOY_TIMEOUT_S = 120
TARGET_RATIO = 0.7  # of the sequential floor
GCS_PORTS = range(20000, 30000)  # the portal's default PORTAL_RAY_GCS_PORTS
# Milestones of a deploy, from the cluster's events: (label, event kind, which occurrence of that kind).
# The head's start is sent first and the worker's in the same step; which node joins first varies.
MILESTONES = (
    ("head start sent", "node_starting", 0),
    ("worker start sent", "node_starting", 1),
    ("first node joined", "node_joined", 0),
    ("second node joined", "node_joined", 1),
    ("running", "running", 0),
)


def seconds_line(name: str, samples: list[float]) -> None:
    if not samples:
        print(f"  {name:<44} no successful run")
        return
    print(f"  {name:<44} min {min(samples):7.2f} s    median {statistics.median(samples):7.2f} s")


def wait_for(check: Callable[[], bool], timeout_s: float, every_s: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every_s)
    return False


# --- the floor: the two Ray nodes by hand ------------------------------------------------------------


def node_spec(role: str, head_address: str | None = None, gcs_port: int | None = None) -> NodeSpec:
    """What an agent with one simulated H100 asks for (gpu_pool.agent.Agent._node_spec)."""
    return NodeSpec(
        role=role,
        num_gpus=1,
        resources={f"device_{uuid.uuid4()}": 1.0, f"gpu_model_{GPU_MODEL}": 1.0},
        head_address=head_address,
        gcs_port=gcs_port,
        dashboard=role == "head",
    )


def gcs_port() -> int:
    """A free port of the portal's GCS range, as the portal would allocate one."""
    import random
    import socket

    while True:
        port = random.choice(GCS_PORTS)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def stop_node(node: RayNode) -> None:
    node.stop()
    shutil.rmtree(node.temp_dir, ignore_errors=True)


def start_both(parallel: bool) -> tuple[RayNode, RayNode]:
    """A head and a worker joining it: one after the other, or at once (the worker waits for the head's
    GCS on the port given to the head up front)."""
    if not parallel:
        head = ray_node.start(node_spec("head"))
        try:
            return head, ray_node.start(node_spec("worker", head.address))
        except BaseException:
            stop_node(head)
            raise
    port = gcs_port()
    worker: list[RayNode | BaseException] = []

    def start_worker() -> None:
        try:
            worker.append(ray_node.start(node_spec("worker", f"127.0.0.1:{port}")))
        except BaseException as error:
            worker.append(error)

    thread = threading.Thread(target=start_worker)
    thread.start()
    try:
        head = ray_node.start(node_spec("head", gcs_port=port))
    finally:
        thread.join()
    if isinstance(worker[0], BaseException):
        stop_node(head)
        raise worker[0]
    return head, worker[0]


def floor_once(parallel: bool) -> tuple[float, float | None]:
    """Seconds to start a head and a worker joining it; and until the head sees both alive (or None)."""
    from portal.services.rentals.provisioning import probe_head

    started = time.perf_counter()
    head, worker = start_both(parallel)
    try:
        both = time.perf_counter() - started
        expected = {node_id for node_id in (head.node_id, worker.node_id) if node_id}

        def head_sees_both() -> bool:
            seen = probe_head(head.dashboard_url or "")
            return seen is not None and len(seen) >= 2 and expected <= seen

        seen_both = wait_for(head_sees_both, 60, every_s=POLL_S)
        return both, (time.perf_counter() - started) if seen_both else None
    finally:
        stop_node(worker)
        stop_node(head)


def measure_floor(runs: int, parallel: bool) -> tuple[list[float], list[float]]:
    started: list[float] = []
    seen: list[float] = []
    for _ in range(runs):
        try:
            both, seen_both = floor_once(parallel)
        except ray_node.RayNodeError:
            # Ray's own startup waits (30 s for the raylet, the GCS for a worker started beside its head)
            # can miss on a loaded machine: the portal's agents start such a node again, so the floor does.
            print("  a floor run's ray start missed Ray's startup wait: started again")
            try:
                both, seen_both = floor_once(parallel)
            except ray_node.RayNodeError as error:
                print(f"  floor run failed: {error}"[:600])
                continue
        started.append(both)
        if seen_both is not None:
            seen.append(seen_both)
    return started, seen


# --- the portal -------------------------------------------------------------------------------------


def start_portal(
    data_dir: Path, agents: int = 2, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """``portal run`` with the demo accounts and demo agents, as tests/conftest.py starts it."""
    port = portal_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("PORTAL_")}
    env |= {
        "PORTAL_DATA_DIR": str(data_dir),
        "PORTAL_PORT": str(port),
        "PORTAL_DEMO_AGENTS": str(agents),
        "PORTAL_LOG_LEVEL": "WARNING",
        "PORTAL_RATE_LIMIT_PER_MINUTE": "1000000",
    } | (extra_env or {})
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("portal")), "run"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=(data_dir / "portal.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return process, f"http://127.0.0.1:{port}"


def serving(url: str, process: subprocess.Popen) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"portal run exited with {process.returncode}")
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def stop_portal(process: subprocess.Popen) -> None:
    """SIGINT to the portal's process group, SIGKILL after 30 s; then whatever it started that is still
    there (the agents' Ray nodes run in sessions of their own, outside the group)."""
    started: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error):
        started = psutil.Process(process.pid).children(recursive=True)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for child in started:
        with contextlib.suppress(psutil.Error):
            child.kill()


def sign_in(url: str, data_dir: Path, role: str) -> httpx.Client:
    logins = {row["role"]: row for row in json.loads((data_dir / "demo_logins.json").read_text())}
    client = httpx.Client(base_url=f"{url}/api/v1", timeout=30)
    reply = client.post(
        "/auth/login", json={"email": logins[role]["email"], "password": logins[role]["password"]}
    )
    reply.raise_for_status()
    client.headers["Authorization"] = f"Bearer {reply.json()['access_token']}"
    return client


def devices_ready(provider: httpx.Client, count: int = 2) -> bool:
    devices = provider.get("/devices").json()
    return len(devices) == count and all(device["state"] == "ready" for device in devices)


def milestones(requested_at: datetime, events: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds after the request of each milestone found in the cluster's events."""
    found = {}
    for label, kind, occurrence in MILESTONES:
        times = [datetime.fromisoformat(event["at"]) for event in events if event["kind"] == kind]
        if len(times) > occurrence:
            found[label] = (times[occurrence] - requested_at).total_seconds()
    return found


def deploy_once(customer: httpx.Client) -> tuple[float | None, dict[str, float]]:
    """Seconds from the deploy request until the cluster is seen running (None if it is not), and its
    milestones; the cluster is terminated afterwards."""
    requested_at = datetime.now(UTC)
    started = time.perf_counter()
    reply = customer.post(
        "/clusters",
        json={"name": "bench", "gpu_model": GPU_MODEL, "gpu_count": 2, "duration_hours": 1},
    )
    if reply.status_code != 202:
        print(f"  deploy refused: {reply.status_code} {reply.text[:300]}")
        return None, {}
    cluster_id = reply.json()["id"]
    elapsed: float | None = None
    cluster: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + DEPLOY_TIMEOUT_S
        while time.monotonic() < deadline:
            cluster = customer.get(f"/clusters/{cluster_id}").json()
            if cluster["state"] == "running":
                elapsed = time.perf_counter() - started
                break
            if cluster["state"] in ("failed", "terminated", "expired"):
                break
            time.sleep(POLL_S)
        if elapsed is None:
            waited = time.perf_counter() - started
            print(f"  cluster {cluster_id} is {cluster.get('state')} after {waited:.1f} s:")
            for event in cluster.get("events", []):
                print(f"    {event['at']}  {event['kind']:<14} {event['message'][:160]}")
        return elapsed, milestones(requested_at, cluster.get("events", []))
    finally:
        customer.delete(f"/clusters/{cluster_id}")


def measure_portal(runs: int) -> tuple[list[float], list[dict[str, float]]]:
    data_dir = Path(tempfile.mkdtemp(prefix="portal-bench-deploy-"))
    process, url = start_portal(data_dir)
    times: list[float] = []
    steps: list[dict[str, float]] = []
    try:
        if not wait_for(lambda: serving(url, process), 240, every_s=0.5):
            print(f"  portal did not serve {url} within 240 s; see {data_dir / 'portal.log'}")
            return times, steps
        provider, customer = sign_in(url, data_dir, "provider"), sign_in(url, data_dir, "customer")
        if not wait_for(lambda: devices_ready(provider), 120):
            print(f"  the demo agents' devices were not ready within 120 s: {provider.get('/devices').text}")
            return times, steps
        for _ in range(runs):
            elapsed, found = deploy_once(customer)
            if elapsed is not None:
                times.append(elapsed)
                steps.append(found)
            if not wait_for(lambda: devices_ready(provider), 60):
                print("  the devices did not come back to ready within 60 s; stopping here")
                break
    except (httpx.HTTPError, RuntimeError, OSError, ValueError, KeyError) as error:
        print(f"  portal run failed: {type(error).__name__}: {error}; see {data_dir / 'portal.log'}")
    finally:
        stop_portal(process)
    shutil.rmtree(data_dir, ignore_errors=True)
    return times, steps


def bench_deploy(runs: int = RUNS) -> None:
    print(f"Deploy to running: 2-device Ray cluster on two local agents with simulated GPUs ({runs} runs)")
    floor, floor_seen = measure_floor(runs, parallel=False)
    seconds_line("baseline: head then worker by hand (sequential floor)", floor)
    seconds_line("baseline: the same, until the head sees both", floor_seen)
    parallel, parallel_seen = measure_floor(runs, parallel=True)
    seconds_line("baseline: both at once by hand (parallel floor)", parallel)
    seconds_line("baseline: the same, until the head sees both", parallel_seen)
    portal, steps = measure_portal(runs)
    seconds_line("portal: deploy request to running", portal)
    print_steps(steps)
    print_ratios(portal, floor, parallel)


def print_steps(steps: list[dict[str, float]]) -> None:
    """The median of each milestone after the request, and since the one before."""
    if not steps:
        return
    print("  portal steps, from the cluster's events (median after the request, and since the step before):")
    previous = 0.0
    for label, _, _ in MILESTONES:
        offsets = [found[label] for found in steps if label in found]
        if not offsets:
            continue
        offset = statistics.median(offsets)
        print(f"    {label:<42} {offset * 1000:7.0f} ms   (+{(offset - previous) * 1000:6.0f} ms)")
        previous = offset


def print_ratios(portal: list[float], floor: list[float], parallel: list[float]) -> None:
    """The portal's median against each floor's, and the verdict on the target."""
    if not portal:
        return
    median = statistics.median(portal)
    for name, baseline in (("sequential floor", floor), ("parallel floor", parallel)):
        if baseline:
            print(f"  portal / {name}: {median / statistics.median(baseline):.2f}x (medians)")
    if floor:
        ratio = median / statistics.median(floor)
        verdict = "met" if ratio <= TARGET_RATIO else "missed"
        print(f"  target: portal at most {TARGET_RATIO}x the sequential floor; {verdict} ({ratio:.2f}x)")


def main() -> None:
    bench_deploy()


if __name__ == "__main__":
    main()
