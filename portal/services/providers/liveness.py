"""Heartbeats at swarm scale: each beat is written to the cache, and the beats are flushed to the database
in batches, one bulk UPDATE for every device that beat since the last flush.

Ten thousand agents beating every five seconds are 2,000 writes a second: one row each in the database
would hold a connection per beat. Here a beat costs one round trip to the cache (``record`` for a device
already known, ``record_by_tokens`` for beats known by their device tokens, in one Lua script each); the
database sees a statement or two a second. ``last_heartbeat_at`` trails the newest beat by at most a flush
period, far below the three missed beats that make a device offline. The device state an agent is told
comes from the cache, refreshed by each flush.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, text, update
from sqlmodel import Session, col, select

from portal.infra.cache import Cache, Operation, Script
from portal.models import Device, DeviceState, GpuSample, HearingGap
from portal.services import state_machines

BEATS = "beats"
# Each flush sets the state of every device that beat, so the entry is never staler than a flush; its
# expiry only clears silent devices' entries. It outlasts the first pass of a swarm through the slow path
# after the cache was lost (minutes at 10,000 devices): shorter, beats would keep missing it.
STATE_TTL_S = 600
SAMPLE_TTL_S = 60
# A flush is a burst of database work for every beat since the last (about 100 ms of PostgreSQL's CPU for
# the 3,000 beats a second of 10,000 devices), and the beats answered meanwhile wait for the cores it takes:
# flushed once a second, the beats due around it made the p99 (bench/heartbeats.py); four smaller bursts do
# not.
FLUSH_EVERY_S = 0.25


def state_key(device_id: uuid.UUID | str) -> str:
    return f"device-state:{device_id}"


def samples_key(device_id: uuid.UUID | str) -> str:
    return f"gpu-samples:{device_id}"


@dataclass(frozen=True)
class NotedBeat:
    """What noting one beat in the cache told its request."""

    state: str | None  # as last flushed; None until a flush has seen the device
    flush: bool  # this caller flushes the batch for this period (one caller across processes)
    sweep_commands: bool  # this beat also looks for commands (every ``sweep_s`` per device)


def sweep_key(device_id: uuid.UUID | str) -> str:
    return f"command-sweep:{device_id}"


def flush_claim_key(now: datetime) -> str:
    return f"beats-flush:{int(now.timestamp() // FLUSH_EVERY_S)}"


def _beat_texts(gpus_json: str, ray_json: str, now: datetime, mesh_json: str = "") -> tuple[str, str]:
    """The beat as the flush reads it, and the GPU samples as pages read them ('' when none), from the
    JSON the agent sent (composed as text: this runs for every beat). ``mesh`` only when the agent said
    how it stands on the overlay."""
    at = now.isoformat()
    sample = f'{{"at":"{at}","gpus":{gpus_json}}}' if gpus_json != "[]" else ""
    mesh = f',"mesh":{mesh_json}' if mesh_json else ""
    return f'{{"at":"{at}","ray":{ray_json},"gpus":{gpus_json}{mesh}}}', sample


def _noting(device_id: str, beat: str, sample: str, flush_claim: str, sweep_s: float) -> list[Operation]:
    """The cache operations that note a beat: the first four answer ``NotedBeat``."""
    operations: list[Operation] = [
        ("hset", BEATS, device_id, beat),
        ("get", state_key(device_id)),
        ("incr", flush_claim, FLUSH_EVERY_S * 5),
        ("incr", sweep_key(device_id), sweep_s),
    ]
    if sample:
        operations.append(("set", samples_key(device_id), sample, SAMPLE_TTL_S))
    return operations


def _jittered(sweep_s: float) -> float:
    """A device's sweep period, a little longer or shorter each time, so that the devices that came back
    together after a restart do not all look for commands in the same seconds ever after."""
    return sweep_s * random.uniform(0.75, 1.25)


def _noted(state: str | None, flush_claims: int, sweeps: int) -> NotedBeat:
    return NotedBeat(state=state, flush=flush_claims == 1, sweep_commands=sweeps == 1)


def record(
    cache: Cache,
    device_id: uuid.UUID,
    *,
    samples: list[dict[str, Any]],
    ray: dict[str, Any],
    now: datetime,
    sweep_s: float,
    mesh: dict[str, Any] | None = None,
) -> NotedBeat:
    """Note one beat, in one round trip to the cache."""
    beat, sample = _beat_texts(json.dumps(samples), json.dumps(ray), now, json.dumps(mesh) if mesh else "")
    _, state, flush_claims, sweeps = cache.batch(
        _noting(str(device_id), beat, sample, flush_claim_key(now), _jittered(sweep_s))
    )[:4]
    return _noted(state, flush_claims, sweeps)


@dataclass(frozen=True)
class TokenBeat:
    """A beat known by its device token's cache key, with the key that counts its caller's requests."""

    token_key: str
    rate_key: str
    gpus_json: str
    ray_json: str
    mesh_json: str = ""  # '' when the agent is not on the overlay


@dataclass(frozen=True)
class TokenBeatNoted:
    rate_count: int  # the request's count in its rate-limit window
    token_entry: str | None  # the device token's cache entry (None: not cached)
    noted: NotedBeat | None  # None: not noted (over the limit, or the entry is not a device's)


# One beat of record_by_tokens. KEYS: rate counter, token entry, beats hash, flush claim. ARGV: cache
# prefix, rate limit, rate window (ms), revoked entry, beat, sample ('' for none), then the stems of the
# device's state, sweep and sample keys, and the expiries (ms) of the sweep, the flush claim and the sample.
_RECORD_BY_TOKEN_LUA = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
if count > tonumber(ARGV[2]) then return {count} end
local entry = redis.call('GET', KEYS[2])
if not entry or entry == ARGV[4] then return {count, entry} end
local device = string.match(entry, '^%S+')
redis.call('HSET', KEYS[3], device, ARGV[5])
local state = redis.call('GET', ARGV[1] .. ARGV[7] .. device)
local flush = redis.call('INCR', KEYS[4])
if flush == 1 then redis.call('PEXPIRE', KEYS[4], ARGV[11]) end
local sweep_key = ARGV[1] .. ARGV[8] .. device
local sweep = redis.call('INCR', sweep_key)
if sweep == 1 then redis.call('PEXPIRE', sweep_key, ARGV[10]) end
if ARGV[6] ~= '' then redis.call('SET', ARGV[1] .. ARGV[9] .. device, ARGV[6], 'PX', ARGV[12]) end
return {count, entry, state, flush, sweep}
"""


