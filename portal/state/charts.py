"""Live GPU charts for the device page (providers) and the cluster page (customers)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import plotly.graph_objects as go
import reflex as rx

from portal import parts
from portal.infra.db import session_scope
from portal.models.base import utcnow
from portal.security.principal import Principal
from portal.services.errors import DomainError
from portal.services.providers import devices, telemetry
from portal.services.rentals import clusters
from portal.state.session import SessionState, for_users, principal

DAY_MS = 86_400_000
TITLES = {"util": "Utilization", "memory": "Memory used", "temperature": "Temperature", "power": "Power"}


# The least time a GPU chart spans: a device seconds old otherwise gets an axis of milliseconds.
MIN_SPAN = timedelta(minutes=5)
# Hours and minutes while a tick is under a day apart, the date beyond: never seconds or milliseconds.
TIME_TICKS = [
    {"dtickrange": [None, DAY_MS], "value": "%H:%M"},
    {"dtickrange": [DAY_MS, None], "value": "%b %-d"},
]


def time_zone(name: str) -> ZoneInfo | None:
    """The IANA zone a browser named (``Intl``'s ``timeZone``), or None for a name that is none."""
    if not name or len(name) > 64:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def zone_label(zone: ZoneInfo | None) -> str:
    """What the charts call a zone: its abbreviation now ("IST", "CET"), else its offset ("+04"); "UTC" for
    none."""
    if zone is None:
        return "UTC"
    return datetime.now(zone).tzname() or "UTC"


def in_zone(times: list[datetime], zone: ZoneInfo | None) -> list[datetime]:
    """UTC moments as the wall-clock times of ``zone`` (Plotly draws a moment's own clock time and ignores
    any offset, so the axis reads in the visitor's zone only if the times are converted here)."""
    return [at.astimezone(zone or UTC).replace(tzinfo=None) for at in times]


def time_axis(times: list[datetime], label: str = "UTC") -> dict[str, object]:
    """The x axis of a GPU chart (times in the zone ``label`` names): at least ``MIN_SPAN`` wide, ending at
    the last point."""
    axis: dict[str, object] = {
        "type": "date",
        "tickformatstops": TIME_TICKS,
        "hoverformat": f"%H:%M:%S {label}",
    }
    if times:
        first, last = min(times), max(times)
        axis["range"] = [min(first, last - MIN_SPAN), last]
    return axis


def _figure(metric: str, found: list[telemetry.Series], zone: ZoneInfo | None = None) -> go.Figure:
    unit, label = telemetry.METRICS[metric][1], zone_label(zone)
    figure = go.Figure(
        [go.Scatter(x=in_zone(one.times, zone), y=one.values, mode="lines", name=one.label) for one in found]
    )
    times = in_zone([at for one in found for at in one.times], zone)
    return styled(
        figure,
        f"{TITLES[metric]} ({unit}, {label})",
        showlegend=len(found) > 1,
        xaxis=time_axis(times, label),
    )


def styled(figure: go.Figure, title: str, *, height: int = 230, **layout: object) -> go.Figure:
    """The look every chart of the portal shares: a small title, tight margins, a transparent background
    that follows the page's theme, a y axis from zero, the legend below."""
    figure.update_layout(
        autosize=True,  # the width is the container's (see components.charts.chart)
        title={"text": title, "font": {"size": 14}},
        margin={"l": 40, "r": 10, "t": 36, "b": 30},
        height=height,
        legend={"orientation": "h", "y": -0.25},
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        yaxis={"rangemode": "tozero"},
    )
    figure.update_layout(**layout)
    return figure


def _series(
    caller: Principal, path: str, minutes: int
) -> tuple[dict[str, list[telemetry.Series]], list[tuple[datetime, float]]]:
    """The charts' data for the page at ``path``: a device of the caller's (with its daily uptime over 30
    days), or a cluster of the caller's."""
    kind, _, raw_id = path.strip("/").partition("/")
    with session_scope(parts.current().engine) as session:
        if kind == "device":
            device = devices.get_device(session, caller.user_id, uuid.UUID(raw_id))
            found = telemetry.series(session, parts.current().settings, [device.id], minutes)
            return found, telemetry.daily_uptime(session, device)
        cluster = clusters.get_cluster(session, caller.user_id, uuid.UUID(raw_id))
        device_ids = clusters.device_ids_of(session, cluster.id)
        found = telemetry.series(session, parts.current().settings, device_ids, minutes)
        return telemetry.from_moment(found, cluster.created_at), []


def _uptime_figure(days: list[tuple[datetime, float]]) -> go.Figure:
    # A bar a day wide on a 30-day axis: left alone, Plotly fits one bar's axis to a millisecond.
    figure = go.Figure(
        [
            go.Bar(
                x=[day for day, _ in days],
                y=[pct for _, pct in days],
                width=[DAY_MS * 0.8] * len(days),
                name="uptime",
            )
        ]
    )
    end = utcnow().replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    return styled(
        figure,
        "Uptime per day, last 30 days (%)",
        yaxis={"range": [0, 100]},
        xaxis={"type": "date", "range": [end - timedelta(days=30), end]},
    )


def earnings_figure(by_day: list[dict], title: str = "Earned per UTC day, last 30 days (USD)") -> go.Figure:
    """A bar per day of ``billing.earnings_by_day`` (every day of the span, so the axis spans them all)."""
    figure = go.Figure(
        [
            go.Bar(
                x=[d["day"] for d in by_day], y=[d["earned_micro"] / 1_000_000 for d in by_day], name="earned"
            )
        ]
    )
    return styled(
        figure,
        title,
        yaxis={"rangemode": "tozero", "tickprefix": "$"},
        xaxis={"type": "date", "tickformat": "%b %-d"},
        hovermode="x",
    )


class ChartsState(SessionState):
    range: str = "15m"
    has_data: bool = False
    loaded: bool = False
    points: int = 0  # how many points the charts hold, so a refresh is visible to tests and users
    util: go.Figure = go.Figure()
    memory: go.Figure = go.Figure()
    temperature: go.Figure = go.Figure()
    power: go.Figure = go.Figure()
    uptime: go.Figure = go.Figure()
    has_uptime: bool = False
    # The browser's IANA time zone, which the GPU charts' times are drawn in ("" until the browser says:
    # UTC meanwhile). The server cannot know it, and Plotly draws the times it is given.
    zone: str = ""

    @rx.var
    def ranges(self) -> list[str]:
        return list(telemetry.RANGES)

    @rx.event
    @for_users()
    async def refresh(self) -> None:
        await self._draw()

    @rx.event
    @for_users()
    async def tick(self, _now: str) -> None:
        await self._draw()

    async def _draw(self) -> None:
        minutes = telemetry.RANGES.get(self.range, telemetry.RANGES["15m"])[0]
        try:
            found, uptime = await asyncio.to_thread(_series, principal(), self.router.url.path, minutes)
        except (DomainError, ValueError):
            return  # the page itself says what is wrong
        zone = time_zone(self.zone)
        self.util, self.memory = (
            _figure("util", found["util"], zone),
            _figure("memory", found["memory"], zone),
        )
        self.temperature, self.power = (
            _figure("temperature", found["temperature"], zone),
            _figure("power", found["power"], zone),
        )
        self.points = sum(len(one.times) for one in found["util"])
        self.uptime, self.has_uptime = _uptime_figure(uptime), bool(uptime)
        self.has_data, self.loaded = self.points > 0, True

    @rx.event
    @for_users()
    async def ask_time_zone(self) -> Any:
        """Ask the browser its time zone (when the charts appear); ``use_time_zone`` gets the answer."""
        return rx.call_script(
            "Intl.DateTimeFormat().resolvedOptions().timeZone", callback=ChartsState.use_time_zone
        )

    @rx.event
    @for_users()
    async def use_time_zone(self, name: str) -> None:
        if isinstance(name, str) and time_zone(name) is not None and name != self.zone:
            self.zone = name
            await self._draw()

    @rx.event
    @for_users()
    async def pick_range(self, value: str | list[str]) -> None:
        if isinstance(value, str) and value in telemetry.RANGES:
            self.range = value
        await self._draw()
