"""Fault monitoring: devices that stopped heartbeating go offline, with a fault event their owner sees."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlmodel import Session, col, select

from portal.config import Settings
from portal.models import Device, DeviceState, FaultEvent
from portal.models.base import utcnow
from portal.services import devices, state_machines
from portal.services.devices import MISSED_HEARTBEATS_OFFLINE

# Hired devices are left to cluster healing, which must also act on the cluster they serve.
WATCHED = (DeviceState.VERIFYING, DeviceState.READY)


def silent_devices(session: Session, settings: Settings) -> list[uuid.UUID]:
    """Idle devices whose agent has missed ``MISSED_HEARTBEATS_OFFLINE`` heartbeats in a row while the
    portal was hearing (its own deafness is no device's fault)."""
    silent_since = utcnow() - timedelta(seconds=settings.heartbeat_interval_s * MISSED_HEARTBEATS_OFFLINE)
    candidates = session.exec(
        select(Device).where(col(Device.state).in_(WATCHED), col(Device.last_heartbeat_at) < silent_since)
    ).all()
    if not candidates:
        return []
    heard = devices.hearing(session)
    return [device.id for device in candidates if not devices.is_online(device, settings, heard)]


def mark_offline(session: Session, settings: Settings, device_id: uuid.UUID) -> bool:
    """Move a silent device offline (it comes back with its next heartbeat); False when it spoke meanwhile."""
    device = session.get(Device, device_id, with_for_update=True)
    if device is None or device.state not in WATCHED or device.last_heartbeat_at is None:
        return False
    silent_s = int(devices.hearing(session).silence(device.last_heartbeat_at).total_seconds())
    if silent_s < settings.heartbeat_interval_s * MISSED_HEARTBEATS_OFFLINE:
        return False
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
    return True
