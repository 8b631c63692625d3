"""Heartbeats answered in front of the app (``portal.api.heartbeat_lane``): a beat the cache can admit never
reaches the app, yet gets the same answer, headers, metrics and limits; every other beat is the app's to
answer. On Redis (one Lua script per beat) and in process."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from sqlmodel import select
from starlette.types import ASGIApp, Receive, Scope, Send

from portal.api.app import create_api
from portal.api.heartbeat_lane import HEARTBEAT_PATH, HeartbeatLane
from portal.infra.cache import MemoryCache, RedisCache
from portal.infra.db import session_scope
from portal.infra.metrics import REGISTRY
from portal.models import Device, DeviceState, GpuSample, HearingGap
from portal.models.base import utcnow
from portal.parts import AppParts
from portal.security.firewall import API_CSP, WINDOW_S
from portal.security.principal import RequestOrigin
from portal.services.providers import devices, liveness
from tests import factories
from tests.test_clusters import market_with

BEAT = {
    "gpus": [{"index": 0, "util_pct": 42.5, "mem_used_mb": 1000, "temp_c": 61, "power_w": 300}],
    "ray": {"state": "running", "node_id": "a" * 56},
}


class AppSpy:
    """The app, noting the requests that reach it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.reached: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.reached.append(scope["path"])
        await self.app(scope, receive, send)


@pytest.fixture(params=["memory", "redis"])
def lane_parts(request, parts: AppParts, cache_prefix: str) -> AppParts:
    if request.param == "memory":
        return parts
    return AppParts(
        parts.settings, parts.engine, RedisCache(request.getfixturevalue("redis_url"), cache_prefix)
    )


def serve(parts: AppParts) -> tuple[HeartbeatLane, AppSpy]:
    spy = AppSpy(create_api(parts))
    return HeartbeatLane(spy, parts), spy


@pytest.fixture
def lane(lane_parts: AppParts) -> Iterator[tuple[TestClient, AppSpy, AppParts]]:
    app, spy = serve(lane_parts)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, spy, lane_parts


def add_device(parts: AppParts) -> tuple[uuid.UUID, str]:
    return factories.add_device(parts.engine)


def beat(client: TestClient, token: str, body: object = BEAT) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return client.post(HEARTBEAT_PATH, content=content, headers=headers)


def lane_answers() -> float:
    """Beats answered, by the app or the lane: both count them under the route's template in its router."""
    labels = {"method": "POST", "route": "/worker/heartbeat", "status": "200"}
    return REGISTRY.get_sample_value("portal_http_requests_total", labels) or 0.0


