"""Customer code in containers against the same on the host, same run (issue 19): a 2-node Ray cluster (a
head with its dashboard, a worker joining it) started by the agent's own code, a job from submission to
its end through the Jobs API, and the stop (the wipe, for containers). Rounds alternate so that both see
the same machine. Target: containers at most 1.2x the host's start and job times.

    python -m bench.isolation [ROUNDS]

Podman with tests/podman/containers.conf unless CONTAINERS_CONF is set; the worker image from
gpu_pool/image/build-test-image.sh (cached)."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.sizes import size
from gpu_pool import ray_node
from gpu_pool.isolation import ContainerIsolation, Limits
from gpu_pool.ray_node import NodeSpec

ROOT = Path(__file__).resolve().parent.parent
JOB = 'python -c "import ray; ray.init(); print(ray.get(ray.remote(lambda: 42).remote()))"'


def _image() -> str:
    built = subprocess.run(
        [str(ROOT / "gpu_pool" / "image" / "build-test-image.sh"), "podman"],
        capture_output=True,
        text=True,
        check=True,
    )
    return built.stdout.strip().splitlines()[-1]


def _job_seconds(dashboard_url: str) -> float:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(dashboard_url)
    started = time.monotonic()
    job = client.submit_job(entrypoint=JOB)
    while not client.get_job_status(job).is_terminal():
        time.sleep(0.1)
    assert str(client.get_job_status(job)) == "SUCCEEDED", client.get_job_logs(job)[-2000:]
    return time.monotonic() - started


def _round(start) -> dict[str, float]:
    """Start a head and a worker with ``start(spec, device)``, run a job, stop both: the times of each."""
    began = time.monotonic()
    head = start(NodeSpec("head", 1, {"device_a": 1.0}, dashboard=True, num_cpus=1), "a")
    worker = start(NodeSpec("worker", 1, {"device_b": 1.0}, head_address=head.address, num_cpus=1), "b")
    cluster = time.monotonic() - began
    try:
        job = _job_seconds(head.dashboard_url)
    finally:
        began = time.monotonic()
        worker.stop()
        head.stop()
    return {"cluster": cluster, "job": job, "stop": time.monotonic() - began}


def bench_isolation(rounds: int | None = None) -> dict[str, float]:
    rounds = rounds or size(2, 1)
    print(f"Isolation: a 2-node cluster, a job and the stop in containers against the host ({rounds} rounds)")
    if shutil.which("podman") is None or shutil.which("mmdebstrap") is None:
        print("  not measured: Podman or mmdebstrap is not installed (make containers installs them)")
        return {}
    os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "tests" / "podman" / "containers.conf"))
    image = _image()
    limits = Limits(memory_bytes=3 * 2**30, cpus=1.0, pids=2048)
    times: dict[str, list[dict[str, float]]] = {"host": [], "container": []}
    for _ in range(rounds):
        cluster = uuid.uuid4().hex[:12]
        engines = {
            device: ContainerIsolation("podman", image, limits, device_id=f"bench-{device}")
            for device in "ab"
        }
        times["host"].append(_round(lambda spec, device: ray_node.start(spec)))
        times["container"].append(
            _round(
                lambda spec, device, engines=engines, cluster=cluster: engines[device].start(spec, cluster)
            )
        )
    figures = {}
    for kind in ("cluster", "job", "stop"):
        host = statistics.median(r[kind] for r in times["host"])
        boxed = statistics.median(r[kind] for r in times["container"])
        figures[kind] = boxed / host
        label = {"cluster": "2-node cluster up", "job": "job submit to end", "stop": "stop (wipe)"}[kind]
        print(f"  {label:18} host {host:6.1f} s   container {boxed:6.1f} s   ratio {boxed / host:.2f}x")
    print(
        f"  target: containers at most 1.2x the host for the cluster and the job: "
        f"{'met' if figures['cluster'] <= 1.2 and figures['job'] <= 1.2 else 'NOT met'}"
    )
    return figures


if __name__ == "__main__":
    bench_isolation(int(sys.argv[1]) if len(sys.argv) > 1 else None)
