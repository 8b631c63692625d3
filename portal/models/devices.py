"""Providers' machines and their GPUs."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from portal.models.base import (
    created_at_field,
    id_field,
    json_field,
    money_field,
    state_field,
    timestamp_field,
)


class DeviceState(StrEnum):
    REGISTERED = "registered"
    VERIFYING = "verifying"
    READY = "ready"
    HIRED = "hired"
    OFFLINE = "offline"
    BLOCKED = "blocked"
    UNSUPPORTED = "unsupported"


class MeshState(StrEnum):
    """Where a device stands on the overlay (``services.mesh``)."""

    NONE = "none"  # never certified
    CERTIFIED = "certified"  # holds a certificate the portal signed; its tunnels are not reported yet
    # As its agent reports in heartbeats (its Nebula's log): a lighthouse not reached yet, reached, or Nebula
    # not running.
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DOWN = "down"


class ConnectivityTier(StrEnum):
    ULTRA_HIGH = "ultra_high"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class Device(SQLModel, table=True):
    __tablename__ = "devices"
    __table_args__ = (
        sa.Index("ix_devices_market", "state", "country", "connectivity_tier"),
        # ix_devices_placement: after the class, as it needs the columns' sort order.
    )

    id: UUID = id_field()
    owner_id: UUID = Field(foreign_key="users.id", index=True)
    name: str = Field(sa_type=sa.String(80))
    country: str = Field(sa_type=sa.String(2))
    connectivity_tier: str = Field(default=ConnectivityTier.MEDIUM, sa_type=sa.String(16))
    state: str = state_field(DeviceState.REGISTERED, index=False)
    state_reason: str = Field(default="", sa_type=sa.String(500))
    # A keyed hash of the device token, looked up on every worker request.
    token_hash: str = Field(sa_type=sa.String(128), unique=True, index=True)
    token_prefix: str = Field(sa_type=sa.String(16))
    price_per_gpu_hour_micro: int | None = money_field(default=None, nullable=True)
    # What a GPU-hour costs a customer: the provider's price, or the model's list price when it set none.
    hourly_price_micro: int = money_field()
    simulated: bool = Field(default=False)
    # What placement filters on, kept from the GPUs the agent reports (one model per device).
    gpu_model: str = Field(default="", sa_type=sa.String(80))
    gpu_count: int = Field(default=0)
    agent_version: str = Field(default="", sa_type=sa.String(40))
    hostname: str = Field(default="", sa_type=sa.String(255))
    os: str = Field(default="", sa_type=sa.String(120))
    cpu_count: int = Field(default=0)
    ram_mb: int = Field(default=0)
    reliability: float = Field(default=1.0)
    verified_tflops: float | None = Field(default=None)
    verified_at: datetime | None = timestamp_field()
    # Not indexed: each flush updates it for every device that beat, and with no index on it PostgreSQL
    # updates the row in place (migration 0005).
    last_heartbeat_at: datetime | None = timestamp_field()
    ray_state: str = Field(default="", sa_type=sa.String(24))
    ray_node_id: str | None = Field(default=None, sa_type=sa.String(64))
    # The host the portal calls for this device (its Ray head, its /metrics): the peer address of the
    # agent's registration. Hosts an agent reports elsewhere are checked against it (services/node_addresses).
    address: str | None = Field(default=None, sa_type=sa.String(45))
    # The device's node on the overlay, allocated once by the portal (services/mesh/addresses) and kept for
    # every certificate after; unique, so no two devices ever hold one address.
    overlay_ip: str | None = Field(default=None, sa_type=sa.String(45), unique=True, index=True)
    mesh_state: str = Field(default=MeshState.NONE, sa_type=sa.String(16))
    # Whether the agent reaches its peers through a relay (hole punching failed); None until it reports.
    mesh_relayed: bool | None = Field(default=None)
    mesh_certificate_expires_at: datetime | None = timestamp_field()
    # Where the agent serves its own /metrics, for Prometheus service discovery.
    metrics_url: str | None = Field(default=None, sa_type=sa.String(255))
    verification_failures: int = Field(default=0)
    # How customers' code runs there, as the agent reports it: "container" (a container per Ray node, wiped
    # after the rental) or "none" (on the host: development only, never hired in production).
    isolation: str = Field(default="none", sa_type=sa.String(16))
    container_engine: str = Field(default="", sa_type=sa.String(16))
    worker_image: str = Field(default="", sa_type=sa.String(255))
    # When the agent last confirmed a rental's wipe (container, scratch and processes gone).
    last_wipe_at: datetime | None = timestamp_field()
    created_at: datetime = created_at_field()


# Placement reads ready devices of one model in its order (cheapest, then most reliable, most GPUs, id): the
# index holds that whole order, so the candidates query reads devices in it and stops at the first 64 that
# fit. Ordered by price alone, every device tied at the cheapest price was read and sorted: all of a model's
# devices at its list price (1 s at 333,000; migration 0011). The heartbeat flush writes none of these
# columns, so its updates stay in place (migration 0005).
_devices = Device.__table__.c  # type: ignore[attr-defined]
sa.Index(
    "ix_devices_placement",
    _devices.state,
    _devices.gpu_model,
    _devices.hourly_price_micro,
    _devices.reliability.desc(),
    _devices.gpu_count.desc(),
    _devices.id,
)


class Gpu(SQLModel, table=True):
    __tablename__ = "gpus"
    __table_args__ = (sa.UniqueConstraint("device_id", "index", name="uq_gpus_device_index"),)

    id: UUID = id_field()
    device_id: UUID = Field(foreign_key="devices.id", index=True, ondelete="CASCADE")
    index: int
    uuid: str = Field(sa_type=sa.String(80))
    model: str = Field(sa_type=sa.String(80), index=True)
    memory_mb: int
    driver: str = Field(default="", sa_type=sa.String(40))
    cuda: str = Field(default="", sa_type=sa.String(20))
    # Simulated GPUs are for development and tests; the flag travels to every API and page.
    simulated: bool = Field(default=False)


class CommandState(StrEnum):
    QUEUED = "queued"
    DELIVERED = "delivered"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"


class DeviceCommand(SQLModel, table=True):
    """An order for a worker agent (start or stop a Ray node, verify); delivered by long-poll or heartbeat."""

    __tablename__ = "device_commands"
    __table_args__ = (
        sa.Index("ix_device_commands_device_state", "device_id", "state", "created_at"),
        # Retention deletes answered commands oldest first (services/retention.py, migration 0012).
        sa.Index("ix_device_commands_completed_at", "completed_at"),
    )

    id: UUID = id_field()
    device_id: UUID = Field(foreign_key="devices.id", ondelete="CASCADE")
    kind: str = Field(sa_type=sa.String(32))
    payload: dict[str, Any] = json_field()
    state: str = state_field(CommandState.QUEUED, index=False)
    created_at: datetime = created_at_field()
    delivered_at: datetime | None = timestamp_field()
    completed_at: datetime | None = timestamp_field()
    # Deliveries so far: a command an agent took but never answered is offered again, up to a limit.
    attempts: int = Field(default=0)
    result_detail: str = Field(default="", sa_type=sa.String(2000))
