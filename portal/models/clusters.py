"""Customers' Ray clusters, their nodes, their log and their jobs."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

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


class ClusterState(StrEnum):
    PENDING = "pending"
    PROVISIONING = "provisioning"
    RUNNING = "running"
    DEGRADED = "degraded"
    TERMINATING = "terminating"
    TERMINATED = "terminated"
    FAILED = "failed"
    EXPIRED = "expired"


class NodeState(StrEnum):
    ASSIGNED = "assigned"
    STARTING = "starting"
    JOINED = "joined"
    LOST = "lost"
    RELEASED = "released"


class NodeRole(StrEnum):
    HEAD = "head"
    WORKER = "worker"


class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"


class Cluster(SQLModel, table=True):
    __tablename__ = "clusters"
    __table_args__ = (
        sa.Index("ix_clusters_owner_created", "owner_id", "created_at"),
        sa.Index("ix_clusters_state_expires", "state", "expires_at"),
    )

    id: uuid.UUID = id_field()
    owner_id: uuid.UUID = Field(foreign_key="users.id")
    name: str = Field(sa_type=sa.String(80))
    type: str = Field(default="ray", sa_type=sa.String(16))
    purpose: str = Field(default="general", sa_type=sa.String(16))
    state: str = state_field(ClusterState.PENDING, index=False)
    state_reason: str = Field(default="", sa_type=sa.String(500))
    gpu_model: str = Field(sa_type=sa.String(80))
    gpu_count: int
    countries: list[str] = json_field(list)
    connectivity_tier: str | None = Field(default=None, sa_type=sa.String(16))
    duration_hours: int
    price_per_gpu_hour_micro: int = money_field()
    min_workers: int | None = Field(default=None)
    max_workers: int | None = Field(default=None)
    ray_address: str | None = Field(default=None, sa_type=sa.String(255))
    dashboard_url: str | None = Field(default=None, sa_type=sa.String(255))
    # What a customer passes to ray.init() from outside: ray://host:port of the head's client server.
    client_address: str | None = Field(default=None, sa_type=sa.String(255))
    created_at: datetime = created_at_field()
    started_at: datetime | None = timestamp_field()
    expires_at: datetime | None = timestamp_field()
    ended_at: datetime | None = timestamp_field()


class ClusterNode(SQLModel, table=True):
    __tablename__ = "cluster_nodes"
    __table_args__ = (sa.Index("ix_cluster_nodes_device_state", "device_id", "state"),)

    id: uuid.UUID = id_field()
    cluster_id: uuid.UUID = Field(foreign_key="clusters.id", index=True)
    device_id: uuid.UUID = Field(foreign_key="devices.id")
    role: str = Field(sa_type=sa.String(8))
    state: str = state_field(NodeState.ASSIGNED, index=False)
    state_reason: str = Field(default="", sa_type=sa.String(500))
    gpu_count: int
    # The device's price per GPU-hour when it was placed: later price changes do not touch a running cluster.
    rate_micro: int = money_field()
    ray_node_id: str | None = Field(default=None, sa_type=sa.String(64))
    # The start command in flight; its result moves the node on.
    command_id: uuid.UUID | None = Field(default=None)
    created_at: datetime = created_at_field()
    started_at: datetime | None = timestamp_field()
    joined_at: datetime | None = timestamp_field()
    ended_at: datetime | None = timestamp_field()


class ClusterEvent(SQLModel, table=True):
    """One line of a cluster's provisioning and life log, shown to its owner."""

    __tablename__ = "cluster_events"
    __table_args__ = (sa.Index("ix_cluster_events_cluster_at", "cluster_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    cluster_id: uuid.UUID = Field(foreign_key="clusters.id")
    at: datetime = created_at_field()
    kind: str = Field(sa_type=sa.String(40))
    message: str = Field(sa_type=sa.String(2000))
    details: dict[str, Any] = json_field()


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (sa.Index("ix_jobs_cluster_created", "cluster_id", "created_at"),)

    id: uuid.UUID = id_field()
    cluster_id: uuid.UUID = Field(foreign_key="clusters.id")
    submitted_by: uuid.UUID = Field(foreign_key="users.id")
    entrypoint: str = Field(sa_type=sa.Text)
    runtime_env: dict[str, Any] = json_field()
    ray_submission_id: str | None = Field(default=None, sa_type=sa.String(80))
    status: str = state_field(JobStatus.PENDING, index=False)
    message: str = Field(default="", sa_type=sa.Text)
    created_at: datetime = created_at_field()
    started_at: datetime | None = timestamp_field()
    ended_at: datetime | None = timestamp_field()


class ClusterConnection(SQLModel, table=True):
    """A customer's own machine on their cluster's overlay network (``portal clusters connect``): one
    overlay address per cluster and customer, kept for the cluster's life."""

    __tablename__ = "cluster_connections"
    __table_args__ = (
        sa.UniqueConstraint("cluster_id", "user_id", name="uq_cluster_connections_cluster_user"),
    )

    id: uuid.UUID = id_field()
    cluster_id: uuid.UUID = Field(foreign_key="clusters.id", index=True)
    user_id: uuid.UUID = Field(foreign_key="users.id")
    overlay_ip: str = Field(sa_type=sa.String(45), unique=True)
    created_at: datetime = created_at_field()
    expires_at: datetime | None = timestamp_field()