def test_a_known_device_beats_without_reaching_the_app_and_gets_the_same_answer(lane):
    client, spy, parts = lane
    device_id, token = add_device(parts)
    through_app = beat(client, token)  # the token is not cached yet: the app authenticates it
    assert through_app.status_code == 200 and spy.reached == [HEARTBEAT_PATH]
    answered_before = lane_answers()

    in_lane = beat(client, token)

    assert in_lane.status_code == 200 and spy.reached == [HEARTBEAT_PATH]
    assert (
        in_lane.json() == through_app.json() == {"state": "registered", "commands": [], "next_heartbeat_s": 5}
    )
    for name in ("content-type", "content-security-policy", "x-content-type-options", "x-frame-options"):
        assert in_lane.headers[name] == through_app.headers[name]
    assert in_lane.headers["content-security-policy"] == API_CSP
    assert in_lane.headers["x-request-id"] != through_app.headers["x-request-id"]
    assert lane_answers() == answered_before + 1
    # What the lane noted is what the flush writes and the pages read.
    assert liveness.read_samples(parts.cache, device_id)["gpus"][0]["util_pct"] == 42.5
    with session_scope(parts.engine) as session:
        liveness.flush(session, parts.cache)
    with session_scope(parts.engine) as session:
        device = session.get(Device, device_id)
        assert device.ray_state == "running" and device.ray_node_id == "a" * 56
        assert device.last_heartbeat_at is not None
        utils = session.exec(GpuSample.__table__.select().where(GpuSample.device_id == device_id)).all()
        assert {row.util_pct for row in utils} == {42.5}


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_lane_answer_has_the_apps_headers_access_line_and_metrics(lane_parts, scheme, caplog):
    app, spy = serve(lane_parts)
    _, token = add_device(lane_parts)
    answered_before = lane_answers()

    def beat_as(client: TestClient, request_id: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", "X-Request-Id": request_id}
        return client.post(HEARTBEAT_PATH, json=BEAT, headers=headers)

    with (
        TestClient(app, base_url=f"{scheme}://portal") as client,
        caplog.at_level(logging.INFO, logger="portal.access"),
    ):
        through_app = beat_as(client, "app-beat")
        in_lane = beat_as(client, "lane-beat")

    assert spy.reached == [HEARTBEAT_PATH]  # the second beat was the lane's
    assert [through_app.headers["x-request-id"], in_lane.headers["x-request-id"]] == ["app-beat", "lane-beat"]
    assert {**in_lane.headers, "x-request-id": ""} == {**through_app.headers, "x-request-id": ""}
    assert ("strict-transport-security" in in_lane.headers) == (scheme == "https")
    app_line, lane_line = [line for line in caplog.records if line.name == "portal.access"]
    assert set(vars(lane_line)) == set(vars(app_line))
    for line, request_id in ((app_line, "app-beat"), (lane_line, "lane-beat")):
        assert line.getMessage() == f"POST {HEARTBEAT_PATH} 200"
        assert (line.method, line.path, line.status) == ("POST", HEARTBEAT_PATH, 200)
        assert line.request_id == request_id
    assert lane_answers() == answered_before + 2


def test_a_rotated_token_is_refused_by_the_app_even_though_the_lane_knew_it(lane):
    client, spy, parts = lane
    device_id, token = add_device(parts)
    assert [beat(client, token).status_code for _ in range(2)] == [200, 200]
    assert spy.reached == [HEARTBEAT_PATH]  # the second beat was the lane's
    with session_scope(parts.engine) as session:
        owner_id = session.get(Device, device_id).owner_id
        new_token = devices.rotate_token(
            session, parts.cache, owner_id=owner_id, device_id=device_id, origin=RequestOrigin()
        )
    parts.cache.hdrain(liveness.BEATS)

    refused = beat(client, token)

    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_device_token"
    assert spy.reached[-1] == HEARTBEAT_PATH
    assert parts.cache.hdrain(liveness.BEATS) == {}
    assert beat(client, new_token).status_code == 200


@pytest.mark.parametrize(
    "body",
    [b"not json", {"gpus": [{**BEAT["gpus"][0], "util_pct": 250}]}, {"ray": {"state": "dancing"}}],
    ids=["not-json", "util-over-100", "unknown-ray-state"],
)
def test_a_bad_body_gets_the_apps_422_and_notes_nothing(lane, body):
    client, spy, parts = lane
    _, token = add_device(parts)
    assert beat(client, token).status_code == 200
    parts.cache.hdrain(liveness.BEATS)
    reached = len(spy.reached)

    refused = beat(client, token, body)

    assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_input"
    assert len(spy.reached) == reached + 1
    assert parts.cache.hdrain(liveness.BEATS) == {}


def test_each_beat_counts_once_against_the_per_ip_limit_and_a_refused_one_is_not_noted(parts, lane_parts):
    limited = AppParts(
        lane_parts.settings.model_copy(update={"rate_limit_per_minute": 3}),
        lane_parts.engine,
        lane_parts.cache,
    )
    app, _ = serve(limited)
    _, token = add_device(limited)
    # The limit counts in fixed one-minute windows: start early in one, so all four beats share it.
    into_window = time.time() % WINDOW_S
    if into_window > WINDOW_S - 10:
        time.sleep(WINDOW_S - into_window + 0.1)
    with TestClient(app, raise_server_exceptions=False) as client:
        # The first goes on to the app (its token is not cached yet), already counted by the lane.
        assert [beat(client, token).status_code for _ in range(3)] == [200, 200, 200]
        limited.cache.hdrain(liveness.BEATS)
        refused = beat(client, token)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    assert limited.cache.hdrain(liveness.BEATS) == {}


def test_beats_that_arrive_together_share_one_round_trip_and_each_gets_its_answer(lane_parts):
    app, spy = serve(lane_parts)
    tokens = [add_device(lane_parts) for _ in range(20)]
    batches: list[int] = []
    run_script = lane_parts.cache.run_script_async

    async def counting(script, calls):  # type: ignore[no-untyped-def]
        batches.append(len(calls))
        return await run_script(script, calls)

    async def beat_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://portal") as client:

            async def one(token: str, node_id: str) -> httpx.Response:
                body = {**BEAT, "ray": {"state": "running", "node_id": node_id}}
                headers = {"Authorization": f"Bearer {token}"}
                return await client.post(HEARTBEAT_PATH, json=body, headers=headers)

            await asyncio.gather(*(one(token, "a" * 56) for _, token in tokens))  # the app caches every token
            batches.clear()
            object.__setattr__(lane_parts.cache, "run_script_async", counting)
            try:
                return await asyncio.gather(*(one(token, "c" * 56) for _, token in tokens))
            finally:
                del lane_parts.cache.run_script_async

    reached = len(spy.reached)
    # A loop of its own, in a thread of its own: the browser tests' loop may be running in this one.
    with ThreadPoolExecutor(1) as thread:
        answers = thread.submit(asyncio.run, beat_all()).result()

    assert [answer.status_code for answer in answers] == [200] * 20
    assert len(spy.reached) == 20 and reached == 0
    assert sum(batches) == 20 and max(batches) > 1
    # Each device's second beat was noted: one of them may have flushed the batch already, the rest is here.
    with session_scope(lane_parts.engine) as session:
        liveness.flush(session, lane_parts.cache)
    with session_scope(lane_parts.engine) as session:
        node_ids = [session.get(Device, device_id).ray_node_id for device_id, _ in tokens]
    assert node_ids == ["c" * 56] * 20


def test_the_lane_answers_again_once_redis_has_forgotten_its_script(redis_url, parts, cache_prefix):
    on_redis = AppParts(parts.settings, parts.engine, RedisCache(redis_url, cache_prefix))
    app, spy = serve(on_redis)
    _, token = add_device(on_redis)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert [beat(client, token).status_code for _ in range(2)] == [200, 200]
        redis.Redis.from_url(redis_url).script_flush()  # as a Redis restart does
        assert beat(client, token).status_code == 200
    assert spy.reached == [HEARTBEAT_PATH]


def test_an_unreachable_cache_gets_the_apps_503(parts):
    down = AppParts(parts.settings, parts.engine, RedisCache("redis://127.0.0.1:1/0", "down:", timeout_s=0.5))
    app, spy = serve(down)
    _, token = add_device(parts)
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = beat(client, token)
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "unavailable"
    assert spy.reached == [HEARTBEAT_PATH]


def test_other_requests_pass_through_untouched(lane):
    client, spy, parts = lane
    assert client.get("/healthz").status_code == 200
    assert client.get(HEARTBEAT_PATH).status_code == 404  # the API's answer to an unknown GET
    assert beat(client, "gpk_not-a-device-token").status_code == 401
    _, token = add_device(parts)
    assert [beat(client, token).status_code for _ in range(2)] == [200, 200]
    without_type = client.post(
        HEARTBEAT_PATH, content=json.dumps(BEAT), headers={"Authorization": f"Bearer {token}"}
    )
    assert without_type.status_code == 422  # FastAPI reads JSON bodies sent as JSON only; so does the lane
    assert spy.reached == ["/healthz", *[HEARTBEAT_PATH] * 4]


def test_a_flush_writes_each_devices_newest_beat_and_brings_an_offline_one_back(engine):
    cache = MemoryCache()
    with session_scope(engine) as session:
        beating, returning = market_with(session, [1, 1])
        returning.state = DeviceState.OFFLINE
        session.add(returning)
    now = utcnow()
    cache.set(liveness.NEWEST_BEAT, (now - timedelta(minutes=2)).isoformat())  # the portal was deaf since
    gpu = {**BEAT["gpus"][0], "xid_errors": 0, "ecc_uncorrected": 0}
    for device_id, util, ray, at in (
        (beating.id, 10.0, {"state": "starting"}, now - timedelta(seconds=1)),
        (beating.id, 20.0, {"state": "running", "node_id": "b" * 56}, now),  # the newest wins
        (returning.id, 30.0, {"state": "none"}, now),
        (uuid.uuid4(), 40.0, {"state": "none"}, now),  # a device removed meanwhile
    ):
        gpus = [{**gpu, "util_pct": util}, {**gpu, "index": 1, "util_pct": util}]
        liveness.record(cache, device_id, samples=gpus, ray=ray, now=at, sweep_s=120)

    with session_scope(engine) as session:
        states = liveness.flush(session, cache)

    assert states == {beating.id: "ready", returning.id: "ready"}
    assert cache.get(liveness.state_key(returning.id)) == "ready"
    with session_scope(engine) as session:
        written = session.get(Device, beating.id)
        assert (written.ray_state, written.ray_node_id, written.last_heartbeat_at) == (
            "running",
            "b" * 56,
            now,
        )
        assert session.get(Device, returning.id).ray_state == "none"
        samples = session.exec(select(GpuSample.device_id, GpuSample.gpu_index, GpuSample.util_pct)).all()
        assert sorted(samples) == sorted(
            [(beating.id, 0, 20.0), (beating.id, 1, 20.0), (returning.id, 0, 30.0), (returning.id, 1, 30.0)]
        )
        (gap,) = session.exec(select(HearingGap)).all()
        assert gap.ended_at == now
    with session_scope(engine) as session:
        assert liveness.flush(session, cache) == {}  # each beat is written once


def test_with_prometheus_keeping_the_samples_a_flush_writes_the_beats_alone(engine):
    cache = MemoryCache()
    with session_scope(engine) as session:
        (device,) = market_with(session, [1])
    now = utcnow()
    liveness.record(cache, device.id, samples=BEAT["gpus"], ray={"state": "running"}, now=now, sweep_s=120)

    with session_scope(engine) as session:
        assert liveness.flush(session, cache, store_samples=False) == {device.id: "ready"}
    with session_scope(engine) as session:
        written = session.get(Device, device.id)
        assert (written.ray_state, written.last_heartbeat_at) == ("running", now)
        assert session.exec(select(GpuSample)).all() == []


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_flush_passes_over_a_device_a_placement_holds_instead_of_waiting_on_it(engine):
    """A placement waiting on row locks holds devices in its own order; a flush that waited on them in
    another deadlocked with it. The flush writes the rows no one holds, at once, and the held device's next
    beat once it is free."""
    cache = MemoryCache()
    with session_scope(engine) as session:
        held, free = market_with(session, [1, 1])
    now = utcnow()
    for device_id in (held.id, free.id):
        liveness.record(
            cache, device_id, samples=BEAT["gpus"], ray={"state": "running"}, now=now, sweep_s=120
        )

    with engine.connect() as placement:
        placement.execute(select(Device.id).where(Device.id == held.id).with_for_update())
        started = time.monotonic()
        with session_scope(engine) as session:
            assert liveness.flush(session, cache) == {free.id: "ready"}
        assert time.monotonic() - started < 5  # not waiting on the held row (the lock timeout is longer)
        placement.rollback()

    later = now + timedelta(seconds=5)
    liveness.record(cache, held.id, samples=BEAT["gpus"], ray={"state": "running"}, now=later, sweep_s=120)
    with session_scope(engine) as session:
        assert liveness.flush(session, cache) == {held.id: "ready"}
    with session_scope(engine) as session:
        assert session.get(Device, held.id).last_heartbeat_at == later
        assert session.get(Device, free.id).last_heartbeat_at == now
