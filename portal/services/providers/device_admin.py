"""What admins do to devices: look across every provider's devices and faults, block a device (it leaves the
market, and a cluster it serves replaces it) and unblock it (it proves its compute again first)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import func, or_
from sqlmodel import Session, col, select

from portal.models import Device, DeviceState, FaultEvent, User
from portal.security.principal import RequestOrigin
from portal.services import audit, state_machines
from portal.services.errors import Conflict, NotFound
from portal.services.followups import FollowUps
from portal.services.mesh import revocations
from portal.services.providers import commands

BLOCKED_PREFIX = "blocked by an admin: "


def search_devices(
    session: Session, *, state: str | None, text: str | None, limit: int, offset: int
) -> tuple[list[tuple[Device, str | None]], int]:
    """Every provider's devices with their owner's email, newest first; ``text`` matches name or email."""
    query = select(Device, User.email).join(User, col(User.id) == Device.owner_id)
    if state is not None:
        query = query.where(Device.state == state)
    if text:
        pattern = f"%{text.lower()}%"
        query = query.where(or_(func.lower(Device.name).like(pattern), func.lower(User.email).like(pattern)))
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(query.order_by(col(Device.created_at).desc()).limit(limit).offset(offset)).all()
    return [(device, email) for device, email in rows], total


def _device(session: Session, device_id: uuid.UUID) -> Device:
    device = session.get(Device, device_id, with_for_update=True)
    if device is None:
        raise NotFound("No such device.", code="device_not_found")
    return device


def block(
    session: Session,
    followups: FollowUps,
    device_id: uuid.UUID,
    reason: str,
    *,
    admin_id: uuid.UUID,
    origin: RequestOrigin | None = None,
) -> Device:
    """Off the market with the reason shown to its owner; a cluster it serves loses it and heals now, not
    at the reconciler's next pass. Audited with the adapter's origin."""
    device = _device(session, device_id)
    if device.state == DeviceState.BLOCKED:
        raise Conflict("The device is blocked already.", code="invalid_state")
    state_machines.move(session, "device", device, DeviceState.BLOCKED, BLOCKED_PREFIX + reason)
    revocations.revoke_device(session, device.id)  # off the overlay too, once the lighthouses re-read
    session.add(
        FaultEvent(
            device_id=device.id,
            kind="blocked",
            severity="error",
            message=f"Blocked by an admin: {reason}"[:2000],
        )
    )
    _audit(session, "device.block", device, admin_id, origin, {"reason": reason})
    session.commit()
    followups.reconcile_clusters()
    return device


def _audit(
    session: Session,
    action: str,
    device: Device,
    admin_id: uuid.UUID,
    origin: RequestOrigin | None,
    details: dict,
) -> None:
    audit.record(
        session,
        action,
        actor_id=f"user:{admin_id}",
        origin=origin,
        target_type="device",
        target_id=device.id,
        details=details,
    )


def unblock(
    session: Session,
    followups: FollowUps,
    device_id: uuid.UUID,
    *,
    admin_id: uuid.UUID,
    origin: RequestOrigin | None = None,
) -> Device:
    """Back to ``registered``; an online device is asked for a fresh proof of compute at once (its agent
    woken once that is committed). Audited with the adapter's origin."""
    device = _device(session, device_id)
    if device.state != DeviceState.BLOCKED:
        raise Conflict(
            f"Only a blocked device can be unblocked; this one is {device.state}.", code="invalid_state"
        )
    state_machines.move(session, "device", device, DeviceState.REGISTERED, "unblocked by an admin")
    if device.last_heartbeat_at is not None and device.gpu_count:
        state_machines.move(
            session, "device", device, DeviceState.VERIFYING, "unblocked: proving its compute"
        )
        commands.enqueue(session, device, "verify", {})
    _audit(session, "device.unblock", device, admin_id, origin, {})
    session.commit()
    followups.wake_agent(device.id)
    return device


def search_faults(
    session: Session,
    *,
    device_id: uuid.UUID | None = None,
    cluster_id: uuid.UUID | None = None,
    kind: str | None = None,
    severity: str | None = None,
    since: datetime | None = None,
    limit: int,
    offset: int,
) -> tuple[list[tuple[FaultEvent, str | None]], int]:
    """Fault events with their device's name, newest first."""
    query = select(FaultEvent, Device.name).join(Device, col(Device.id) == FaultEvent.device_id, isouter=True)
    for column, value in (
        (FaultEvent.device_id, device_id),
        (FaultEvent.cluster_id, cluster_id),
        (FaultEvent.kind, kind),
        (FaultEvent.severity, severity),
    ):
        if value is not None:
            query = query.where(column == value)
    if since is not None:
        query = query.where(FaultEvent.at >= since)
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(query.order_by(col(FaultEvent.id).desc()).limit(limit).offset(offset)).all()
    return [(fault, name) for fault, name in rows], total
