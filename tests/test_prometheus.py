"""Prometheus integration: the portal's /metrics carries its counters and every online device's GPUs under
dcgm-exporter names and labels (checked by promtool), a real Prometheus scrapes it while an agent
heartbeats, and operators discover the agents' own endpoints over HTTP service discovery."""

import shutil
import signal
import subprocess
import uuid

import httpx
import pytest
from sqlmodel import select

from portal.infra.db import session_scope
from portal.models import Device, Role
from portal.models.base import utcnow
from portal.services.providers import telemetry
from tests.conftest import IN_CI, free_port, wait_until
from tests.factories import access_token_for, api_key_for, device_token_for, make_user
from tests.servers import ServerThread, portal_app

BEAT = {
    "gpus": [{"index": 0, "util_pct": 42.0, "mem_used_mb": 2048.0, "temp_c": 61.0, "power_w": 250.0}],
    "ray": {"state": "none"},
}


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        message = f"{name} (Debian's prometheus package) is not installed; make test installs it"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


def beating_device(parts) -> tuple[uuid.UUID, str]:
    with session_scope(parts.engine) as session:
        token = device_token_for(session, make_user(session, Role.PROVIDER).id)
        device = session.exec(select(Device)).one()
        return device.id, token


def test_metrics_carry_the_counters_and_each_online_gpu_under_dcgm_names(api_client, parts):
    device_id, token = beating_device(parts)
    assert (
        api_client.post(
            "/api/v1/worker/heartbeat", json=BEAT, headers={"Authorization": f"Bearer {token}"}
        ).status_code
        == 200
    )
    text = api_client.get("/metrics").text
    line = next(row for row in text.splitlines() if row.startswith("DCGM_FI_DEV_GPU_UTIL{"))
    assert f'portal_device="{device_id}"' in line and 'gpu="0"' in line and 'simulated="true"' in line
    assert 'modelName="H100-80GB"' in line and line.endswith(" 42.0")
    assert any(
        row.startswith("DCGM_FI_DEV_FB_USED{") and row.endswith(" 2048.0") for row in text.splitlines()
    )
    assert "portal_heartbeats_total" in text
    checked = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True
    )
    # The only finding allowed is promtool's style lint on dcgm-exporter's own camelCase label names
    # (modelName, UUID, Hostname), kept as dcgm-exporter writes them so its dashboards work unchanged.
    findings = [line for line in (checked.stdout + checked.stderr).splitlines() if line.strip()]
    dcgm_label_lint = "label names should be written in 'snake_case' not 'camelCase'"
    assert all(line.startswith("DCGM_FI_DEV_") and line.endswith(dcgm_label_lint) for line in findings), (
        findings
    )


def test_operators_discover_the_agents_metrics_endpoints(api_client, parts):
    device_id, _ = beating_device(parts)
    with session_scope(parts.engine) as session:
        device = session.get(Device, device_id)
        # Registered from 10.1.2.3 (only a URL on that address is a target); nothing is contacted.
        device.address, device.metrics_url = "10.1.2.3", "http://10.1.2.3:9400/metrics"
        device.last_heartbeat_at = utcnow()
        session.add(device)
        admin = make_user(session, Role.ADMIN)
        as_admin = {"Authorization": f"Bearer {access_token_for(session, admin)}"}
        prometheus_key = {"Authorization": f"Bearer {api_key_for(session, admin, ['metrics:read'])}"}
        wrong_key = {"Authorization": f"Bearer {api_key_for(session, admin, ['clusters:read'])}"}
    for headers in (as_admin, prometheus_key):
        (target,) = api_client.get("/api/v1/monitoring/targets", headers=headers).json()
        assert target["targets"] == ["10.1.2.3:9400"]
        assert target["labels"]["portal_device"] == str(device_id)
        assert target["labels"]["__metrics_path__"] == "/metrics"
    assert api_client.get("/api/v1/monitoring/targets", headers=wrong_key).status_code == 403


