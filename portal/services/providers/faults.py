"""Fault monitoring: devices that stopped heartbeating go offline, GPUs report XID errors, GPUs busy on a
device nobody hired (a sign of double-renting): each a fault event its owner, admins and (for a hired
device) the customer see."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlmodel import Session, col, select

from portal.config import Settings
from portal.infra.cache import Cache, Operation
from portal.models import Device, DeviceState, FaultEvent
from portal.models.base import utcnow
from portal.services import state_machines
from portal.services.providers import devices, telemetry
from portal.services.providers.devices import MISSED_HEARTBEATS_OFFLINE

# Hired devices are left to cluster healing, which must also act on the cluster they serve.
WATCHED = (DeviceState.VERIFYING, DeviceState.READY)


OFFLINE_BATCH = 1000


def _silent_candidates(session: Session, settings: Settings, *, limit: int, lock: bool) -> list[Device]:
    silent_since = utcnow() - timedelta(seconds=settings.heartbeat_interval_s * MISSED_HEARTBEATS_OFFLINE)
    query = (
        select(Device)
        .where(col(Device.state).in_(WATCHED), col(Device.last_heartbeat_at) < silent_since)
        .order_by(col(Device.last_heartbeat_at))
        .limit(limit)
    )
    if lock and session.get_bind().dialect.name == "postgresql":
        # Rows a heartbeat flush holds are skipped: they are not silent.
        query = query.with_for_update(skip_locked=True)
    return list(session.exec(query).all())


def silent_devices(session: Session, settings: Settings) -> list[uuid.UUID]:
    """Idle devices whose agent has missed ``MISSED_HEARTBEATS_OFFLINE`` heartbeats in a row while the
    portal was hearing (its own deafness is no device's fault)."""
    candidates = _silent_candidates(session, settings, limit=OFFLINE_BATCH, lock=False)
    if not candidates:
        return []
    heard = devices.hearing(session)
    return [device.id for device in candidates if not devices.is_online(device, settings, heard)]


def mark_silent_offline(session: Session, settings: Settings) -> int:
    """Move up to ``OFFLINE_BATCH`` silent devices offline in one transaction (they come back with their
    next heartbeat), each with a fault event; returns how many went. One look at the portal's hearing
    serves the whole batch."""
    candidates = _silent_candidates(session, settings, limit=OFFLINE_BATCH, lock=True)
    if not candidates:
        return 0
    heard = devices.hearing(session)
    moved = 0
    for device in candidates:
        assert device.last_heartbeat_at is not None
        silent_s = int(heard.silence(device.last_heartbeat_at).total_seconds())
        if silent_s < settings.heartbeat_interval_s * MISSED_HEARTBEATS_OFFLINE:
            continue
        reason = f"no heartbeat for {silent_s} s ({MISSED_HEARTBEATS_OFFLINE} missed)"
        state_machines.move(session, "device", device, DeviceState.OFFLINE, reason)
        session.add(
            FaultEvent(
                device_id=device.id,
                kind="missed_heartbeats",
                severity="warning",
                message=f"Agent silent: {reason}.",
            )
        )
        moved += 1
    return moved


BUSY_WHILE_IDLE_PCT = 30.0
BUSY_SWEEPS = 3  # consecutive sweeps (5 s apart) before a busy idle device is a fault
FAULT_REPEAT_S = 600  # the same GPU fault of a device is raised at most this often


def _device_of(reading: telemetry.GpuReading) -> uuid.UUID:
    return uuid.UUID(reading.labels["portal_device"])


def _count_faults(cache: Cache, readings: list[telemetry.GpuReading]) -> list[FaultEvent]:
    """Faults for the GPUs whose XID error or uncorrectable ECC count rose since the reading the portal kept:
    one read of the cache for every GPU, and writes only where a count changed."""
    stems = [f"{reading.labels['portal_device']}:{reading.labels['gpu']}" for reading in readings]
    keys = [(f"xid:{stem}", f"ecc:{stem}") for stem in stems]
    kept = cache.get_many([key for pair in keys for key in pair])
    changed: list[Operation] = []
    raised = []
    for number, (reading, (xid_key, ecc_key)) in enumerate(zip(readings, keys, strict=True)):
        seen_xid, seen_ecc = kept[2 * number], kept[2 * number + 1]
        gpu = reading.labels["gpu"]
        xid = int(reading.sample.get("xid_errors", 0) or 0)
        if xid and seen_xid != str(xid):
            changed.append(("set", xid_key, str(xid), 86_400))
            raised.append(
                FaultEvent(
                    device_id=_device_of(reading),
                    kind="gpu_xid",
                    severity="error",
                    message=f"GPU {gpu} reported XID error {xid}.",
                )
            )
        count, seen = int(reading.sample.get("ecc_uncorrected", 0) or 0), int(seen_ecc or 0)
        if count == seen:
            continue
        changed.append(("set", ecc_key, str(count), 86_400))
        if count > seen:  # lower: the driver reloaded and its count started over
            raised.append(
                FaultEvent(
                    device_id=_device_of(reading),
                    kind="gpu_ecc",
                    severity="error",
                    message=f"GPU {gpu} reported {count - seen} uncorrectable ECC error(s) "
                    f"({count} since its driver loaded): its memory is failing.",
                )
            )
    if changed:
        cache.batch(changed)
    return raised


def gpu_faults(session: Session, cache: Cache, settings: Settings) -> list[FaultEvent]:
    """Fault events for the latest GPU readings: an XID error or uncorrectable ECC count that rose, or GPUs
    busy for ``BUSY_SWEEPS`` sweeps in a row on a device that is ready but not hired.

    It reads every online GPU every few seconds: at swarm scale that is thousands, so the cache is read and
    written in a few round trips for all of them, never one per GPU."""
    readings = telemetry.online_gpu_readings(session, cache, settings)
    if not readings:
        return []
    raised = _count_faults(cache, readings)
    busiest: dict[uuid.UUID, float] = {}
    for reading in readings:
        device_id, util = _device_of(reading), float(reading.sample.get("util_pct", 0) or 0)
        busiest[device_id] = max(util, busiest.get(device_id, 0.0))
    ready = set(session.exec(select(Device.id).where(col(Device.state) == DeviceState.READY)).all())
    busy = [
        device_id for device_id, util in busiest.items() if device_id in ready and util > BUSY_WHILE_IDLE_PCT
    ]
    cache.delete(*(f"busy-idle:{device_id}" for device_id in busiest.keys() - set(busy)))
    sweeps = cache.batch([("incr", f"busy-idle:{device_id}", 60) for device_id in busy])
    for device_id, count in zip(busy, sweeps, strict=True):
        if count >= BUSY_SWEEPS and cache.add(f"busy-idle:{device_id}:raised", "1", FAULT_REPEAT_S):
            raised.append(
                FaultEvent(
                    device_id=device_id,
                    kind="gpu_busy_while_idle",
                    severity="warning",
                    message=f"GPUs at {busiest[device_id]:.0f}% while the device is not hired: another "
                    "workload is using them (double-renting?).",
                )
            )
    session.add_all(raised)
    return raised