def _record_by_token_locally(cache: Cache, keys: Sequence[str], args: Sequence[Any]) -> list[Any]:
    """The Lua above, step by step, for the embedded cache."""
    rate_key, token_key, _, flush_claim = keys
    limit, window_ms, revoked, beat, sample, _, _, _, sweep_ms, *_ = args
    count = cache.incr(rate_key, window_ms / 1000)
    if count > limit:
        return [count]
    entry = cache.get(token_key)
    if entry is None or entry == revoked:
        return [count, entry]
    noting = _noting(entry.split()[0], beat, sample, flush_claim, sweep_ms / 1000)
    return [count, entry, *cache.batch(noting)[1:4]]


_RECORD_BY_TOKEN = Script(_RECORD_BY_TOKEN_LUA, _record_by_token_locally)


async def record_by_tokens(
    cache: Cache,
    beats: Sequence[TokenBeat],
    *,
    revoked: str,
    rate_limit: int,
    rate_window_s: float,
    now: datetime,
    sweep_s: float,
) -> list[TokenBeatNoted]:
    """For each beat: count the request against its rate limit, find the device of its cached token and note
    the beat as ``record`` does (which needs the device already). All in one round trip to the cache.
    Nothing is noted over the limit, or when the token's entry is missing or ``revoked``."""
    # What every beat of the batch shares is built once (this runs for every beat).
    keys_after_token = [BEATS, flush_claim_key(now)]
    limits = [rate_limit, int(rate_window_s * 1000), revoked]
    stems = [state_key(""), sweep_key(""), samples_key("")]
    expiries = [int(FLUSH_EVERY_S * 5 * 1000), SAMPLE_TTL_S * 1000]
    calls = []
    for beat in beats:
        text, sample = _beat_texts(beat.gpus_json, beat.ray_json, now, beat.mesh_json)
        args = [*limits, text, sample, *stems, int(_jittered(sweep_s) * 1000), *expiries]
        calls.append(([beat.rate_key, beat.token_key, *keys_after_token], args))
    return [
        TokenBeatNoted(
            int(reply[0]),
            reply[1] if len(reply) > 1 else None,
            _noted(reply[2], int(reply[3]), int(reply[4])) if len(reply) > 2 else None,
        )
        for reply in await cache.run_script_async(_RECORD_BY_TOKEN, calls)
    ]


