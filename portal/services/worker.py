"""The portal's side of the worker protocol: an agent registers its machine, then heartbeats."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from portal.cache import Cache
from portal.models import Device, DeviceCommand, DeviceState, Gpu
from portal.models.base import utcnow
from portal.services import commands, liveness, state_machines
from portal.services.devices import gpus_of
from portal.services.errors import InvalidInput
from portal.services.gpu_catalog import list_price, normalize_model_name


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


# Commands reach agents by long-poll at once, and every poll looks in the database first; a heartbeat also
# looks, this often, in case an agent's polls stopped. Each look is a database round trip in a thread: at
# 10,000 devices, every 2 minutes was 80 a second, a tenth of the portal's CPU.
COMMAND_SWEEP_S = 600


Beat = liveness.Noted


def beat(cache: Cache, device_id: uuid.UUID, *, samples: list[dict[str, Any]], ray: dict[str, Any]) -> Beat:
    """The hot path of the portal (every agent, every few seconds), on the cache alone: note the beat and
    learn whether this request also flushes the batch of beats (one per period, across processes) or
    looks for commands (every ``COMMAND_SWEEP_S`` per device; the long-poll delivers them at once, this
    is the fallback)."""
    return liveness.record(cache, device_id, samples=samples, ray=ray, now=utcnow(), sweep_s=COMMAND_SWEEP_S)


def needs_database(noted: Beat) -> bool:
    return noted.state is None or noted.flush or noted.sweep_commands


def finish_beat(
    session: Session, cache: Cache, device_id: uuid.UUID, beat: Beat, *, store_samples: bool = True
) -> tuple[str, list[DeviceCommand]]:
    """The database part of a beat that needs one; returns the device's state and its commands."""
    states = liveness.flush(session, cache, store_samples=store_samples) if beat.flush else {}
    state = states.get(device_id) or beat.state or liveness.current_state(session, cache, device_id)
    return state, commands.take(session, device_id) if beat.sweep_commands else []


def heartbeat(
    session: Session,
    cache: Cache,
    device_id: uuid.UUID,
    *,
    samples: list[dict[str, Any]],
    ray: dict[str, Any],
) -> tuple[str, list[DeviceCommand]]:
    """One beat, written through at once (tests and tools); the API splits it into ``beat`` and
    ``finish_beat`` so that most beats never touch the database."""
    noted = beat(cache, device_id, samples=samples, ray=ray)
    return finish_beat(session, cache, device_id, Beat(noted.state, flush=True, sweep_commands=True))
