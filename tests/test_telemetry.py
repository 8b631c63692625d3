"""GPU samples ride the heartbeats into the portal's own store, and come back as per-GPU series over the
API, bucket-averaged, on SQLite and PostgreSQL."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from portal.infra.cache import MemoryCache
from portal.infra.db import session_scope
from portal.models import GpuSample, Role, User
from portal.models.base import utcnow
from portal.services import retention
from portal.services.errors import Unavailable
from portal.services.providers import agents, telemetry
from tests.factories import access_token_for, make_user
from tests.test_clusters import SETTINGS, market_with


def sample(index: int, util: float) -> dict:
    return {"index": index, "util_pct": util, "mem_used_mb": 1000.0, "temp_c": 60.0, "power_w": 300.0}


def test_heartbeat_samples_are_stored_and_averaged_into_buckets(engine):
    with session_scope(engine) as session:
        (device,) = market_with(session, [2])
        now = utcnow()
        session.add_all(
            GpuSample(
                device_id=device.id,
                at=now - timedelta(seconds=5 * i),
                gpu_index=gpu,
                util_pct=10.0 * gpu,
                mem_used_mb=512.0,
                temp_c=50.0,
                power_w=250.0,
            )
            for i in range(24)  # two minutes, every 5 s
            for gpu in (0, 1)
        )
        session.add(
            GpuSample(
                device_id=device.id,
                at=now - timedelta(hours=2),
                gpu_index=0,
                util_pct=99.0,
                mem_used_mb=0.0,
                temp_c=0.0,
                power_w=0.0,
            )
        )
    with session_scope(engine) as session:
        found = telemetry.series(session, SETTINGS, [device.id], 15)
    gpu0, gpu1 = found["util"]
    assert (gpu0.gpu_index, gpu1.gpu_index) == (0, 1)
    assert 8 <= len(gpu0.times) <= 10  # 2 minutes in 15 s buckets; the 2-hour-old sample is out of range
    assert set(gpu0.values) == {0.0} and set(gpu1.values) == {10.0}
    assert gpu0.times == sorted(gpu0.times) and found["power"][0].values[0] == 250.0
    # Nothing older than a week: retention keeps every sample.
    assert retention.prune(engine, SETTINGS, tables=["gpu_samples"]).rows["gpu_samples"] == 0


def test_the_device_metrics_route_returns_what_the_agent_reported(parts, api_client):
    with session_scope(parts.engine) as session:
        (device,) = market_with(session, [2])
        owner = session.get(User, device.owner_id)
        headers = {"Authorization": f"Bearer {access_token_for(session, owner)}"}
        stranger = {"Authorization": f"Bearer {access_token_for(session, make_user(session, Role.PROVIDER))}"}
    cache = MemoryCache()
    for util in (30.0, 50.0):
        with session_scope(parts.engine) as session:
            agents.heartbeat(session, cache, device.id, samples=[sample(0, util), sample(1, 5.0)], ray={})
    reply = api_client.get(f"/api/v1/devices/{device.id}/metrics", params={"minutes": 15}, headers=headers)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["step_s"] == 15 and body["metrics"]["util"]["dcgm_name"] == "DCGM_FI_DEV_GPU_UTIL"
    series = {s["gpu_index"]: s for s in body["metrics"]["util"]["series"]}
    assert [value for _, value in series[0]["points"]] in ([40.0], [30.0, 50.0])
    assert api_client.get(f"/api/v1/devices/{device.id}/metrics", headers=stranger).status_code == 404
    too_far = api_client.get(
        f"/api/v1/devices/{device.id}/metrics", params={"minutes": 99_999}, headers=headers
    )
    assert too_far.status_code == 422


def test_an_unreachable_prometheus_is_a_clear_503_not_a_crash(parts):
    from tests.conftest import closed_port

    with session_scope(parts.engine) as session:
        (device,) = market_with(session, [1])
    away = parts.settings.model_copy(update={"prometheus_url": f"http://127.0.0.1:{closed_port()}"})
    with session_scope(parts.engine) as session, pytest.raises(Unavailable) as refused:
        telemetry.series(session, away, [device.id], 15)
    assert "Prometheus did not answer" in refused.value.message and refused.value.status_code == 503


def test_daily_uptime_follows_the_recorded_state_transitions(engine):
    from portal.models import Device, StateTransition

    midnight = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    day0 = midnight - timedelta(days=2)
    with session_scope(engine) as session:
        (device,) = market_with(session, [1])
        row = session.get(Device, device.id)
        row.created_at = day0
        session.add(row)
        for at, to_state in (
            (day0 + timedelta(hours=6), "ready"),
            (day0 + timedelta(days=1), "offline"),
            (day0 + timedelta(days=1, hours=12), "ready"),
        ):
            session.add(
                StateTransition(
                    entity_type="device",
                    entity_id=str(device.id),
                    from_state="",
                    to_state=to_state,
                    reason="test",
                    at=at,
                )
            )
    with session_scope(engine) as session:
        days = telemetry.daily_uptime(session, session.get(Device, device.id))
    assert [(day, pct) for day, pct in days][:2] == [(day0, 75.0), (day0 + timedelta(days=1), 50.0)]
    assert days[-1] == (midnight, 100.0) and len(days) == 3


def test_a_clusters_charts_begin_with_its_rental():
    start = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    before, during = start - timedelta(minutes=5), start + timedelta(minutes=5)
    device = uuid.uuid4()
    found = {"util": [telemetry.Series(device, "rig", 0, [before, start, during], [99.0, 10.0, 20.0])]}
    (kept,) = telemetry.from_moment(found, start)["util"]
    assert (kept.times, kept.values) == ([start, during], [10.0, 20.0])
    assert (kept.device_id, kept.device_name, kept.gpu_index) == (device, "rig", 0)