# No agent at all heard for longer than this: the portal was deaf (see ``devices.Hearing``), a gap.
HEARING_GAP_S = 10.0
# After a gap, the time an agent may take to be heard again: gpu_pool's backoff cap (30 s) and its jitter
# (1 s), a try that hangs until the client's timeout (10 s) while the portal is coming up, and one heartbeat.
AGENT_RETRY_MAX_S = 50.0


NEWEST_BEAT = "liveness:newest-beat"


def _newest_beat(session: Session, cache: Cache) -> datetime | None:
    """The newest beat flushed so far: kept in the cache (the flush runs every second); the database answers
    only when the cache lost it."""
    known = cache.get(NEWEST_BEAT)
    if known:
        return datetime.fromisoformat(known)
    return session.exec(select(func.max(Device.last_heartbeat_at))).one()


def _note_gaps(session: Session, cache: Cache, newest: datetime | None, beats_at: list[datetime]) -> None:
    """Record each time no agent at all was heard (the portal's restart or outage), so that it never counts
    as a device's silence (``devices.Hearing``): before this batch, and within it, where a beat noted while
    the portal went down is flushed with those heard after its return."""
    first, last = min(beats_at), max(beats_at)
    # Sorting is needed only when the batch itself spans a gap (almost never).
    times = sorted(beats_at) if (last - first).total_seconds() > HEARING_GAP_S else [first, last]
    heard = newest
    for at in times:
        if heard is not None and (at - heard).total_seconds() > HEARING_GAP_S:
            session.add(HearingGap(started_at=heard, ended_at=at))
        heard = at if heard is None else max(heard, at)
    if newest is None or last > newest:
        cache.set(NEWEST_BEAT, last.isoformat(), ttl_s=86_400)


def flush(session: Session, cache: Cache, *, store_samples: bool = True) -> dict[uuid.UUID, str]:
    """Write the beats noted since the last flush (and their GPU samples, for the portal's own sample store
    when no Prometheus keeps them); returns the states of the devices that beat.

    A device that was offline comes back (ready if verified, else verifying) through its state machine.
    Beats of devices removed meanwhile are dropped.
    """
    drained = cache.hdrain(BEATS)
    if not drained:
        return {}
    newest = _newest_beat(session, cache)  # read before this batch is written
    write = _write_on_postgresql if session.get_bind().dialect.name == "postgresql" else _write_by_orm
    heard = write(session, drained, store_samples)
    if heard:
        _note_gaps(session, cache, newest, [at for _, at in heard.values()])
    known = {device_id: state for device_id, (state, _) in heard.items()}
    returning = [device_id for device_id, state in known.items() if state == DeviceState.OFFLINE]
    if returning:  # one query for all of them: after an outage, that can be every device
        for device in session.exec(select(Device).where(col(Device.id).in_(returning))).all():
            back = DeviceState.READY if device.verified_at is not None else DeviceState.VERIFYING
            state_machines.move(session, "device", device, back, "heartbeats resumed")
            known[device.id] = device.state
    cache.set_many({state_key(device_id): str(state) for device_id, state in known.items()}, STATE_TTL_S)
    return known


