"""Live network counts for the landing page."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import reflex as rx
from sqlalchemy.exc import SQLAlchemyError

from portal import parts
from portal.infra.db import session_scope
from portal.services.network.network_stats import NetworkCounts, network_counts
from portal.services.providers.devices import MISSED_HEARTBEATS_OFFLINE
from portal.state.session import for_anyone

logger = logging.getLogger(__name__)

REFRESH_MS = 3000


def _read_counts() -> NetworkCounts:
    window = timedelta(seconds=parts.current().settings.heartbeat_interval_s * MISSED_HEARTBEATS_OFFLINE)
    with session_scope(parts.current().engine) as session:
        return network_counts(session, heartbeat_within=window)


class NetworkState(rx.State):
    loaded: bool = False
    error: str = ""
    devices_online: int = 0
    gpus_available: int = 0
    gpus_hired: int = 0
    gpus_online: int = 0
    simulated_gpus_online: int = 0
    clusters_running: int = 0
    by_model: list[dict[str, str | int | bool]] = []

    @rx.event
    @for_anyone
    async def refresh(self) -> None:
        try:
            counts = await asyncio.to_thread(_read_counts)
        except SQLAlchemyError:
            logger.exception("network counts unavailable")
            self.error = "The network counts cannot be read right now; retrying."
            return
        self.error = ""
        self.loaded = True
        self.devices_online = counts.devices_online
        self.gpus_available = counts.gpus_available
        self.gpus_hired = counts.gpus_hired
        self.gpus_online = counts.gpus_online
        self.simulated_gpus_online = counts.simulated_gpus_online
        self.clusters_running = counts.clusters_running
        self.by_model = [
            {"model": m.model, "available": m.available, "hired": m.hired, "simulated": m.simulated}
            for m in counts.by_model
        ]

    @rx.event
    @for_anyone
    async def tick(self, _now: str) -> None:
        await self.refresh()
