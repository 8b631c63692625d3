"""`portal run` (what `make run` calls) prints the demo logins, starts demo agents, serves the portal and
stops everything on Ctrl-C."""

import json
import os
import re
import signal

import httpx
import psutil
import pytest
from sqlmodel import select

from portal.infra.db import build_engine, session_scope
from portal.models import Device, DeviceState
from tests.conftest import start_portal, stop_process_group, wait_until

pytestmark = pytest.mark.slow


def test_portal_run_prints_its_banner_once_serving_and_ctrl_c_stops_everything_it_started(tmp_path):
    running = start_portal(tmp_path / "run")
    try:
        log = wait_until(
            running.log.read_text, lambda text: "GPU Portal is ready at" in text, what="the welcome banner"
        )
        banner = log[log.index("GPU Portal is ready at") :]
        assert f"GPU Portal is ready at {running.url}" in banner
        logins = re.findall(r"^\s+(admin|customer|provider)\s+(\S+@\S+)\s+(\S+)$", banner, flags=re.MULTILINE)
        saved = json.loads((running.data_dir / "demo_logins.json").read_text())
        assert logins == [(login["role"], login["email"], login["password"]) for login in saved]
        assert [role for role, _, _ in logins] == ["admin", "customer", "provider"]
        # The three things to try, with the exact commands.
        assert f"{running.url}/market" in banner and "clusters create --name demo" in banner
        assert f"{running.url}/devices" in banner and "demo kill-agent demo-rig-2" in banner
        assert httpx.get(running.url + "/readyz").json()["status"] == "ready"
        # Three local agents with simulated GPUs connect and prove themselves: the network is live at once.
        engine = build_engine(running.database_url)

        def demo_devices() -> list[Device]:
            with session_scope(engine) as session:
                return list(session.exec(select(Device)).all())

        wait_until(
            demo_devices,
            lambda devices: (
                len(devices) == 3 and all(d.state == DeviceState.READY and d.simulated for d in devices)
            ),
            timeout_s=60,
            every_s=0.5,
            what="three simulated demo devices ready",
        )
        engine.dispose()
        started = psutil.Process(running.process.pid)
        family = [started, *started.children(recursive=True)]
        # Ctrl-C in a terminal sends SIGINT to the whole foreground process group.
        os.killpg(running.process.pid, signal.SIGINT)
        running.process.wait(timeout=30)
        _, alive = psutil.wait_procs(family, timeout=15)
        assert alive == [], f"still running after Ctrl-C: {[process.cmdline() for process in alive]}"
        with pytest.raises(httpx.ConnectError):
            httpx.get(running.url + "/healthz", timeout=2)
    finally:
        stop_process_group(running.process, signal.SIGKILL)


def test_a_restart_serves_the_pages_built_before_without_building_them_again(tmp_path):
    first = start_portal(tmp_path / "first", "--no-demo")  # builds the pages if no earlier run did
    stop_process_group(first.process)
    again = start_portal(tmp_path / "again", "--no-demo")
    try:
        assert "Building the pages" not in again.log.read_text()
        page = httpx.get(again.url + "/")
        assert page.status_code == 200 and "<title>GPU Portal" in page.text
    finally:
        stop_process_group(again.process)