# A flush writes a row per device that beat: thousands a second at swarm scale. On PostgreSQL the batch goes
# over as one JSON document that one statement unpacks, a few milliseconds where the ORM's executemany took
# hundreds (``bench/heartbeats.py``); elsewhere (SQLite, embedded) the ORM's bulk statements do.
# It writes only the rows no one holds (SKIP LOCKED): a placement waiting on row locks holds devices in
# its own order, and a flush waiting on them in another deadlocked it (``bench/deploys.py``, 16 customers
# at once). A device held for that moment misses this one beat; its next, seconds later, is written.
_UPDATE_SQL = """
    UPDATE devices SET last_heartbeat_at = beat.at,
        ray_state = left(coalesce(beat.ray ->> 'state', 'none'), 24),
        ray_node_id = left(beat.ray ->> 'node_id', 64),
        mesh_state = coalesce(left(beat.mesh ->> 'state', 16), devices.mesh_state),
        mesh_relayed = CASE WHEN beat.mesh IS NULL THEN devices.mesh_relayed
            ELSE (beat.mesh ->> 'relayed')::boolean END
    FROM jsonb_to_recordset(CAST(:beats AS jsonb))
        AS beat(id uuid, at timestamptz, ray jsonb, gpus jsonb, mesh jsonb)
    WHERE devices.id = beat.id AND devices.id IN (
        SELECT id FROM devices WHERE id = ANY(CAST(:ids AS uuid[])) FOR UPDATE SKIP LOCKED
    )
    RETURNING devices.id, devices.state, beat.at
"""
_UPDATE_BEATS = text(_UPDATE_SQL)
# The same, storing the GPU samples of the beats written: the batch is parsed once, and only the devices that
# exist get samples.
_UPDATE_BEATS_STORING_SAMPLES = text(f"""
    WITH updated AS ({_UPDATE_SQL}, beat.gpus),
    stored AS (
        INSERT INTO gpu_samples (device_id, at, gpu_index, util_pct, mem_used_mb, temp_c, power_w)
        SELECT updated.id, updated.at, gpu."index", gpu.util_pct, gpu.mem_used_mb, gpu.temp_c, gpu.power_w
        FROM updated CROSS JOIN LATERAL jsonb_to_recordset(updated.gpus)
            AS gpu("index" integer, util_pct float8, mem_used_mb float8, temp_c float8, power_w float8)
    )
    SELECT id, state, at FROM updated
""")


def _write_on_postgresql(
    session: Session, drained: dict[str, str], store_samples: bool
) -> dict[uuid.UUID, tuple[str, datetime]]:
    """The beats onto the rows of the devices that exist; their states and beat times."""
    # Each noted beat is a JSON object of this module's making: the device id goes in as its first field.
    beats = "[" + ",".join(f'{{"id":"{device_id}",{raw[1:]}' for device_id, raw in drained.items()) + "]"
    statement = _UPDATE_BEATS_STORING_SAMPLES if store_samples else _UPDATE_BEATS
    return {
        device_id: (state, at)
        for device_id, state, at in session.execute(statement, {"beats": beats, "ids": list(drained)}).all()
    }


def _write_by_orm(
    session: Session, drained: dict[str, str], store_samples: bool
) -> dict[uuid.UUID, tuple[str, datetime]]:
    beats = {uuid.UUID(device_id): json.loads(raw) for device_id, raw in drained.items()}
    states = dict(session.exec(select(Device.id, Device.state).where(col(Device.id).in_(list(beats)))).all())
    heard = {
        device_id: (states[device_id], datetime.fromisoformat(beat["at"]))
        for device_id, beat in beats.items()
        if device_id in states
    }
    if not heard:
        return {}
    rows = [
        {
            "id": device_id,
            "last_heartbeat_at": heard[device_id][1],
            "ray_state": str(beats[device_id]["ray"].get("state", "none"))[:24],
            "ray_node_id": beats[device_id]["ray"].get("node_id"),
        }
        for device_id in heard
    ]
    session.execute(update(Device), rows)
    on_overlay = [
        {"id": device_id, "mesh_state": str(mesh["state"])[:16], "mesh_relayed": mesh.get("relayed")}
        for device_id in heard
        if (mesh := beats[device_id].get("mesh"))
    ]
    if on_overlay:
        session.execute(update(Device), on_overlay)
    samples = [
        {
            "device_id": device_id,
            "at": at,
            "gpu_index": gpu["index"],
            "util_pct": gpu["util_pct"],
            "mem_used_mb": gpu["mem_used_mb"],
            "temp_c": gpu["temp_c"],
            "power_w": gpu["power_w"],
        }
        for device_id, (_, at) in heard.items()
        for gpu in beats[device_id]["gpus"]
    ]
    if store_samples and samples:
        session.execute(insert(GpuSample), samples)
    return heard


def read_samples(cache: Cache, device_id: uuid.UUID | str) -> dict[str, Any] | None:
    raw = cache.get(samples_key(device_id))
    return json.loads(raw) if raw else None


def current_state(session: Session, cache: Cache, device_id: uuid.UUID) -> str:
    """The device's state from the database, cached for the next beats."""
    state = session.exec(select(Device.state).where(Device.id == device_id)).one()
    cache.set(state_key(device_id), str(state), STATE_TTL_S)
    return str(state)
