"""Device actors: idle devices that fall silent go offline; idle devices prove their compute again (the
sample store is bounded by tasks/retention.py)."""

from __future__ import annotations

import dramatiq

from portal import parts
from portal.infra.db import session_scope
from portal.models import Device
from portal.services.network import network_history
from portal.services.providers import commands, faults, reliability, verification


@dramatiq.actor(max_retries=0, time_limit=120_000)
def reverify_devices() -> None:
    """Ask idle devices whose proof of compute has aged for a fresh one."""
    p = parts.current()
    with session_scope(p.engine) as session:
        due = [device.id for device in verification.due_for_reverification(session, p.settings)]
    for device_id in due:
        with session_scope(p.engine) as session:
            # Locked, so a placement booking it at this moment waits and then finds it off the market.
            device = session.get(Device, device_id, with_for_update=True)
            if device is not None:
                verification.start_reverification(session, device)
        commands.wake(p.wakeups, device_id)


@dramatiq.actor(max_retries=0, time_limit=60_000)
def mark_silent_devices_offline() -> None:
    p = parts.current()
    moved = faults.OFFLINE_BATCH
    while moved == faults.OFFLINE_BATCH:  # a batch per transaction, until one is not full
        with session_scope(p.engine) as session:
            moved = faults.mark_silent_offline(session, p.settings)


@dramatiq.actor(max_retries=0, time_limit=60_000)
def snapshot_network() -> None:
    """A minute's picture of the network for the explorer, and the old ones pruned."""
    p = parts.current()
    with session_scope(p.engine) as session:
        network_history.take_snapshot(session, p.settings)
        network_history.prune(session)


@dramatiq.actor(max_retries=0, time_limit=300_000)
def refresh_reliability() -> None:
    """Every device's reliability score from its uptime and faults over the last 30 days."""
    p = parts.current()
    with session_scope(p.engine) as session:
        scores = reliability.changed_scores(session)
    with session_scope(p.engine) as session:
        reliability.store_scores(session, scores)


@dramatiq.actor(max_retries=0, time_limit=60_000)
def detect_gpu_faults() -> None:
    """XID errors and GPUs busy on unhired devices, from the latest heartbeats."""
    p = parts.current()
    with session_scope(p.engine) as session:
        faults.gpu_faults(session, p.cache, p.settings)
