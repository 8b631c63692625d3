"""The public explorer: the network over time by GPU model or country."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import plotly.graph_objects as go
import reflex as rx
from sqlalchemy.exc import SQLAlchemyError

from portal import parts
from portal.infra.db import session_scope
from portal.models.base import utcnow
from portal.services.display import usd
from portal.services.network import analytics, network_history
from portal.services.providers.telemetry import RANGES
from portal.state.charts import styled
from portal.state.session import for_anyone

logger = logging.getLogger(__name__)


def _figures(minutes: int, by: str) -> tuple[go.Figure, go.Figure, go.Figure, int]:
    with session_scope(parts.current().engine) as session:
        trends = network_history.history(session, minutes, by)
    online = go.Figure(
        [go.Scatter(x=t.times, y=t.online, name=t.key, stackgroup="online", mode="lines") for t in trends]
    )
    hired = go.Figure(
        [
            go.Scatter(
                x=t.times,
                y=[round(100 * h / o, 1) if o else 0 for h, o in zip(t.hired, t.online, strict=True)],
                name=t.key,
                mode="lines",
            )
            for t in trends
        ]
    )
    util = go.Figure([go.Scatter(x=t.times, y=t.util, name=t.key, mode="lines") for t in trends])
    points = sum(len(t.times) for t in trends)
    # The axis spans the range asked for (one picture alone would span a millisecond), and a short series
    # shows its points: a line needs two.
    now = utcnow()
    window = {"xaxis": {"range": [now - timedelta(minutes=minutes), now]}}
    for figure in (online, hired, util):
        figure.update_traces(mode="lines+markers" if points < 3 * max(len(trends), 1) else "lines")
    return (
        styled(online, "GPUs online", height=260, **window),
        styled(hired, "Hired share (%)", height=260, yaxis={"range": [0, 100]}, **window),
        styled(util, "Average GPU utilization (%)", height=260, **window),
        points,
    )


def _summary() -> dict:
    with session_scope(parts.current().engine) as session:
        stats = analytics.network_stats(session, parts.current().cache)
    return {
        "devices_online": f"{stats.devices_online:,}",
        "gpus_online": f"{stats.gpus_online:,}",
        "simulated": f"{stats.simulated_gpus_online:,} simulated" if stats.simulated_gpus_online else "",
        "hired_share": f"{stats.hired_share:.0%}",
        "utilization": f"{stats.utilization_avg:.0f}%" if stats.utilization_avg is not None else "n/a",
        "compute_hours": f"{stats.compute_hours:,.1f}",
        "paid": usd(stats.earnings_paid_micro),
        "countries": [
            {"country": g.key, "devices": g.devices, "gpus": g.gpus, "hired": g.gpus_hired}
            for g in stats.by_country
        ],
    }


class ExplorerState(rx.State):
    range: str = "24h"
    by: str = "gpu_model"
    online: go.Figure = go.Figure()
    hired: go.Figure = go.Figure()
    util: go.Figure = go.Figure()
    points: int = 0
    summary: dict = {}
    loaded: bool = False
    error: str = ""

    @rx.var
    def ranges(self) -> list[str]:
        return list(RANGES)

    @rx.event
    @for_anyone
    async def refresh(self) -> None:
        minutes = RANGES.get(self.range, RANGES["24h"])[0]
        try:
            self.online, self.hired, self.util, self.points = await asyncio.to_thread(
                _figures, minutes, self.by
            )
            self.summary = await asyncio.to_thread(_summary)
            self.loaded, self.error = True, ""
        except SQLAlchemyError:
            logger.exception("network history unavailable")
            self.error = "The network history cannot be read right now; retrying."

    @rx.event
    @for_anyone
    async def tick(self, _now: str) -> None:
        await self.refresh()

    @rx.event
    @for_anyone
    async def pick_range(self, value: str | list[str]) -> None:
        if isinstance(value, str) and value in RANGES:
            self.range = value
        await self.refresh()

    @rx.event
    @for_anyone
    async def pick_grouping(self, value: str | list[str]) -> None:
        if isinstance(value, str) and value in network_history.GROUPINGS:
            self.by = value
        await self.refresh()
