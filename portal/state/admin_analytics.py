"""The admin's analytics page: the network's figures per day over a chosen period, as Plotly charts and
totals (from ``daily_figures``), sign-up cohorts as a heatmap (``signup_cohorts``), and the analytics tables
as CSV downloads."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Any

import plotly.graph_objects as go
import reflex as rx

from portal import parts
from portal.infra.db import session_scope
from portal.models import Role
from portal.services import dates
from portal.services.display import MICRO_PER_USD, count, usd
from portal.services.errors import DomainError
from portal.services.network import analytics, daily_figures, signup_cohorts
from portal.state.charts import styled
from portal.state.session import SessionState, for_users

# The periods offered at one click, in days back from today (UTC), today included.
PERIODS = {"7d": 7, "30d": 30, "90d": 90, "1y": 365}
CUSTOM = "custom"
HALF_DAY = timedelta(hours=12)


def _figures(since: date | None, until: date | None) -> daily_figures.DailyFigures:
    with session_scope(parts.current().engine) as session:
        return daily_figures.daily_figures(session, since, until)


def _axis(figures: daily_figures.DailyFigures) -> dict[str, Any]:
    # The axis spans the period asked for, half a day beyond each end so the first and last bars show
    # whole: left alone, Plotly fits a single day's axis to a millisecond.
    start = datetime.combine(figures.start, datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(figures.end, datetime.min.time(), tzinfo=UTC)
    return {"xaxis": {"type": "date", "range": [start - HALF_DAY, end + HALF_DAY]}}


def _money_figure(figures: daily_figures.DailyFigures) -> go.Figure:
    days = [d.day for d in figures.days]
    series = (
        ("Revenue", [d.revenue_micro for d in figures.days]),
        ("Platform fees", [d.fees_micro for d in figures.days]),
        ("Provider earnings", [d.provider_earnings_micro for d in figures.days]),
    )
    figure = go.Figure(
        [
            go.Bar(
                x=days,
                # Dollars for the axis to scale; the hover says each amount as every page does (usd).
                y=[micro / MICRO_PER_USD for micro in amounts],
                customdata=[usd(micro) for micro in amounts],
                hovertemplate="%{x|%Y-%m-%d}: %{customdata}<extra>" + name + "</extra>",
                name=name,
            )
            for name, amounts in series
        ]
    )
    return styled(
        figure,
        "Money per day (USD)",
        height=300,
        barmode="group",
        yaxis={"rangemode": "tozero", "tickprefix": "$", "tickformat": ",.2f"},
        **_axis(figures),
    )


def _gpu_hours_figure(figures: daily_figures.DailyFigures) -> go.Figure:
    days = [d.day for d in figures.days]
    figure = go.Figure(
        [
            go.Bar(
                x=days,
                y=hours,
                name=model,
                hovertemplate="%{x|%Y-%m-%d}: %{y} GPU-h<extra>%{fullData.name}</extra>",
            )
            for model, hours in sorted(figures.gpu_hours_by_model.items())
        ]
    )
    return styled(figure, "GPU-hours per day by GPU model", height=280, barmode="stack", **_axis(figures))


def _active_figure(figures: daily_figures.DailyFigures) -> go.Figure:
    days = [d.day for d in figures.days]
    # Markers where a line alone would not show: a period of a day or two.
    mode = "lines+markers" if len(days) <= 31 else "lines"
    figure = go.Figure(
        [
            go.Scatter(x=days, y=[d.active_customers for d in figures.days], name="Customers", mode=mode),
            go.Scatter(
                x=days,
                y=[d.active_providers for d in figures.days],
                name="Providers",
                mode=mode,
                # Dashed: on days with as many providers as customers the lines coincide.
                line={"dash": "dash"},
            ),
        ]
    )
    most = max([0, *(d.active_customers for d in figures.days), *(d.active_providers for d in figures.days)])
    # Whole people: a tick per person while few, not 0.5 steps.
    yaxis = {"rangemode": "tozero", "dtick": 1} if most <= 8 else {"rangemode": "tozero"}
    return styled(figure, "Active customers and providers per day", height=280, yaxis=yaxis, **_axis(figures))


def _cohorts(who: str, by: str) -> signup_cohorts.SignupCohorts:
    with session_scope(parts.current().engine) as session:
        return signup_cohorts.signup_cohorts(session, who, by)


def _cohorts_figure(found: signup_cohorts.SignupCohorts) -> go.Figure:
    """A row per cohort (oldest on top), a column per period since signing up (as many as the oldest
    cohort could have, so a lone young cohort is one cell, not the whole width), each cell the share of
    the cohort active then; periods still to come are left blank."""
    periods = found.periods
    people = found.who
    z, text, hover = [], [], []
    for cohort in found.cohorts:
        blank = [None] * (periods - len(cohort.active))
        z.append([share * 100 for share in cohort.shares] + blank)
        # Whole percents without the sign in the cells, so twelve columns fit a phone; the hover says it all.
        text.append([f"{share * 100:.0f}" for share in cohort.shares] + [""] * len(blank))
        hover.append(
            [
                f"{active:,} of {cohort.size:,} {people} ({share * 100:.1f} %)"
                for active, share in zip(cohort.active, cohort.shares, strict=True)
            ]
            + [""] * len(blank)
        )
    rows = [f"{found.label(cohort)} ({cohort.size:,})" for cohort in found.cohorts]
    figure = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(periods)),
            y=rows,
            zmin=0,
            zmax=100,
            showscale=False,  # the colour scale is the page's theme's (pages.admin_analytics.COHORT_COLORS)
            text=text,
            texttemplate="%{text}",
            textfont={"size": 10},
            customdata=hover,
            hovertemplate="%{y}, " + found.by + " %{x}: %{customdata}<extra></extra>",
            hoverongaps=False,
            xgap=1,
            ygap=1,
        )
    )
    return styled(
        figure,
        "",
        height=70 + 26 * len(rows),
        margin={"l": 10, "r": 10, "t": 10, "b": 40},
        xaxis={
            "title": {"text": f"{found.by}s after signing up", "font": {"size": 11}},
            "dtick": 1,
            "showgrid": False,
            "zeroline": False,
        },
        yaxis={
            "autorange": "reversed",
            "type": "category",
            "automargin": True,
            "tickfont": {"size": 10},
            "showgrid": False,
        },
    )


def _totals(figures: daily_figures.DailyFigures) -> dict[str, str]:
    totals = figures.totals
    return {
        "revenue": usd(totals.revenue_micro),
        "fees": usd(totals.fees_micro),
        "earnings": usd(totals.provider_earnings_micro),
        "gpu_hours": f"{totals.gpu_hours:,.1f}",
        "customers": f"{totals.customers:,}",
        "providers": f"{totals.providers:,}",
        "period": f"{figures.start:%Y-%m-%d} to {figures.end:%Y-%m-%d} (UTC), "
        + count(len(figures.days), "day"),
    }


def _tables_csv(table: str) -> str:
    with session_scope(parts.current().engine) as session:
        return analytics.as_csv(analytics.TABLES[table](session))


class AdminAnalyticsState(SessionState):
    period: str = "30d"
    since: str = ""  # the period's days as YYYY-MM-DD, both included
    until: str = ""
    totals: dict[str, str] = {}
    money: go.Figure = go.Figure()
    gpu_hours: go.Figure = go.Figure()
    active: go.Figure = go.Figure()
    has_usage: bool = False
    loaded: bool = False
    error: str = ""
    cohort_who: str = "customers"
    cohort_by: str = "month"
    cohorts: go.Figure = go.Figure()
    has_cohorts: bool = False
    cohorts_loaded: bool = False

    @rx.var
    def periods(self) -> list[str]:
        return list(PERIODS)

    @rx.var
    def cohorts_empty(self) -> str:
        periods = signup_cohorts.DEFAULT_PERIODS
        return f"No {self.cohort_who} signed up in the last {periods} {self.cohort_by}s."

    async def _draw(self, since: date | None, until: date | None) -> None:
        try:
            figures = await asyncio.to_thread(_figures, since, until)
        except DomainError as refused:
            self.error = refused.message
            return
        self.error = ""
        self.since, self.until = f"{figures.start:%Y-%m-%d}", f"{figures.end:%Y-%m-%d}"
        self.totals = _totals(figures)
        self.money, self.gpu_hours, self.active = (
            _money_figure(figures),
            _gpu_hours_figure(figures),
            _active_figure(figures),
        )
        self.has_usage = figures.totals.gpu_hours > 0 or figures.totals.revenue_micro > 0
        self.loaded = True

    async def _draw_cohorts(self) -> None:
        found = await asyncio.to_thread(_cohorts, self.cohort_who, self.cohort_by)
        self.cohorts, self.has_cohorts = _cohorts_figure(found), bool(found.cohorts)
        self.cohorts_loaded = True

    async def _draw_period(self) -> None:
        today = datetime.now(UTC).date()
        await self._draw(today - timedelta(days=PERIODS[self.period] - 1), today)

    @rx.event
    @for_users(Role.ADMIN, page_says=True)
    async def load(self) -> None:
        if self.period not in PERIODS:
            self.period = "30d"
        await self._draw_period()
        await self._draw_cohorts()

    @rx.event
    @for_users(Role.ADMIN)
    async def pick_cohort_who(self, value: str | list[str]) -> None:
        if isinstance(value, str) and value in signup_cohorts.WHO:
            self.cohort_who = value
            await self._draw_cohorts()

    @rx.event
    @for_users(Role.ADMIN)
    async def pick_cohort_by(self, value: str | list[str]) -> None:
        if isinstance(value, str) and value in signup_cohorts.BY:
            self.cohort_by = value
            await self._draw_cohorts()

    @rx.event
    @for_users(Role.ADMIN)
    async def pick_period(self, value: str | list[str]) -> None:
        if isinstance(value, str) and value in PERIODS:
            self.period = value
            await self._draw_period()

    @rx.event
    @for_users(Role.ADMIN)
    async def show_days(self, form: dict[str, Any]) -> None:
        try:
            since = dates.day_of(str(form.get("since", ""))[:10], field="From")
            until = dates.day_of(str(form.get("until", ""))[:10], field="To")
        except DomainError as refused:
            self.error = refused.message
            return
        self.period = CUSTOM
        await self._draw(since, until)

    @rx.event
    @for_users(Role.ADMIN)
    async def download_days(self) -> Any:
        try:
            since, until = date.fromisoformat(self.since), date.fromisoformat(self.until)
            figures = await asyncio.to_thread(_figures, since, until)
        except (DomainError, ValueError):
            return rx.toast.error("Choose a period first.")
        return rx.download(
            data=daily_figures.as_csv(figures), filename=f"gpu-portal-daily-{self.since}-{self.until}.csv"
        )

    @rx.event
    @for_users(Role.ADMIN)
    async def download_table(self, table: str) -> Any:
        if table not in analytics.TABLES:
            return None
        text = await asyncio.to_thread(_tables_csv, table)
        return rx.download(data=text, filename=f"gpu-portal-{table}.csv")
