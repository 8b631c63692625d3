"""Fault monitoring: devices that stopped heartbeating go offline, GPUs report XID errors, GPUs busy on a
device nobody hired (a sign of double-renting): each a fault event its owner, admins and (for a hired
device) the customer see."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlmodel import Session, col, select

from portal.cache import Cache
from portal.config import Settings
from portal.models import Device, DeviceState, FaultEvent
from portal.models.base import utcnow
from portal.services import devices, state_machines, telemetry
from portal.services.devices import MISSED_HEARTBEATS_OFFLINE

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


def _ecc_fault(cache: Cache, device_id: uuid.UUID, reading: telemetry.GpuReading) -> FaultEvent | None:
    """A fault when the GPU's uncorrectable ECC count rose since the last reading the portal kept."""
    count = int(reading.sample.get("ecc_uncorrected", 0) or 0)
    key = f"ecc:{device_id}:{reading.labels['gpu']}"
    seen = int(cache.get(key) or 0)
    if count == seen:
        return None
    cache.set(key, str(count), ttl_s=86_400)
    if count < seen:
        return None  # the driver reloaded and its count started over
    return FaultEvent(
        device_id=device_id,
        kind="gpu_ecc",
        severity="error",
        message=f"GPU {reading.labels['gpu']} reported {count - seen} uncorrectable ECC error(s) "
        f"({count} since its driver loaded): its memory is failing.",
    )


def gpu_faults(session: Session, cache: Cache, settings: Settings) -> list[FaultEvent]:
    """Fault events for the latest GPU readings: an XID error count that rose, or GPUs busy for
    ``BUSY_SWEEPS`` sweeps in a row on a device that is ready but not hired."""
    readings = telemetry.online_gpu_readings(session, cache, settings)
    by_device: dict[uuid.UUID, list[telemetry.GpuReading]] = {}
    for reading in readings:
        by_device.setdefault(uuid.UUID(reading.labels["portal_device"]), []).append(reading)
    if not by_device:
        return []
    states = dict(
        session.exec(select(Device.id, Device.state).where(col(Device.id).in_(list(by_device)))).all()
    )
    raised = []
    for device_id, found in by_device.items():
        for reading in found:
            xid = int(reading.sample.get("xid_errors", 0) or 0)
            key = f"xid:{device_id}:{reading.labels['gpu']}"
            if xid and cache.get(key) != str(xid):
                cache.set(key, str(xid), ttl_s=86_400)
                raised.append(
                    FaultEvent(
                        device_id=device_id,
                        kind="gpu_xid",
                        severity="error",
                        message=f"GPU {reading.labels['gpu']} reported XID error {xid}.",
                    )
                )
            ecc_fault = _ecc_fault(cache, device_id, reading)
            if ecc_fault is not None:
                raised.append(ecc_fault)
        busiest = max(float(r.sample.get("util_pct", 0) or 0) for r in found)
        counter = f"busy-idle:{device_id}"
        if states.get(device_id) != DeviceState.READY or busiest <= BUSY_WHILE_IDLE_PCT:
            cache.delete(counter)
            continue
        if cache.incr(counter, ttl_s=60) >= BUSY_SWEEPS and cache.add(
            f"{counter}:raised", "1", FAULT_REPEAT_S
        ):
            raised.append(
                FaultEvent(
                    device_id=device_id,
                    kind="gpu_busy_while_idle",
                    severity="warning",
                    message=f"GPUs at {busiest:.0f}% while the device is not hired: another workload "
                    "is using them (double-renting?).",
                )
            )
    session.add_all(raised)
    return raised
