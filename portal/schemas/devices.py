"""Devices and the worker protocol on the wire."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from portal.models import ConnectivityTier
from portal.schemas.common import DisplayName, ShownText
from portal.schemas.mesh import MeshOut

Short = Annotated[str, Field(max_length=120)]


class DeviceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: DisplayName
    country: Annotated[str, Field(min_length=2, max_length=2, examples=["DE"])]
    connectivity_tier: ConnectivityTier = ConnectivityTier.MEDIUM
    price_per_gpu_hour_micro: Annotated[int | None, Field(gt=0, le=1_000_000_000)] = None


class DevicePriceIn(BaseModel):
    """A device's price per GPU-hour in micro-USD ($0.01 to $1,000); null for its model's list price."""

    model_config = ConfigDict(extra="forbid")
    price_per_gpu_hour_micro: Annotated[int | None, Field(ge=10_000, le=1_000_000_000, examples=[1_800_000])]


class GpuOut(BaseModel):
    index: int
    uuid: str
    model: str
    memory_mb: int
    driver: str
    cuda: str
    simulated: bool


class CheckOut(BaseModel):
    key: str
    ok: bool
    message: str


class DeviceOut(BaseModel):
    id: uuid.UUID
    name: str
    country: str
    connectivity_tier: str
    state: str
    state_reason: str
    simulated: bool
    price_per_gpu_hour_micro: int | None
    agent_version: str
    hostname: str
    last_heartbeat_at: datetime | None
    verified_at: datetime | None
    verified_tflops: float | None
    reliability: float
    token_prefix: str
    created_at: datetime
    gpus: list[GpuOut]
    eligibility: list[CheckOut]
    hireable: bool
    overlay_ip: str | None = Field(description="Its address on the overlay network, once allocated.")
    mesh: MeshOut
    isolation: str = Field(description='"container": each rental\'s Ray node runs in a container of its own.')
    container_engine: str
    worker_image: str
    last_wipe_at: datetime | None = Field(description="When the agent last confirmed a rental's wipe.")


class DeviceCreatedOut(BaseModel):
    device: DeviceOut
    device_token: str = Field(description="Shown once; the agent authenticates with it.")
    launch_command: str
    launch_commands: dict[str, str]


class TokenOut(BaseModel):
    device_token: str
    launch_command: str


# --- worker protocol -------------------------------------------------------------------------------


class GpuInfoIn(BaseModel):
    index: Annotated[int, Field(ge=0, le=63)]
    uuid: Annotated[str, Field(min_length=1, max_length=80), ShownText]
    model: Annotated[str, Field(min_length=1, max_length=80), ShownText]
    memory_mb: Annotated[int, Field(ge=0, le=10_000_000)]
    driver: Annotated[str, Field(max_length=40), ShownText] = ""
    cuda: Annotated[str, Field(max_length=20), ShownText] = ""


class RegisterIn(BaseModel):
    agent_version: Annotated[str, Field(max_length=40), ShownText]
    hostname: Annotated[str, Field(max_length=255), ShownText] = ""
    os: Annotated[Short, ShownText] = ""
    cpu_count: Annotated[int, Field(ge=0, le=100_000)] = 0
    ram_mb: Annotated[int, Field(ge=0, le=1_000_000_000)] = 0
    gpus: Annotated[list[GpuInfoIn], Field(max_length=64)]
    simulated: bool
    metrics_url: Annotated[str | None, Field(max_length=255)] = None
    # Agents before containers say nothing: "none".
    isolation: Literal["container", "none"] = "none"
    container_engine: Literal["", "podman", "docker"] = ""
    worker_image: Annotated[str, Field(max_length=255), ShownText] = ""


class RegisterOut(BaseModel):
    device_id: uuid.UUID
    state: str
    next_heartbeat_s: int
    verify: bool


class GpuSampleIn(BaseModel):
    index: Annotated[int, Field(ge=0, le=63)]
    util_pct: Annotated[float, Field(ge=0, le=100)]
    mem_used_mb: Annotated[float, Field(ge=0, le=10_000_000)]
    temp_c: Annotated[float, Field(ge=-50, le=200)]
    power_w: Annotated[float, Field(ge=0, le=10_000)]
    xid_errors: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0  # the last XID code (NVML reports small ones)
    ecc_uncorrected: Annotated[int, Field(ge=0, le=2**40)] = 0


class RayStatusIn(BaseModel):
    state: Literal["none", "starting", "running", "stopping", "failed"] = "none"
    node_id: Annotated[str | None, Field(max_length=64)] = None
    address: Annotated[str | None, Field(max_length=255)] = None


class MeshStatusIn(BaseModel):
    """How an agent on the overlay stands on it, from its Nebula's log."""

    state: Literal["connecting", "connected", "down"]
    relayed: bool | None = None


class HeartbeatIn(BaseModel):
    gpus: Annotated[list[GpuSampleIn], Field(max_length=64)] = []
    ray: RayStatusIn = RayStatusIn()
    mesh: MeshStatusIn | None = None  # only agents on the overlay send it


class CommandOut(BaseModel):
    id: uuid.UUID
    kind: str
    payload: dict[str, Any]


class HeartbeatOut(BaseModel):
    state: str
    commands: list[CommandOut]
    next_heartbeat_s: int


class CommandResultIn(BaseModel):
    ok: bool
    detail: Annotated[str, Field(max_length=2000)] = ""


class ChallengeOut(BaseModel):
    id: str
    seed: int
    n: int
    dtype: str
    deadline_s: int


class ChallengeAnswerIn(BaseModel):
    """First the commitment (row_hashes, elapsed_ms), then the rows the portal asks for (rows)."""

    row_hashes: Annotated[list[str] | None, Field(max_length=8192)] = None
    elapsed_ms: Annotated[float | None, Field(ge=0, le=3_600_000)] = None
    vram_mb: Annotated[
        int | None, Field(ge=0, le=100_000_000, description="Memory the agent could allocate")
    ] = None
    rows: dict[int, Annotated[list[float], Field(max_length=8192)]] | None = None


class ChallengeReplyOut(BaseModel):
    phase: Literal["reveal", "done"]
    rows: list[int] = []
    passed: bool | None = None
    reason: str = ""
    tflops: float | None = None


class AdminDeviceOut(DeviceOut):
    owner_id: uuid.UUID
    owner_email: str | None


class BlockIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, Field(min_length=3, max_length=400)]


class FaultOut(BaseModel):
    id: int
    at: datetime
    device_id: uuid.UUID | None
    device_name: str | None
    cluster_id: uuid.UUID | None
    kind: str
    severity: str
    message: str


class ScaleUpIn(BaseModel):
    count: Annotated[int, Field(ge=1, le=64, description="Workers the autoscaler asks for")] = 1


class AutoscalerNodeOut(BaseModel):
    id: uuid.UUID
    role: str
    state: str
    gpu_count: int


class AutoscaledNodesOut(BaseModel):
    cluster_id: uuid.UUID
    min_workers: int
    max_workers: int
    nodes: list[AutoscalerNodeOut]
