"""The portal's side of the worker protocol: an agent registers its machine, then heartbeats."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col

from portal.cache import Cache
from portal.models import Device, DeviceCommand, DeviceState, Gpu
from portal.models.base import utcnow
from portal.services import commands, state_machines
from portal.services.devices import gpus_of
from portal.services.errors import InvalidInput
from portal.services.gpu_catalog import list_price, normalize_model_name

SAMPLE_TTL_S = 60


@dataclass(frozen=True)
class MachineReport:
    agent_version: str
    hostname: str
    os: str
    cpu_count: int
    ram_mb: int
    gpus: list[dict[str, Any]]
    simulated: bool
    metrics_url: str | None


def register(session: Session, device: Device, report: MachineReport) -> bool:
    """Record what the agent found; returns whether the agent should now prove its compute."""
    indices = [gpu["index"] for gpu in report.gpus]
    if len(set(indices)) != len(indices):
        raise InvalidInput("Each GPU index may appear once.", details={"field": "gpus"})
    device.agent_version, device.hostname, device.os = report.agent_version, report.hostname, report.os
    device.cpu_count, device.ram_mb, device.metrics_url = report.cpu_count, report.ram_mb, report.metrics_url
    device.simulated = report.simulated
    device.last_heartbeat_at = utcnow()
    existing = {gpu.index: gpu for gpu in gpus_of(session, device.id)}
    for reported in report.gpus:
        gpu = existing.pop(reported["index"], None) or Gpu(
            device_id=device.id, index=reported["index"], uuid="", model="", memory_mb=0
        )
        gpu.uuid, gpu.memory_mb = reported["uuid"], reported["memory_mb"]
        gpu.model = normalize_model_name(reported["model"], reported["memory_mb"])
        gpu.driver, gpu.cuda, gpu.simulated = (
            reported.get("driver", ""),
            reported.get("cuda", ""),
            report.simulated,
        )
        session.add(gpu)
    for gone in existing.values():
        session.delete(gone)
    models = sorted({normalize_model_name(g["model"], g["memory_mb"]) for g in report.gpus})
    device.gpu_model, device.gpu_count = (models[0] if models else ""), len(report.gpus)
    device.hourly_price_micro = device.price_per_gpu_hour_micro or list_price(device.gpu_model)
    session.add(device)
    if device.state in (DeviceState.BLOCKED, DeviceState.HIRED):
        return False  # a blocked device stays blocked; a hired one keeps running its cluster
    if not report.gpus:
        state_machines.move(
            session,
            "device",
            device,
            DeviceState.UNSUPPORTED,
            "no GPU found: CPU-only machines cannot be hired for GPU clusters",
        )
        return False
    if device.state == DeviceState.READY and device.verified_at is not None:
        return False  # an agent restart on a verified, unchanged machine
    state_machines.move(
        session, "device", device, DeviceState.VERIFYING, "agent registered; proving its compute"
    )
    return True


def heartbeat(
    session: Session,
    cache: Cache,
    device_id: uuid.UUID,
    *,
    samples: list[dict[str, Any]],
    ray: dict[str, Any],
) -> tuple[str, list[DeviceCommand]]:
    """Note the agent is alive, keep its latest GPU samples, and hand it its queued commands; returns the
    device's state and the commands.

    The hot path of the portal (every agent, every few seconds): one UPDATE ... RETURNING records the beat
    without loading the device; the state machine runs only when the device was offline.
    """
    now = utcnow()
    recorded = session.execute(
        update(Device)
        .where(col(Device.id) == device_id)
        .values(last_heartbeat_at=now, ray_state=ray.get("state", "none"), ray_node_id=ray.get("node_id"))
        .returning(col(Device.state), col(Device.verified_at))
    ).one()
    state = recorded.state
    if state == DeviceState.OFFLINE:
        device = session.get(Device, device_id)
        assert device is not None
        back = DeviceState.READY if recorded.verified_at is not None else DeviceState.VERIFYING
        state_machines.move(session, "device", device, back, "heartbeats resumed")
        state = device.state
    if samples:
        cache.set(
            f"gpu-samples:{device_id}",
            json.dumps({"at": now.isoformat(), "gpus": samples}),
            ttl_s=SAMPLE_TTL_S,
        )
    return state, commands.take(session, device_id)
