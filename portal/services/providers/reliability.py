"""A device's reliability score: its uptime over the last 30 days, lowered by each serious fault.

score = uptime over the window (0..1) x 0.9 ^ (error faults in the window: lost nodes, failed
verifications, failed node starts, blocks), and 0 for a device that never proved its compute. Placement
prefers reliable devices at equal price; the marketplace filters on it; the device page explains it.
"""

from __future__ import annotations

import statistics
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, func, update
from sqlmodel import Session, col, select

from portal.models import Device, DeviceState, FaultEvent, StateTransition
from portal.models.base import utcnow
from portal.services.providers import telemetry

WINDOW_DAYS = 30
FAULT_FACTOR = 0.9
SERIOUS = ("error", "critical")
# Younger than this, a device's score says little (an hour of verifying reads as a bad uptime): people are
# shown "new" instead.
NEW_FOR = timedelta(days=1)


def is_new(created_at: datetime) -> bool:
    return created_at > utcnow() - NEW_FOR


@dataclass(frozen=True)
class Reliability:
    score: float
    uptime: float  # 0..1 over the window
    faults: int
    verified: bool

    new: bool = False

    def explained(self) -> str:
        if not self.verified:
            return "0.00: it has not proved its compute yet."
        if self.new:
            return "New: under a day of history, too little to judge yet."
        faults = f"{self.faults} serious fault{'s' if self.faults != 1 else ''}"
        return (
            f"{self.score:.2f} = {self.uptime:.0%} uptime over {WINDOW_DAYS} days x {FAULT_FACTOR} per fault "
            f"({faults} in that time)."
        )


def assess(session: Session, device: Device) -> Reliability:
    days = telemetry.daily_uptime(session, device, WINDOW_DAYS)
    uptime = statistics.fmean(pct for _, pct in days) / 100 if days else 0.0
    faults = session.exec(
        select(func.count()).where(
            FaultEvent.device_id == device.id,
            col(FaultEvent.severity).in_(SERIOUS),
            FaultEvent.at >= utcnow() - timedelta(days=WINDOW_DAYS),
        )
    ).one()
    verified = device.verified_at is not None
    score = round(uptime * FAULT_FACTOR**faults, 4) if verified else 0.0
    return Reliability(score, uptime, int(faults), verified, new=is_new(device.created_at))


def changed_scores(session: Session) -> dict[uuid.UUID, float]:
    """Every device's score where it differs from the stored one (read only: the writes are short).

    The same score as ``assess``, for all devices from three queries: the devices, their state changes in
    the window with the last one before it, and their serious faults counted per device."""
    now = utcnow()
    window = (now - timedelta(days=WINDOW_DAYS)).replace(hour=0, minute=0, second=0, microsecond=0)
    found = session.exec(
        select(Device.id, Device.created_at, Device.verified_at, Device.reliability).where(
            Device.state != DeviceState.UNSUPPORTED
        )
    ).all()
    timelines = _timelines(session, window)
    faults = dict(
        session.exec(
            select(FaultEvent.device_id, func.count())
            .where(col(FaultEvent.severity).in_(SERIOUS), FaultEvent.at >= now - timedelta(days=WINDOW_DAYS))
            .group_by(col(FaultEvent.device_id))
        ).all()
    )
    changed = {}
    for device_id, created_at, verified_at, stored in found:
        score = 0.0
        if verified_at is not None:
            timeline = [(created_at, str(DeviceState.REGISTERED)), *timelines.get(str(device_id), [])]
            days = telemetry.uptime_by_day(timeline, max(created_at, window), now)
            uptime = statistics.fmean(pct for _, pct in days) / 100 if days else 0.0
            score = round(uptime * FAULT_FACTOR ** faults.get(device_id, 0), 4)
        if abs(score - stored) >= 0.0001:
            changed[device_id] = score
    return changed


def _timelines(session: Session, window: datetime) -> dict[str, list[tuple[datetime, str]]]:
    """Each device's state changes since ``window``, after the last change before it (the state the
    window opens in), in time order."""
    ranked = (
        select(
            StateTransition.entity_id,
            StateTransition.at,
            StateTransition.to_state,
            func.row_number()
            .over(partition_by=StateTransition.entity_id, order_by=col(StateTransition.at).desc())
            .label("newest_first"),
        )
        .where(StateTransition.entity_type == "device", StateTransition.at < window)
        .subquery()
    )
    opening = session.exec(
        select(ranked.c.entity_id, ranked.c.at, ranked.c.to_state).where(ranked.c.newest_first == 1)
    ).all()
    inside = session.exec(
        select(StateTransition.entity_id, StateTransition.at, StateTransition.to_state)
        .where(StateTransition.entity_type == "device", StateTransition.at >= window)
        .order_by(col(StateTransition.at))
    ).all()
    timelines: dict[str, list[tuple[datetime, str]]] = {}
    for entity_id, at, state in [*opening, *inside]:
        timelines.setdefault(entity_id, []).append((at, str(state)))
    return timelines


def store_scores(session: Session, scores: dict[uuid.UUID, float]) -> None:
    if scores:
        session.execute(
            update(Device.__table__)  # type: ignore[arg-type]
            .where(Device.__table__.c.id == bindparam("device"))  # type: ignore[attr-defined]
            .values(reliability=bindparam("score")),
            [{"device": device_id, "score": score} for device_id, score in scores.items()],
        )
