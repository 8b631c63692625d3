"""Customer code in containers (issue 19), with real agents (simulated GPUs), real Podman and real Ray.

Two agents start a cluster's head and worker in containers of their own; a job sees the cluster's GPUs,
then attacks the isolation and fails: the agent user's home, the root filesystem, the host's processes and
its loopback services stay out of reach, and a job past the memory limit is killed while the node goes on.
After the stop no container, scratch volume, network or process of the rental is left. An agent restarted
after a crash removes what its ended rentals left, and an image with another Ray is refused. Podman's
settings and the worker image: tests/containers.py.
"""

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from gpu_pool.agent import Agent
from gpu_pool.client import PortalClient
from gpu_pool.hardware import SimulatedGpus
from gpu_pool.isolation import (
    LABEL_CLUSTER,
    LABEL_DEVICE,
    ContainerIsolation,
    IsolationError,
    Limits,
    processes_of,
)
from portal.models import CommandState, DeviceState
from tests.conftest import VENV_BIN, wait_until
from tests.containers import NOTHING, engine, of_label
from tests.test_gpu_pool import RunningAgent, add_device, command_and_wait, device_row

pytestmark = pytest.mark.slow

LIMITS = Limits(memory_bytes=3 * 2**30, cpus=1.0, pids=2048)

# What a hostile customer tries from inside a job; prints one JSON line of what happened.
HOSTILE_JOB = r"""
import json, os, socket, subprocess, ray
def attempt(action):
    try:
        return "allowed: " + repr(action())[:200]
    except Exception as error:
        return "denied: " + type(error).__name__
def connect(host, port):
    socket.create_connection((host, port), timeout=2).close()
def redis_ping(host):  # the head's own GCS listens on 6379 in its container: ask for Redis itself
    with socket.create_connection((host, 6379), timeout=2) as sock:
        sock.sendall(b"PING\r\n")
        sock.settimeout(2)
        reply = sock.recv(64)
    if not reply.startswith(b"+PONG"):
        raise ConnectionRefusedError(f"not Redis: {reply[:20]!r}")
    return reply
def host_processes():
    seen = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            seen.append(open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode())
        except OSError:
            pass
    return seen
gateway = open("/proc/net/route").read().split("\n")[1].split()[2]
gateway = socket.inet_ntoa(bytes.fromhex(gateway)[::-1])
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
ray.init()
# A process meant to outlive the rental, in a session of its own.
subprocess.Popen(["sleep", "7777"], start_new_session=True)
print("RESULT " + json.dumps({
    "gpus": ray.cluster_resources().get("GPU"),
    "uid": os.getuid(),
    "capabilities": status["CapEff"].strip(),
    "no_new_privs": status["NoNewPrivs"].strip(),
    "read_home": attempt(lambda: open(SECRET).read()),
    "write_root": attempt(lambda: open("/owned", "w").write("x")),
    "write_etc": attempt(lambda: open("/etc/owned", "w").write("x")),
    "write_usr": attempt(lambda: open(ray.__file__ + ".owned", "w").write("x")),
    "write_scratch": attempt(lambda: open("/scratch/mine", "w").write("x")),
    "processes": host_processes(),
    "redis_loopback": attempt(lambda: redis_ping("127.0.0.1")),
    "redis_gateway": attempt(lambda: redis_ping(gateway)),
    "portal_loopback": attempt(lambda: connect("127.0.0.1", PORTAL_PORT)),
    "portal_gateway": attempt(lambda: connect(gateway, PORTAL_PORT)),
}))
"""


