"""The network over time: a snapshot a minute of GPUs online and hired (and their utilization) by GPU model
and country, for the public explorer's charts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import case, delete, func
from sqlmodel import Session, col, select

from portal.config import Settings
from portal.models import Device, DeviceState, GpuSample, NetworkSnapshot
from portal.models.base import utcnow
from portal.services.providers.devices import MISSED_HEARTBEATS_OFFLINE

RETENTION = timedelta(days=30)
UTIL_WINDOW = timedelta(minutes=2)
GROUPINGS = ("gpu_model", "country")


def take_snapshot(session: Session, settings: Settings) -> int:
    """Record the network now; returns the number of (model, country) groups recorded."""
    now = utcnow()
    online_since = now - timedelta(seconds=settings.heartbeat_interval_s * MISSED_HEARTBEATS_OFFLINE)
    groups = session.exec(
        select(
            Device.gpu_model,
            Device.country,
            func.sum(Device.gpu_count),
            func.sum(case((Device.state == DeviceState.HIRED, Device.gpu_count), else_=0)),
        )
        .where(col(Device.last_heartbeat_at) > online_since, Device.gpu_count > 0)
        .group_by(Device.gpu_model, Device.country)
    ).all()
    util = dict(
        ((model, country), average)
        for model, country, average in session.exec(
            select(Device.gpu_model, Device.country, func.avg(GpuSample.util_pct))
            .join(Device, col(Device.id) == GpuSample.device_id)
            .where(GpuSample.at > now - UTIL_WINDOW)
            .group_by(Device.gpu_model, Device.country)
        ).all()
    )
    session.add_all(
        NetworkSnapshot(
            at=now,
            gpu_model=model,
            country=country,
            gpus_online=int(online or 0),
            gpus_hired=int(hired or 0),
            util_avg=None if util.get((model, country)) is None else round(float(util[(model, country)]), 2),
        )
        for model, country, online, hired in groups
    )
    return len(groups)


@dataclass
class Trend:
    """One group's history (a GPU model, or a country)."""

    key: str
    times: list[datetime] = field(default_factory=list)
    online: list[int] = field(default_factory=list)
    hired: list[int] = field(default_factory=list)
    util: list[float | None] = field(default_factory=list)


def history(session: Session, minutes: int, by: str = "gpu_model") -> list[Trend]:
    """Snapshots of the last ``minutes``, summed per GPU model or per country, oldest first."""
    if by not in GROUPINGS:
        raise ValueError(f"group by one of {GROUPINGS}")
    key = getattr(NetworkSnapshot, by)
    rows = session.exec(
        select(
            key,
            NetworkSnapshot.at,
            func.sum(NetworkSnapshot.gpus_online),
            func.sum(NetworkSnapshot.gpus_hired),
            func.avg(NetworkSnapshot.util_avg),
        )
        .where(NetworkSnapshot.at >= utcnow() - timedelta(minutes=minutes))
        .group_by(key, NetworkSnapshot.at)
        .order_by(key, NetworkSnapshot.at)
    ).all()
    trends: dict[str, Trend] = {}
    for name, at, online, hired, util in rows:
        trend = trends.setdefault(name, Trend(name))
        trend.times.append(at)
        trend.online.append(int(online))
        trend.hired.append(int(hired))
        trend.util.append(None if util is None else round(float(util), 2))
    return sorted(trends.values(), key=lambda t: -(t.online[-1] if t.online else 0))


def prune(session: Session) -> int:
    return session.execute(
        delete(NetworkSnapshot).where(col(NetworkSnapshot.at) < utcnow() - RETENTION)
    ).rowcount
