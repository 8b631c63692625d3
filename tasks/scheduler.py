"""Periodic actors: every portal process ticks, and a counter in the shared cache lets exactly one of them
send each tick's message, however many processes run."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import dramatiq

from portal import parts
from portal.infra.cache import Cache

logger = logging.getLogger(__name__)
TICK_S = 1.0


def periodic() -> list[tuple[dramatiq.Actor, float]]:
    from tasks import billing, clusters, devices, retention

    settings = parts.current().settings
    return [
        (billing.meter_clusters, float(settings.metering_interval_s)),
        (billing.settle_payouts, float(settings.settlement_interval_s)),
        (billing.watch_deposits, float(settings.deposit_scan_interval_s)),
        (clusters.expire_clusters, 5.0),
        (clusters.reconcile_clusters, 5.0),
        (devices.reverify_devices, 60.0),
        (devices.mark_silent_devices_offline, 5.0),
        (devices.detect_gpu_faults, 5.0),
        (retention.prune_old_rows, 600.0),
        (devices.snapshot_network, 60.0),
        (devices.refresh_reliability, 300.0),
    ]


def tick(cache: Cache, now: float | None = None) -> list[str]:
    """Send each periodic actor whose period has begun and no other process has claimed; returns them."""
    now = time.time() if now is None else now
    sent = []
    for actor, period_s in periodic():
        slot = int(now // period_s)
        if cache.incr(f"tick:{actor.actor_name}:{slot}", ttl_s=period_s * 3) == 1:
            actor.send()
            sent.append(actor.actor_name)
    return sent


@asynccontextmanager
async def periodic_scheduler() -> AsyncIterator[None]:
    """Run the ticks in the background while the portal lives."""

    async def loop() -> None:
        cache = parts.current().cache
        while True:
            try:
                await asyncio.to_thread(tick, cache)
            except Exception:  # a broker or cache hiccup must not end the schedule
                logger.exception("periodic tick failed")
            await asyncio.sleep(TICK_S)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
