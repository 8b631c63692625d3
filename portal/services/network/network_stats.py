"""Live counts of the network for the landing page: devices, GPUs and clusters by state."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func
from sqlmodel import Session, select

from portal.models import Cluster, ClusterState, Device, DeviceState, Gpu
from portal.models.base import utcnow

ONLINE_STATES = (DeviceState.VERIFYING, DeviceState.READY, DeviceState.HIRED)
ACTIVE_CLUSTER_STATES = (ClusterState.PROVISIONING, ClusterState.RUNNING, ClusterState.DEGRADED)


@dataclass(frozen=True)
class ModelCount:
    model: str
    available: int
    hired: int
    simulated: bool


@dataclass(frozen=True)
class NetworkCounts:
    devices_online: int
    gpus_available: int
    gpus_hired: int
    gpus_online: int
    simulated_gpus_online: int
    clusters_running: int
    by_model: tuple[ModelCount, ...]


def network_counts(session: Session, *, heartbeat_within: timedelta = timedelta(seconds=15)) -> NetworkCounts:
    """Devices count as online while in an online state and heartbeating within ``heartbeat_within``, so an
    agent that died shows at once, before any sweep marks its device offline."""
    online = (
        Device.state.in_(ONLINE_STATES),  # type: ignore[attr-defined]
        Device.last_heartbeat_at >= utcnow() - heartbeat_within,  # type: ignore[operator]
    )
    devices_online = session.exec(select(func.count()).select_from(Device).where(*online)).one()
    rows = session.exec(
        select(Gpu.model, Device.state, Gpu.simulated, func.count())
        .join(Device, Device.id == Gpu.device_id)
        .where(*online)
        .group_by(Gpu.model, Device.state, Gpu.simulated)
    ).all()
    models: dict[tuple[str, bool], dict[str, int]] = {}
    for model, state, simulated, count in rows:
        tally = models.setdefault((model, simulated), {"available": 0, "hired": 0, "online": 0})
        tally["online"] += count
        if state == DeviceState.READY:
            tally["available"] += count
        elif state == DeviceState.HIRED:
            tally["hired"] += count
    clusters_running = session.exec(
        select(func.count()).select_from(Cluster).where(Cluster.state.in_(ACTIVE_CLUSTER_STATES))  # type: ignore[attr-defined]
    ).one()
    return NetworkCounts(
        devices_online=devices_online,
        gpus_available=sum(t["available"] for t in models.values()),
        gpus_hired=sum(t["hired"] for t in models.values()),
        gpus_online=sum(t["online"] for t in models.values()),
        simulated_gpus_online=sum(t["online"] for (_, simulated), t in models.items() if simulated),
        clusters_running=clusters_running,
        by_model=tuple(
            ModelCount(model=model, available=t["available"], hired=t["hired"], simulated=simulated)
            for (model, simulated), t in sorted(
                models.items(), key=lambda item: (-item[1]["online"], item[0])
            )
        ),
    )
