"""The public explorer: the network over time by GPU model or country."""

from __future__ import annotations

import asyncio
import logging

import plotly.graph_objects as go
import reflex as rx
from sqlalchemy.exc import SQLAlchemyError

from portal.db import session_scope
from portal.services import network_history
from portal.services.telemetry import RANGES
from portal.state.charts import styled
from portal.state.session import for_anyone

logger = logging.getLogger(__name__)


def _figures(minutes: int, by: str) -> tuple[go.Figure, go.Figure, go.Figure, int]:
    with session_scope() as session:
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
    return (
        styled(online, "GPUs online", height=260),
        styled(hired, "Hired share (%)", height=260),
        styled(util, "Average GPU utilization (%)", height=260),
        points,
    )


class ExplorerState(rx.State):
    range: str = "24h"
    by: str = "gpu_model"
    online: go.Figure = go.Figure()
    hired: go.Figure = go.Figure()
    util: go.Figure = go.Figure()
    points: int = 0
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
