"""The portal's side of the agents' protocol: an agent registers its machine, then heartbeats."""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from portal.config import Settings
from portal.infra.cache import Cache
from portal.models import Device, DeviceCommand, DeviceState, FaultEvent, Gpu
from portal.models.base import utcnow
from portal.services import state_machines
from portal.services.errors import InvalidInput
from portal.services.providers import commands, liveness, node_addresses
from portal.services.providers.devices import gpus_of
from portal.services.providers.gpu_catalog import list_price, normalize_model_name

logger = logging.getLogger(__name__)


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
    isolation: str = "none"  # "container": each Ray node in a container, wiped after the rental
    container_engine: str = ""
    worker_image: str = ""


def hardware_of(rows: Iterable[tuple[int, str, str, int]], simulated: bool) -> str:
    """What a proof of compute vouches for: each GPU's index, UUID, model and memory, and whether the GPUs
    are simulated. Any change of it takes the device off the market until a new proof passes."""
    return json.dumps([simulated, sorted(rows)])


def recorded_hardware(session: Session, device: Device) -> str:
    gpus = gpus_of(session, device.id)
    return hardware_of(((g.index, g.uuid, g.model, g.memory_mb) for g in gpus), device.simulated)


def _summary(models: list[str]) -> str:
    counts = Counter(models)
    return ", ".join(f"{count} x {model}" for model, count in sorted(counts.items())) or "no GPU"


def register(
    session: Session, device: Device, report: MachineReport, *, peer: str | None, settings: Settings
) -> bool:
    """Record what the agent found; returns whether the agent should now prove its compute.

    A re-registration is believed only as far as it was proven: GPUs that differ from the recorded ones
    (count, model, memory, UUIDs, simulated) clear the device's proof and send it back through proof of
    compute; a hired device leaves its cluster, which heals elsewhere (``ClusterLifecycle.heal``)."""
    indices = [gpu["index"] for gpu in report.gpus]
    if len(set(indices)) != len(indices):
        raise InvalidInput("Each GPU index may appear once.", details={"field": "gpus"})
    reported = [
        (g["index"], g["uuid"], normalize_model_name(g["model"], g["memory_mb"]), g["memory_mb"])
        for g in report.gpus
    ]
    before = gpus_of(session, device.id)
    changed = recorded_hardware(session, device) != hardware_of(reported, report.simulated)
    was = _summary([g.model for g in before]) + (" (simulated)" if device.simulated else "")
    device.agent_version, device.hostname, device.os = report.agent_version, report.hostname, report.os
    device.cpu_count, device.ram_mb = report.cpu_count, report.ram_mb
    device.address = node_addresses.registered_address(peer, settings)
    device.metrics_url = _metrics_url(device, report.metrics_url, settings)
    device.simulated = report.simulated
    device.isolation = report.isolation
    device.container_engine, device.worker_image = report.container_engine, report.worker_image
    device.last_heartbeat_at = utcnow()
    existing = {gpu.index: gpu for gpu in before}
    for (index, gpu_uuid, model, memory_mb), given in zip(reported, report.gpus, strict=True):
        gpu = existing.pop(index, None) or Gpu(
            device_id=device.id, index=index, uuid="", model="", memory_mb=0
        )
        gpu.uuid, gpu.model, gpu.memory_mb = gpu_uuid, model, memory_mb
        gpu.driver, gpu.cuda, gpu.simulated = given.get("driver", ""), given.get("cuda", ""), report.simulated
        session.add(gpu)
    for gone in existing.values():
        session.delete(gone)
    models = sorted({model for _, _, model, _ in reported})
    device.gpu_model, device.gpu_count = (models[0] if models else ""), len(report.gpus)
    device.hourly_price_micro = device.price_per_gpu_hour_micro or list_price(device.gpu_model)
    session.add(device)
    proven = device.verified_at is not None
    if changed and proven:
        now = _summary([model for _, _, model, _ in reported]) + (" (simulated)" if report.simulated else "")
        device.verified_at = None
        session.add(
            FaultEvent(
                device_id=device.id,
                kind="hardware_changed",
                severity="warning",
                message=f"The agent reported other GPUs (was {was}, now {now}): the device must prove "
                "its compute again before it is hired.",
                details={"was": was, "now": now},
            )
        )
    if device.state == DeviceState.BLOCKED:
        return False  # a blocked device stays blocked
    if device.state == DeviceState.HIRED:
        if not changed:
            return False  # an agent restart keeps running its cluster
        state_machines.move(
            session,
            "device",
            device,
            DeviceState.VERIFYING,
            f"taken off the market: its GPUs changed (was {was}); proving its compute again",
        )
        return True
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
    reason = "its GPUs changed; proving its compute again" if changed and proven else "agent registered"
    state_machines.move(session, "device", device, DeviceState.VERIFYING, f"{reason}; proving its compute")
    return True


def _metrics_url(device: Device, url: str | None, settings: Settings) -> str | None:
    """Where Prometheus may scrape the agent: its reported URL only on the device's own address."""
    if url is None:
        return None
    checked = node_addresses.checked_url(device, url, settings, schemes=("http", "https"), path="/metrics")
    if isinstance(checked, node_addresses.Refused):
        logger.info("device %s: metrics URL refused: %s", device.id, checked.reason)
        return None
    return checked


# Commands reach agents by long-poll at once, and every poll looks in the database first; a heartbeat also
# looks, this often, in case an agent's polls stopped. Each look is a database round trip in a thread: at
# 10,000 devices, every 2 minutes was 80 a second, a tenth of the portal's CPU.
COMMAND_SWEEP_S = 600


def beat(
    cache: Cache,
    device_id: uuid.UUID,
    *,
    samples: list[dict[str, Any]],
    ray: dict[str, Any],
    mesh: dict[str, Any] | None = None,
) -> liveness.NotedBeat:
    """The hot path of the portal (every agent, every few seconds), on the cache alone: note the beat and
    learn whether this request also flushes the batch of beats (one per period, across processes) or
    looks for commands (every ``COMMAND_SWEEP_S`` per device; the long-poll delivers them at once, this
    is the fallback)."""
    return liveness.record(
        cache, device_id, samples=samples, ray=ray, mesh=mesh, now=utcnow(), sweep_s=COMMAND_SWEEP_S
    )


def needs_database(noted: liveness.NotedBeat) -> bool:
    return noted.state is None or noted.flush or noted.sweep_commands


def finish_beat(
    session: Session,
    cache: Cache,
    device_id: uuid.UUID,
    beat: liveness.NotedBeat,
    *,
    store_samples: bool = True,
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
    mesh: dict[str, Any] | None = None,
) -> tuple[str, list[DeviceCommand]]:
    """One beat, written through at once (tests and tools); the API splits it into ``beat`` and
    ``finish_beat`` so that most beats never touch the database."""
    noted = beat(cache, device_id, samples=samples, ray=ray, mesh=mesh)
    return finish_beat(
        session, cache, device_id, liveness.NotedBeat(noted.state, flush=True, sweep_commands=True)
    )
