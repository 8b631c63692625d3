"""Heartbeats at swarm scale: each beat is written to the cache, and the beats are flushed to the database
in batches, one bulk UPDATE for every device that beat since the last flush.

Ten thousand agents beating every five seconds are 2,000 writes a second: one row each in the database
would hold a connection per beat. Here a beat costs a few cache operations; the database sees one
statement a second. ``last_heartbeat_at`` trails the newest beat by at most a flush period, far below the
three missed beats that make a device offline. The device state an agent is told comes from the cache,
refreshed by each flush.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from portal.cache import Cache, Operation
from portal.models import Device, DeviceState, GpuSample, HearingGap
from portal.services import state_machines

BEATS = "beats"
STATE_TTL_S = 30
SAMPLE_TTL_S = 60
FLUSH_EVERY_S = 1.0


def state_key(device_id: uuid.UUID | str) -> str:
    return f"device-state:{device_id}"


def samples_key(device_id: uuid.UUID | str) -> str:
    return f"gpu-samples:{device_id}"


@dataclass(frozen=True)
class Noted:
    state: str | None  # as last flushed; None until a flush has seen the device
    flush: bool  # this caller flushes the batch for this period (one caller across processes)
    sweep_commands: bool  # this beat also looks for commands (every ``sweep_s`` per device)


def record(
    cache: Cache,
    device_id: uuid.UUID,
    *,
    samples: list[dict[str, Any]],
    ray: dict[str, Any],
    now: datetime,
    sweep_s: float,
) -> Noted:
    """Note one beat, in one round trip to the cache."""
    beat = {
        "at": now.isoformat(),
        "ray_state": ray.get("state", "none"),
        "ray_node_id": ray.get("node_id"),
        "gpus": samples,
    }
    operations: list[Operation] = [
        ("hset", BEATS, str(device_id), json.dumps(beat)),
        ("get", state_key(device_id)),
        ("incr", f"beats-flush:{int(now.timestamp() // FLUSH_EVERY_S)}", FLUSH_EVERY_S * 5),
        ("incr", f"command-sweep:{device_id}", sweep_s),
    ]
    if samples:
        sample = json.dumps({"at": now.isoformat(), "gpus": samples})
        operations.append(("set", samples_key(device_id), sample, SAMPLE_TTL_S))
    _, state, flush_claims, sweeps = cache.batch(operations)[:4]
    return Noted(state=state, flush=flush_claims == 1, sweep_commands=sweeps == 1)


# No agent at all heard for longer than this: the portal was deaf (see ``devices.Hearing``), a gap.
HEARING_GAP_S = 10.0
# After a gap, the time an agent may take to be heard again: gpu_pool's backoff cap (30 s) and its jitter
# (1 s), a try that hangs until the client's timeout (10 s) while the portal is coming up, and one heartbeat.
AGENT_RETRY_MAX_S = 50.0


NEWEST_BEAT = "liveness:newest-beat"


def _note_gap(session: Session, cache: Cache, first_beat: datetime, last_beat: datetime) -> None:
    """Record the time no agent at all was heard before this batch (the portal's restart or outage), so
    that it never counts as a device's silence (``devices.Hearing``). The newest beat flushed so far is
    kept in the cache (the flush runs every second); the database answers only when the cache lost it."""
    known = cache.get(NEWEST_BEAT)
    newest = (
        datetime.fromisoformat(known)
        if known
        else session.exec(select(func.max(Device.last_heartbeat_at))).one()
    )
    if newest is not None and (first_beat - newest).total_seconds() > HEARING_GAP_S:
        session.add(HearingGap(started_at=newest, ended_at=first_beat))
    if newest is None or last_beat > newest:
        cache.set(NEWEST_BEAT, last_beat.isoformat(), ttl_s=86_400)


def flush(session: Session, cache: Cache, *, store_samples: bool = True) -> dict[uuid.UUID, str]:
    """Write the beats noted since the last flush (and their GPU samples, for the portal's own sample store
    when no Prometheus keeps them); returns the states of the devices that beat.

    A device that was offline comes back (ready if verified, else verifying) through its state machine.
    Beats of devices removed meanwhile are dropped.
    """
    beats = {uuid.UUID(device_id): json.loads(raw) for device_id, raw in cache.hdrain(BEATS).items()}
    if not beats:
        return {}
    known = dict(session.exec(select(Device.id, Device.state).where(col(Device.id).in_(list(beats)))).all())
    rows = [
        {
            "id": device_id,
            "last_heartbeat_at": datetime.fromisoformat(beat["at"]),
            "ray_state": beat["ray_state"][:24],
            "ray_node_id": beat["ray_node_id"],
        }
        for device_id, beat in beats.items()
        if device_id in known
    ]
    if rows:
        beats_at = [row["last_heartbeat_at"] for row in rows]
        _note_gap(session, cache, min(beats_at), max(beats_at))
        # The ORM's bulk UPDATE by primary key: one executemany for the whole batch.
        session.execute(update(Device), rows)
    if store_samples:
        session.add_all(
            GpuSample(
                device_id=device_id,
                at=datetime.fromisoformat(beat["at"]),
                gpu_index=gpu["index"],
                util_pct=gpu["util_pct"],
                mem_used_mb=gpu["mem_used_mb"],
                temp_c=gpu["temp_c"],
                power_w=gpu["power_w"],
            )
            for device_id, beat in beats.items()
            if device_id in known
            for gpu in beat.get("gpus", [])
        )
    returning = [device_id for device_id, state in known.items() if state == DeviceState.OFFLINE]
    if returning:  # one query for all of them: after an outage, that can be every device
        for device in session.exec(select(Device).where(col(Device.id).in_(returning))).all():
            back = DeviceState.READY if device.verified_at is not None else DeviceState.VERIFYING
            state_machines.move(session, "device", device, back, "heartbeats resumed")
            known[device.id] = device.state
    cache.batch(
        [("set", state_key(device_id), str(state), STATE_TTL_S) for device_id, state in known.items()]
    )
    return known


def read_samples(cache: Cache, device_id: uuid.UUID | str) -> dict[str, Any] | None:
    raw = cache.get(samples_key(device_id))
    return json.loads(raw) if raw else None


def current_state(session: Session, cache: Cache, device_id: uuid.UUID) -> str:
    """The device's state from the database, cached for the next beats."""
    state = session.exec(select(Device.state).where(Device.id == device_id)).one()
    cache.set(state_key(device_id), str(state), STATE_TTL_S)
    return str(state)
