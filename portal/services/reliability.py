"""A device's reliability score: its uptime over the last 30 days, lowered by each serious fault.

score = uptime over the window (0..1) x 0.9 ^ (error faults in the window: lost nodes, failed
verifications, failed node starts, blocks), and 0 for a device that never proved its compute. Placement
prefers reliable devices at equal price; the marketplace filters on it; the device page explains it.
"""

from __future__ import annotations

import statistics
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import bindparam, func, update
from sqlmodel import Session, col, select

from portal.models import Device, DeviceState, FaultEvent
from portal.models.base import utcnow
from portal.services import telemetry

WINDOW_DAYS = 30
FAULT_FACTOR = 0.9
SERIOUS = ("error", "critical")


@dataclass(frozen=True)
class Reliability:
    score: float
    uptime: float  # 0..1 over the window
    faults: int
    verified: bool

    def explained(self) -> str:
        if not self.verified:
            return "0.00: it has not proved its compute yet."
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
    return Reliability(score, uptime, int(faults), verified)


def changed_scores(session: Session) -> dict[uuid.UUID, float]:
    """Every device's score where it differs from the stored one (read only: the writes are short)."""
    changed = {}
    for device in session.exec(select(Device).where(Device.state != DeviceState.UNSUPPORTED)).all():
        score = assess(session, device).score
        if abs(score - device.reliability) >= 0.0001:
            changed[device.id] = score
    return changed


def store_scores(session: Session, scores: dict[uuid.UUID, float]) -> None:
    if scores:
        session.execute(
            update(Device.__table__)  # type: ignore[arg-type]
            .where(Device.__table__.c.id == bindparam("device"))  # type: ignore[attr-defined]
            .values(reliability=bindparam("score")),
            [{"device": device_id, "score": score} for device_id, score in scores.items()],
        )
