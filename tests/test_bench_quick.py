"""Every bench of `make bench` still runs: `python -m bench --quick` (small sizes, seconds each) and each
bench printed its figures, none skipped, none failed. Its figures are not measurements.

One test per bench, all answered by one `python -m bench --quick` run of the benches selected (every one
unless ``-k`` picks some: ``pytest tests/test_bench_quick.py -k bench_deploys``), in one process as `make
bench` runs them, so that a bench that works alone but not after another fails too."""

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
    # Printed once every run (straight to the portal, through HAProxy, and through HAProxy to two portal
    # processes) answered every beat.
    "bench_heartbeats": r"CPU per heartbeat: [\d.]+ ms \(portal processes, /proc\), paced at [\d,]+/s; "
    r"through HAProxy [\d.]+ ms[^\n]*\n  two portal processes behind HAProxy: as fast as answered [\d,]+ "
    r"heartbeats/s \(one process behind HAProxy: [\d,]+/s, [\d.]+x\); paced at [\d,]+/s p50 [\d.]+ ms, "
    r"p99 [\d.]+ ms",
    "bench_verification": r"n=4096 \(a GPU's size",
    # The second part's (1,000,000 devices in full, 20,000 quick), after the first part's figures.
    "bench_placement": r"placement decision at [\d,]+ devices: p50 [\d.]+ ms, p99 [\d.]+ ms",
    "bench_settlement": r"payouts\.settle, up to 10 per transaction .* books balance",
    "bench_growth": r"growth per day at 1,000,000 devices: [\d,.]+ GB with the embedded sample store",
    "bench_deploy": r"portal: deploy request to running\s+min",
    # Printed after the checks: no device booked twice and the books balance, before and after termination.
    "bench_deploys": r"deploy throughput: [\d.]+ deploys/s .* request to running: p50 [\d]+ ms, p99 [\d]+ ms"
    r"(?s:.*)checks: 0 devices booked twice; the books balance \(ledger.verify_books\): yes"
    r"(?s:.*)every cluster terminated .* the books balance: yes",
    "bench_heal": r"loss detected \(kill -9 to node_lost\)\s+[\d.]+ s",
    "bench_telemetry": r"dashboard query, Prometheus",
    "bench_mesh": r"certificates\.issue, a renewal",
    "bench_overlay": r"overlay/veth: throughput [\d.]+x",
    "bench_mesh_deploy": r"portal: cluster created to running\s+min",
    "bench_memory": r"portal run \(embedded, demo\)",
}
# A bench that could not measure says so with one of these, and make bench would still exit 0.
NOT_MEASURED = re.compile(r"not measured|skipped|no successful run|FAILED|failed:", re.IGNORECASE)


# The programs a bench needs (Debian packages): missing, the bench could not measure.
PROGRAMS = {
    "bench_heartbeats": [("redis-benchmark", "redis-tools"), ("haproxy", "haproxy")],
    "bench_telemetry": [("prometheus", "prometheus")],
    "bench_mesh": [("nebula-cert", "nebula")],
    "bench_overlay": [("nebula", "nebula"), ("nebula-cert", "nebula")],
    "bench_mesh_deploy": [("nebula", "nebula"), ("nebula-cert", "nebula")],
    # bench/isolation.py: its worker image comes from mmdebstrap
    "bench_isolation": [("podman", "podman"), ("mmdebstrap", "mmdebstrap")],
}


@pytest.fixture(scope="module")
def quick_run(request, postgres_available, redis_url, rabbitmq_url) -> str:
    """The output of one `python -m bench --quick` run of every bench this session selected, in order."""
    selected = [
        item.callspec.params["bench"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_bench_runs_quickly_to_its_figures"
    ]
    for bench in selected:
        for program, package in PROGRAMS.get(bench, []):
            if program == "haproxy" and haproxy_program() is not None:
                continue  # Debian's is in /usr/sbin, which PATH may lack
            require_program(program, package)
    env = {name: value for name, value in os.environ.items() if not name.startswith("PORTAL_")}
    # The port the suite's `portal run`s use: the pages built for it serve the benches' portals too.
    env["BENCH_PORTAL_PORT"] = str(PORTAL_RUN_PORT)
    env["PYTHONUNBUFFERED"] = "1"  # a bench's traceback (stderr) among its lines (stdout), in order
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", *selected],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1500,
    )
    print(done.stdout)
    return done.stdout


def section(output: str, bench: str) -> str:
    """What ``bench`` printed: after the previous bench's closing line, up to its own ``(bench took N s)``."""
    end = output.find(f"({bench} took ")
    assert end >= 0, f"{bench} did not finish: {output[-4000:]}"
    closed = list(re.finditer(r"\(bench_\w+ took \d+ s\)\n", output[:end]))
    return output[closed[-1].end() if closed else 0 : end]


@pytest.mark.parametrize("bench", list(FIGURES))
def test_bench_runs_quickly_to_its_figures(quick_run: str, bench: str):
    printed = section(quick_run, bench)
    assert re.search(FIGURES[bench], printed), f"no figures from {bench}: {printed[-4000:]}"
    assert not NOT_MEASURED.search(printed), NOT_MEASURED.search(printed)
