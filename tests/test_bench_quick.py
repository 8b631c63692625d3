"""Every bench of `make bench` still runs: `python -m bench --quick` (small sizes, seconds each) exits 0 and
each bench printed its figures, none skipped, none failed. Its figures are not measurements."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from bench.haproxy import haproxy_program
from tests.conftest import PORTAL_RUN_PORT, PROJECT_ROOT, require_program

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# What each bench prints once it measured something (one line each, in the order make bench runs them).
FIGURES = {
    "bench_auth": r"password check \(argon2id verify\)\s+p50",
    "bench_network_counts": r"network_counts\(\)\s+p50",
    "bench_task_round_trip": r"RabbitMQ broker \(publisher confirms\)\s+p50",
    "bench_http": r"portal /api/v1/me with a API key\s+p50",
    # Printed once every run (straight to the portal and through HAProxy) answered every beat.
    "bench_heartbeats": r"CPU per heartbeat: [\d.]+ ms \(portal processes, /proc\), paced at [\d,]+/s; "
    r"through HAProxy [\d.]+ ms",
    "bench_verification": r"n=4096 \(a GPU's size",
    # The second part's (1,000,000 devices in full, 20,000 quick), after the first part's figures.
    "bench_placement": r"placement decision at [\d,]+ devices: p50 [\d.]+ ms, p99 [\d.]+ ms",
    "bench_settlement": r"payouts\.settle, up to 10 per transaction .* books balance",
    "bench_growth": r"growth per day at 1,000,000 devices: [\d,.]+ GB with the embedded sample store",
    "bench_deploy": r"portal: deploy request to running\s+min",
    "bench_heal": r"loss detected \(kill -9 to node_lost\)\s+[\d.]+ s",
    "bench_telemetry": r"dashboard query, Prometheus",
    "bench_mesh": r"certificates\.issue, a renewal",
    "bench_overlay": r"overlay/veth: throughput [\d.]+x",
    "bench_mesh_deploy": r"portal: cluster created to running\s+min",
    "bench_memory": r"portal run \(embedded, demo\)",
}
# A bench that could not measure says so with one of these, and make bench would still exit 0.
NOT_MEASURED = re.compile(r"not measured|skipped|no successful run|FAILED|failed:", re.IGNORECASE)


def test_every_bench_runs_quickly_to_its_figures(postgres_available, redis_url, rabbitmq_url):
    for program, package in (
        ("nebula-cert", "nebula"),
        ("prometheus", "prometheus"),
        ("redis-benchmark", "redis-tools"),
        ("podman", "podman"),  # bench/isolation.py: its worker image comes from mmdebstrap
        ("mmdebstrap", "mmdebstrap"),
    ):
        require_program(program, package)
    if haproxy_program() is None:  # Debian's is in /usr/sbin, which PATH may lack
        require_program("haproxy", "haproxy")  # bench/heartbeats.py, through HAProxy
    env = {name: value for name, value in os.environ.items() if not name.startswith("PORTAL_")}
    # The port the suite's `portal run`s use: the pages built for it serve the benches' portals too.
    env["BENCH_PORTAL_PORT"] = str(PORTAL_RUN_PORT)
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    output = done.stdout + done.stderr
    print(output)
    assert done.returncode == 0, output[-4000:]
    missing = [name for name, figure in FIGURES.items() if not re.search(figure, output)]
    assert not missing, f"no figures from {missing}"
    assert not NOT_MEASURED.search(output), NOT_MEASURED.search(output)
    took = dict(re.findall(r"\((bench_\w+) took (\d+) s\)", output))
    assert set(FIGURES) <= took.keys(), took
