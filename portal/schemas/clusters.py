"""The marketplace, clusters and jobs on the wire."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from portal.models import ConnectivityTier
from portal.schemas.common import DisplayName

Country = Annotated[str, Field(min_length=2, max_length=2, examples=["DE"])]


class ClusterSpecIn(BaseModel):
    """What to rent; the same shape deploys (with a name) and quotes."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["ray"] = "ray"
    purpose: Literal["general", "train", "inference"] = "general"
    gpu_model: Annotated[str, Field(min_length=1, max_length=80, examples=["H100-80GB"])]
    gpu_count: Annotated[int, Field(ge=1, le=64)]
    countries: Annotated[list[Country], Field(max_length=50)] = []
    connectivity_tier: ConnectivityTier | None = Field(
        default=None, description="The slowest tier accepted (ultra_high > high > medium > low)."
    )
    duration_hours: Annotated[int, Field(ge=1, le=720)] = 1
    max_price_per_gpu_hour_micro: Annotated[int | None, Field(gt=0, le=1_000_000_000)] = None
    min_reliability: Annotated[float, Field(ge=0, le=1)] = 0.0
    min_workers: Annotated[int | None, Field(ge=0, le=64)] = None
    max_workers: Annotated[int | None, Field(ge=0, le=64)] = None


class ClusterIn(ClusterSpecIn):
    name: DisplayName


class QuoteLineOut(BaseModel):
    gpu_model: str
    country: str
    connectivity_tier: str
    price_per_gpu_hour_micro: int
    devices: int
    gpus: int
    per_hour_micro: int
    subtotal_micro: int


class QuoteOut(BaseModel):
    available: bool
    price_per_hour_micro: int
    total_micro: int
    fee_micro: int
    breakdown: list[QuoteLineOut]
    reason: str
    alternatives: list[dict[str, Any]]


class OfferOut(BaseModel):
    gpu_model: str
    vram_mb: int
    country: str
    connectivity_tier: str
    devices: int
    gpus: int
    largest_device_gpus: int
    min_price_per_gpu_hour_micro: int
    max_price_per_gpu_hour_micro: int
    reliability: float
    simulated: bool


class NodeOut(BaseModel):
    id: uuid.UUID
    device_id: uuid.UUID
    device_name: str
    role: str
    state: str
    state_reason: str
    gpu_count: int
    rate_micro: int
    ray_node_id: str | None
    simulated: bool
    joined_at: datetime | None
    ended_at: datetime | None


class EventOut(BaseModel):
    id: int
    at: datetime
    kind: str
    message: str


class NetworkOut(BaseModel):
    overlay: bool  # the cluster's nodes are on the portal's overlay (PORTAL_MESH=nebula)
    head_overlay_ip: str | None = None  # reachable after `portal clusters connect`


class ClusterOut(BaseModel):
    id: uuid.UUID
    owner_id: uuid.UUID
    name: str
    type: str
    purpose: str
    state: str
    state_reason: str
    gpu_model: str
    gpu_count: int
    countries: list[str]
    connectivity_tier: str | None
    duration_hours: int
    price_per_gpu_hour_micro: int
    ray_address: str | None
    client_address: str | None
    dashboard_url: str | None  # the portal's proxy to the head's dashboard, while the cluster runs
    network: NetworkOut
    created_at: datetime
    started_at: datetime | None
    expires_at: datetime | None
    ended_at: datetime | None
    min_workers: int | None = None  # autoscaling bounds, when the cluster autoscales
    max_workers: int | None = None
    spent_micro: int
    escrow_micro: int
    simulated: bool
    nodes: list[NodeOut]
    events: list[EventOut] = []


class ExtendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hours: Annotated[int, Field(ge=1, le=720)]


class JobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entrypoint: Annotated[
        str, Field(min_length=1, max_length=10_000, examples=["python -c 'import ray; ray.init()'"])
    ]
    runtime_env: dict[str, Any] | None = None


class JobOut(BaseModel):
    id: uuid.UUID
    cluster_id: uuid.UUID
    entrypoint: str
    runtime_env: dict[str, Any]
    ray_submission_id: str | None
    status: str
    message: str
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None


class JobLogsOut(BaseModel):
    job_id: uuid.UUID
    status: str
    logs: str


class SeriesOut(BaseModel):
    device_id: uuid.UUID
    device_name: str
    gpu_index: int
    label: str
    points: list[tuple[datetime, float]]


class MetricOut(BaseModel):
    unit: str
    dcgm_name: str
    series: list[SeriesOut]


class MetricsOut(BaseModel):
    minutes: int
    step_s: int
    metrics: dict[str, MetricOut]
