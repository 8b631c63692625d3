"""Memory (issue 22): what the embedded portal holds once it serves, against a bare Reflex app started the
same way (``reflex run --env prod --backend-only``, one web worker). Target: the portal's processes under
300 MiB.

Counted: every process of ``portal run``'s tree (Reflex's server and its web worker, with the embedded task
workers and periodic passes as threads inside), by PSS from ``/proc/PID/smaps_rollup``: a page shared by the
server and its forked worker counts once, split between them. The demo agents (``gpu-pool worker``) and their
Ray nodes stand for providers' machines and are shown apart, not counted. RSS, which counts shared pages in
every process, is printed beside.

    python -m bench.memory            # this bench alone
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from bench.serving import FailedRequests, free_port, portal_port, wait_until_serving
from bench.sizes import size
from portal.config import PROJECT_ROOT

TARGET_MIB = 300
SETTLE_S = size(10, 2)  # once the agents are online: periodic passes and beats run meanwhile
SAMPLES = size(5, 1)
AGENTS = size(3, 1)  # as many as `make run` starts
BARE_APP = """import reflex as rx


def index() -> rx.Component:
    return rx.text("Hello")


app = rx.App()
app.add_page(index)
"""


@dataclass(frozen=True)
class Memory:
    pss_mib: float
    rss_mib: float
    processes: int

    def line(self) -> str:
        return f"PSS {self.pss_mib:6.0f} MiB   RSS {self.rss_mib:6.0f} MiB   {self.processes} processes"


def _kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _is_agent(process: psutil.Process) -> bool:
    return any(part.endswith("gpu-pool") for part in process.cmdline()[:2])


def tree_memory(root_pid: int) -> tuple[Memory, Memory]:
    """The tree's memory without the demo agents, and the agents' with their Ray nodes."""
    portal: list[int] = []
    agents: list[int] = []

    def walk(process: psutil.Process, in_agent: bool) -> None:
        try:
            in_agent = in_agent or _is_agent(process)
            (agents if in_agent else portal).append(process.pid)
            children = process.children()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return
        for child in children:
            walk(child, in_agent)

    walk(psutil.Process(root_pid), False)

    def total(pids: list[int]) -> Memory:
        pss = rss = counted = 0
        for pid in pids:
            try:
                pss, rss, counted = pss + _kib(pid, "Pss"), rss + _kib(pid, "Rss"), counted + 1
            except (FileNotFoundError, ProcessLookupError):
                continue  # gone, or a zombie (the banner once printed): it holds nothing
        return Memory(pss / 1024, rss / 1024, counted)

    return total(portal), total(agents)


def _steady(root_pid: int) -> tuple[Memory, Memory]:
    """The largest of a few samples a second apart: the peak of the steady state, not one lucky moment."""
    samples = []
    for _ in range(SAMPLES):
        samples.append(tree_memory(root_pid))
        time.sleep(1)
    return max(samples, key=lambda sample: sample[0].pss_mib)


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def _wait_for_agents(base: str, wanted: int, process: subprocess.Popen, timeout_s: float = 120) -> int:
    """Until the demo agents are online (registered and proved): the portal has then run each path an agent
    drives (registration, proof of compute, heartbeats)."""
    deadline = time.monotonic() + timeout_s
    online = 0
    while time.monotonic() < deadline and process.poll() is None:
        try:
            response = httpx.get(f"{base}/api/v1/stats/network", timeout=5)
            if response.status_code == 200:
                online = response.json()["devices_online"]
                if online >= wanted:
                    return online
        except httpx.HTTPError:
            pass
        time.sleep(1)
    return online


def measure_portal(agents: int = AGENTS) -> tuple[Memory, Memory]:
    """``portal run`` as ``make run`` starts it (development, the demo and its agents)."""
    data_dir = Path(tempfile.mkdtemp(prefix="portal-bench-memory-"))
    port = portal_port()  # the pages are built for a port: the one the other benches' portals use
    env = {
        **os.environ,
        "PORTAL_DATA_DIR": str(data_dir),
        "PORTAL_PORT": str(port),
        "PORTAL_DEMO_AGENTS": str(agents),
        "PORTAL_LOG_LEVEL": "WARNING",
    }
    env.pop("PORTAL_ENVIRONMENT", None)
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("portal")), "run", "--demo"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(f"{base}/healthz", server)
        online = _wait_for_agents(base, agents, server)
        if online < agents:
            raise FailedRequests(f"only {online} of {agents} demo agents came online")
        # The pages and the public statistics, as a first visitor loads them.
        for path in ("/", "/explorer", "/api/v1/stats/network", "/readyz"):
            response = httpx.get(base + path, timeout=30, follow_redirects=True)
            if response.status_code != 200:
                raise FailedRequests(f"{path} answered {response.status_code}")
        time.sleep(SETTLE_S)
        return _steady(server.pid)
    finally:
        _stop(server)


def measure_bare_reflex() -> Memory:
    """A one-page Reflex app, served by the same command ``portal run`` hands over to."""
    root = Path(tempfile.mkdtemp(prefix="bench-bare-reflex-"))
    (root / "bare").mkdir()
    (root / "bare" / "__init__.py").write_text("")
    (root / "bare" / "bare.py").write_text(BARE_APP)
    (root / "rxconfig.py").write_text(
        'import reflex as rx\n\nconfig = rx.Config(app_name="bare", telemetry_enabled=False)\n'
    )
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(root)}
    reflex = str(Path(sys.executable).with_name("reflex"))
    command = [reflex, "run", "--env", "prod", "--backend-only", "--backend-host", "127.0.0.1"]
    server = subprocess.Popen(
        [*command, "--backend-port", str(port)],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/ping", server)
        time.sleep(SETTLE_S)
        return _steady(server.pid)[0]
    finally:
        _stop(server)


def bench_memory() -> None:
    print(f"Memory once serving (PSS of every process; target: the portal under {TARGET_MIB} MiB)")
    bare = measure_bare_reflex()
    print(f"  {'baseline: bare Reflex app, one page':<44} {bare.line()}")
    portal, agents = measure_portal()
    verdict = "" if portal.pss_mib < TARGET_MIB else f"   OVER {TARGET_MIB} MiB"
    ratio = f"{portal.pss_mib / bare.pss_mib:.1f}x the bare app"
    print(f"  {'portal run (embedded, demo)':<44} {portal.line()}   {ratio}{verdict}")
    print(f"  {f'not counted: {AGENTS} demo agents, Ray nodes':<44} {agents.line()}")


if __name__ == "__main__":
    bench_memory()