def run_job(dashboard_url: str, source: str) -> tuple[str, str]:
    """Submit ``source`` as a job through Ray's Jobs API and wait for it; its status and logs."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(dashboard_url)
    script = source.encode().hex()
    job = client.submit_job(entrypoint=f"python -c \"exec(bytes.fromhex('{script}'))\"")
    status = wait_until(
        lambda: client.get_job_status(job), lambda s: s.is_terminal(), timeout_s=120, every_s=0.5
    )
    return str(status), client.get_job_logs(job)


def isolated_agent(url: str, token: str, image: str, gpus: int) -> Agent:
    return Agent(
        PortalClient(url, token),
        SimulatedGpus(gpus, "H100-80GB", seed=1),
        isolation=ContainerIsolation("podman", image, LIMITS),
    )


def test_a_hostile_job_in_a_containerised_cluster_fails_and_the_rental_leaves_nothing(
    portal_api, worker_image, redis_url
):
    server, parts = portal_api
    (head_id, head_token), (worker_id, worker_token) = add_device(parts, "head"), add_device(parts, "worker")
    cluster = str(uuid.uuid4())
    secret = Path.home() / f".gpu-pool-secret-{uuid.uuid4().hex[:8]}"
    secret.write_text("the provider's secret")
    head_agent = isolated_agent(server.url, head_token, worker_image, 2)
    worker_agent = isolated_agent(server.url, worker_token, worker_image, 1)
    try:
        with RunningAgent(head_agent), RunningAgent(worker_agent):
            wait_until(
                lambda: all(device_row(parts, d).state == DeviceState.READY for d in (head_id, worker_id)),
                timeout_s=60,
            )
            started = time.monotonic()
            head = command_and_wait(
                parts, head_id, "start_ray_head", {"cluster_id": cluster, "num_cpus": 1, "dashboard": True}
            )
            assert head.state == CommandState.SUCCEEDED, head.result_detail
            status = json.loads(head.result_detail)
            joined = command_and_wait(
                parts,
                worker_id,
                "start_ray_worker",
                {"cluster_id": cluster, "head_address": status["address"], "num_cpus": 1},
            )
            assert joined.state == CommandState.SUCCEEDED, joined.result_detail
            print(f"two containerised nodes running in {time.monotonic() - started:.1f} s")
            # Each node in a container of its own, labelled with its device and the cluster.
            assert len(of_label(f"{LABEL_CLUSTER}={cluster}")["containers"]) == 2
            assert len(of_label(f"{LABEL_DEVICE}={head_id}")["containers"]) == 1
            containers = [head_agent.node.container, worker_agent.node.container]
            # Only the head's GCS, client server and dashboard are published, on the node's address; the
            # cluster's own traffic stays on its bridge.
            assert status["address"].startswith("127.0.0.1:")
            assert status["dashboard_url"].startswith("http://127.0.0.1:")
            published = engine("port", containers[0]).splitlines()
            assert len(published) == 3 and all(
                line.split(" -> ")[1].startswith("127.0.0.1:") for line in published
            )
            assert engine("port", containers[1]) == ""
            ids = [engine("inspect", "--format", "{{.Id}}", name) for name in containers]
            assert all(processes_of(full_id) for full_id in ids)

            job = HOSTILE_JOB.replace("SECRET", repr(str(secret))).replace("PORTAL_PORT", str(server.port))
            outcome, logs = run_job(status["dashboard_url"], job)
            assert outcome == "SUCCEEDED", logs[-3000:]
            seen = json.loads(logs.split("RESULT ", 1)[1].splitlines()[0])
            # The job sees the cluster's GPUs, as without containers.
            assert seen["gpus"] == 3
            # Unprivileged: not root, no capability, no way to gain one.
            assert seen["uid"] == 1000
            assert seen["capabilities"] == "0000000000000000" and seen["no_new_privs"] == "1"
            # Nothing of the host is there but the scratch volume; only scratch is writable.
            assert seen["read_home"].startswith("denied"), seen["read_home"]
            for place in ("write_root", "write_etc", "write_usr"):
                assert seen[place].startswith("denied"), (place, seen[place])
            assert seen["write_scratch"].startswith("allowed")
            # The host's processes are out of sight: only Ray's own run in the container.
            host = ("pytest", "redis-server", "postgres", "beam.smp", "gpu-pool")
            assert not [cmd for cmd in seen["processes"] if any(name in cmd for name in host)]
            assert any(
                cmd.startswith("/usr/bin/python3 /usr/local/bin/ray start") for cmd in seen["processes"]
            )
            # The host's loopback services (Redis, the portal) are out of reach, at 127.0.0.1 and the gateway.
            for service in ("redis_loopback", "redis_gateway", "portal_loopback", "portal_gateway"):
                assert seen[service].startswith("denied"), (service, seen[service])

            # A job past the container's memory limit is killed; the node and the host go on.
            outcome, logs = run_job(status["dashboard_url"], "b = bytearray(4 * 2**30); print('ALLOCATED')")
            assert outcome == "FAILED" and "ALLOCATED" not in logs, logs[-2000:]
            assert head_agent.ray_status()["state"] == "running"

            # A node's container that dies (killed, or out of memory as a whole) is reported failed at once:
            # the portal heals the cluster as for any lost node.
            engine("kill", containers[1])
            wait_until(lambda: device_row(parts, worker_id).ray_state == "failed", timeout_s=30)

            # The process the job left behind still runs, in the head's container.
            lingering = subprocess.run(["pgrep", "-f", "sleep 7777"], capture_output=True, text=True).stdout
            assert lingering.split() and all(int(pid) in processes_of(ids[0]) for pid in lingering.split())

            nodes = [head_agent.node, worker_agent.node]
            for device_id in (worker_id, head_id):
                assert command_and_wait(parts, device_id, "stop_ray", {}).state == CommandState.SUCCEEDED
            wipes = [node.last_wipe for node in nodes]
            print("wipe times:", ", ".join(f"{wipe.seconds:.2f} s" for wipe in wipes))
            assert all(wipe.clean for wipe in wipes)
            # Nothing of the rental is left: containers, scratch volumes, network, processes.
            assert of_label(f"{LABEL_CLUSTER}={cluster}") == NOTHING
            assert not any(processes_of(full_id) for full_id in ids)
            survivors = subprocess.run(["pgrep", "-f", "sleep 7777"], capture_output=True, text=True).stdout
            assert survivors.strip() == ""

            # The next customer on the same device finds a scratch of their own, empty of the first's files.
            second = str(uuid.uuid4())
            head = command_and_wait(
                parts, head_id, "start_ray_head", {"cluster_id": second, "num_cpus": 1, "dashboard": True}
            )
            assert head.state == CommandState.SUCCEEDED, head.result_detail
            listing = "import os; print('SCRATCH', sorted(os.listdir('/scratch')))"
            outcome, logs = run_job(json.loads(head.result_detail)["dashboard_url"], listing)
            assert outcome == "SUCCEEDED", logs[-2000:]
            assert "'mine'" not in logs.split("SCRATCH", 1)[1].splitlines()[0]
            assert command_and_wait(parts, head_id, "stop_ray", {}).state == CommandState.SUCCEEDED
            assert of_label(f"{LABEL_CLUSTER}={second}") == NOTHING
    finally:
        secret.unlink()
        for leftover in of_label(f"{LABEL_CLUSTER}={cluster}")["containers"]:
            engine("rm", "--force", leftover)


def test_a_restarted_agent_removes_what_its_ended_rentals_left(portal_api, worker_image):
    server, parts = portal_api
    device_id, token = add_device(parts)
    cluster = str(uuid.uuid4())
    labels = ["--label", f"{LABEL_DEVICE}={device_id}", "--label", f"{LABEL_CLUSTER}={cluster}"]
    # What an agent killed during a rental leaves: its node's container still running, its scratch volume.
    name = f"gpu-pool-left-{uuid.uuid4().hex[:8]}"
    engine("volume", "create", *labels, name)
    engine(
        "run",
        "--detach",
        f"--name={name}",
        *labels,
        f"--volume={name}:/scratch",
        worker_image,
        "sleep",
        "600",
    )
    full_id = engine("inspect", "--format", "{{.Id}}", name)
    assert processes_of(full_id)
    try:
        with RunningAgent(isolated_agent(server.url, token, worker_image, 1)):
            wait_until(lambda: device_row(parts, device_id).state == DeviceState.READY, timeout_s=60)
            wait_until(
                lambda: of_label(f"{LABEL_DEVICE}={device_id}"), lambda left: left == NOTHING, timeout_s=30
            )
        assert not processes_of(full_id)
    finally:
        engine("rm", "--force", name)
        engine("volume", "rm", "--force", name)


def test_an_image_with_another_ray_is_refused(podman, tmp_path):
    empty = tmp_path / "empty.tar"
    subprocess.run(["tar", "-cf", str(empty), "--files-from", "/dev/null"], check=True)
    tag = f"localhost/gpu-pool-worker:test-other-ray-{uuid.uuid4().hex[:6]}"
    engine("import", "--change", "LABEL=org.gpu-portal.ray-version=2.9.0", str(empty), tag)
    try:
        with pytest.raises(IsolationError, match=r"has Ray 2\.9\.0 but the portal runs Ray 2\.60\.0"):
            ContainerIsolation("podman", tag).check_image()
        with pytest.raises(IsolationError, match="not on this machine"):
            ContainerIsolation("podman", tag + "-absent").check_image()
    finally:
        engine("rmi", "--force", tag)


def test_a_wipe_is_clean_only_once_no_process_holds_the_rented_gpus(podman, monkeypatch):
    """After the container is removed, NVML must show no process on the GPUs the rental had (checked with a
    stand-in for NVML's reading: this machine has no GPU; the reading itself is NvmlGpus.compute_processes).
    Memory the driver frees within the grace period passes; a process still there fails the wipe, by name."""
    from gpu_pool import isolation as isolation_module

    monkeypatch.setattr(isolation_module, "GPU_RELEASE_S", 1.0)
    asked: list[list[int]] = []

    def freed_on_the_second_look(indices: list[int]) -> list[tuple[int, int]]:
        asked.append(indices)
        return [(0, 4242)] if len(asked) == 1 else []

    boxed = ContainerIsolation(podman, "unused", gpu_processes=freed_on_the_second_look)
    assert boxed.wipe("gpu-pool-gone", "gpu-pool-gone", gpu_indices=[0]).clean
    assert asked == [[0], [0]]
    assert boxed.wipe("gpu-pool-gone", "gpu-pool-gone").clean and len(asked) == 2  # simulated: not asked

    boxed.gpu_processes = lambda indices: [(index, 77) for index in indices if index == 1]
    held = boxed.wipe("gpu-pool-gone", "gpu-pool-gone", gpu_indices=[0, 1])
    assert held.leftovers == ["GPU 1 held by process 77"] and not held.clean


def test_doctor_checks_the_engine_the_image_and_a_rentals_container(worker_image):
    done = subprocess.run(
        [str(VENV_BIN / "gpu-pool"), "doctor", "--engine", "podman", "--image", worker_image],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "ok  Container engine: podman" in done.stdout
    assert f"ok  Worker image {worker_image}: Ray 2.60.0" in done.stdout
    assert "ok  A rental's container (unprivileged, read-only, limited) starts and imports Ray" in done.stdout
    missing = subprocess.run(
        [str(VENV_BIN / "gpu-pool"), "doctor", "--engine", "podman", "--image", worker_image + "-absent"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "FIX Worker image" in missing.stdout and "podman build -f gpu_pool/Containerfile" in missing.stdout
