"""What happened: fault events, the audit log and every state transition."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from portal.models.base import UTCDateTime, created_at_field, json_field, timestamp_field


class FaultEvent(SQLModel, table=True):
    __tablename__ = "fault_events"
    __table_args__ = (
        sa.Index("ix_fault_events_device_at", "device_id", "at"),
        sa.Index("ix_fault_events_cluster_at", "cluster_id", "at"),
        sa.Index("ix_fault_events_kind_at", "kind", "at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = created_at_field()
    device_id: uuid.UUID | None = Field(default=None, foreign_key="devices.id")
    cluster_id: uuid.UUID | None = Field(default=None, foreign_key="clusters.id")
    kind: str = Field(sa_type=sa.String(40))
    severity: str = Field(default="warning", sa_type=sa.String(16))
    message: str = Field(sa_type=sa.String(2000))
    details: dict[str, Any] = json_field()
    resolved_at: datetime | None = timestamp_field()


class AuditLog(SQLModel, table=True):
    """Who did what to which target, from where, when, and whether it worked."""

    __tablename__ = "audit_log"
    __table_args__ = (
        sa.Index("ix_audit_log_at", "at"),
        sa.Index("ix_audit_log_actor_at", "actor_id", "at"),
        sa.Index("ix_audit_log_action_at", "action", "at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = created_at_field()
    actor_kind: str = Field(sa_type=sa.String(16))
    actor_id: str | None = Field(default=None, sa_type=sa.String(64))
    action: str = Field(sa_type=sa.String(64))
    target_type: str | None = Field(default=None, sa_type=sa.String(32))
    target_id: str | None = Field(default=None, sa_type=sa.String(64))
    ip: str | None = Field(default=None, sa_type=sa.String(64))
    outcome: str = Field(default="success", sa_type=sa.String(16))
    request_id: str | None = Field(default=None, sa_type=sa.String(64))
    details: dict[str, Any] = json_field()


class StateTransition(SQLModel, table=True):
    """Every state change of a device, cluster, node or payout, with its reason."""

    __tablename__ = "state_transitions"
    __table_args__ = (sa.Index("ix_state_transitions_entity", "entity_type", "entity_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    entity_type: str = Field(sa_type=sa.String(16))
    entity_id: str = Field(sa_type=sa.String(64))
    from_state: str | None = Field(default=None, sa_type=sa.String(24))
    to_state: str = Field(sa_type=sa.String(24))
    reason: str = Field(default="", sa_type=sa.String(500))
    at: datetime = created_at_field()


class GpuSample(SQLModel, table=True):
    """One GPU's reading from one heartbeat: the portal's own recent-sample store, used when no Prometheus
    is configured (bounded by ``PORTAL_RETENTION_GPU_SAMPLES_DAYS``, services/retention.py)."""

    __tablename__ = "gpu_samples"
    __table_args__ = (sa.Index("ix_gpu_samples_device_at", "device_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    device_id: uuid.UUID = Field(foreign_key="devices.id", ondelete="CASCADE")
    at: datetime = Field(sa_type=UTCDateTime)
    gpu_index: int
    util_pct: float
    mem_used_mb: float
    temp_c: float
    power_w: float


class NetworkSnapshot(SQLModel, table=True):
    """The network once a minute, by GPU model and country: for the explorer's charts over time."""

    __tablename__ = "network_snapshots"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_type=UTCDateTime, index=True)
    gpu_model: str = Field(sa_type=sa.String(80))
    country: str = Field(sa_type=sa.String(2))
    gpus_online: int
    gpus_hired: int
    # Average GPU utilization over the last minutes' samples (None where no samples are stored).
    util_avg: float | None = Field(default=None)


class HearingGap(SQLModel, table=True):
    """A time the portal heard no agent at all (its own restart or outage): silence within it is the
    portal's, not the devices', and never makes a device offline or a node lost."""

    __tablename__ = "hearing_gaps"

    id: int | None = Field(default=None, primary_key=True)
    started_at: datetime = Field(sa_type=UTCDateTime)
    ended_at: datetime = Field(sa_type=UTCDateTime, index=True)