def test_a_real_prometheus_scrapes_the_gpus_while_an_agent_heartbeats(parts, tmp_path):
    binary = tool("prometheus")
    device_id, token = beating_device(parts)
    with ServerThread(portal_app(parts)) as url:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: portal\n    static_configs: [{{targets: ['{url.removeprefix('http://')}']}}]\n"
        )
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:

            def stored_gauge() -> list:
                httpx.post(
                    f"{url}/api/v1/worker/heartbeat", json=BEAT, headers={"Authorization": f"Bearer {token}"}
                )
                try:
                    reply = httpx.get(
                        f"http://127.0.0.1:{port}/api/v1/query",
                        params={"query": f'DCGM_FI_DEV_GPU_UTIL{{portal_device="{device_id}"}}'},
                        timeout=5,
                    )
                    return reply.json()["data"]["result"]
                except (httpx.HTTPError, KeyError, ValueError):
                    return []

            found = wait_until(
                stored_gauge, timeout_s=60, every_s=0.5, what="Prometheus storing the GPU gauge"
            )
            assert float(found[0]["value"][1]) == 42.0 and found[0]["metric"]["gpu"] == "0"
            # The query layer's Prometheus back end answers in the same shape as the embedded store.
            with_prometheus = parts.settings.model_copy(update={"prometheus_url": f"http://127.0.0.1:{port}"})

            def ranged() -> dict:
                # A range query evaluates at its steps: a sample newer than the last step shows at the next.
                stored_gauge()
                with session_scope(parts.engine) as session:
                    return telemetry.series(session, with_prometheus, [device_id], 15)

            series = wait_until(
                ranged, lambda found: found["util"], timeout_s=60, every_s=0.5, what="a range"
            )
            (util,) = series["util"]
            assert (
                (util.device_id, util.gpu_index) == (device_id, 0)
                and util.values
                and set(util.values) == {42.0}
            )
            assert series["power"][0].values[-1] == 250.0
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def test_the_shipped_prometheus_config_is_valid(tmp_path):
    from portal.config import PROJECT_ROOT

    # promtool opens the credential files it names: the checked copy points at stand-ins of the secrets.
    shipped = (PROJECT_ROOT / "deploy" / "prometheus.yml").read_text()
    for secret in ("/run/secrets/portal_metrics_token", "/etc/prometheus/portal_api_key"):
        stand_in = tmp_path / secret.rsplit("/", 1)[1]
        stand_in.write_text("x" * 32)
        assert secret in shipped
        shipped = shipped.replace(secret, str(stand_in))
    (tmp_path / "prometheus.yml").write_text(shipped)
    checked = subprocess.run(
        [tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_grafana_dashboard_charts_metrics_the_portal_exposes(api_client, parts):
    import json
    import re

    import yaml

    from portal.config import PROJECT_ROOT

    _, token = beating_device(parts)
    api_client.post("/api/v1/worker/heartbeat", json=BEAT, headers={"Authorization": f"Bearer {token}"})
    exposition = api_client.get("/metrics").text.splitlines()
    # Families without samples yet (no actor has run here) still declare themselves in TYPE lines.
    exposed = {line.split()[2] for line in exposition if line.startswith("# TYPE ")}
    exposed |= {line.split("{")[0].split(" ")[0] for line in exposition if line and not line.startswith("#")}
    dashboard = json.loads((PROJECT_ROOT / "deploy/grafana/dashboards/gpu-portal.json").read_text())
    charted = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(
            r"\b(?:DCGM_FI_DEV_\w+|portal_\w+)\b(?!\s*=)", target["expr"]
        )  # not label names
    }
    assert charted and charted <= exposed, charted - exposed
    datasource = yaml.safe_load(
        (PROJECT_ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert {panel["datasource"]["uid"] for panel in dashboard["panels"]} == {datasource["uid"]}
