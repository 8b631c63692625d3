"""The admin's figures per day over a chosen period: revenue (charges), platform fees, provider earnings,
GPU-hours (in all and by GPU model), and how many customers and providers were active.

Everything is summed by the database, grouped by the UTC day of each usage record's end (a record is a
node's metered period, at most minutes long): the service reads one row per day, or per day and model,
however many records the period holds. A customer or provider is active on a day when a usage record of
theirs ends on it; the period's totals count each of them once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import Integer, cast, func
from sqlalchemy.sql import ColumnElement
from sqlmodel import Session, col, select

from portal.models import Device, UsageRecord
from portal.services import csv_export, dates
from portal.services.errors import InvalidInput

SECONDS_PER_DAY = 86_400
MAX_DAYS = 366  # a year, leap day included: a chart of more days than pixels says nothing more
EPOCH = date(1970, 1, 1)
NO_MODEL = "no GPU model"
CSV_COLUMNS = (
    "day",
    "revenue_micro",
    "fees_micro",
    "provider_earnings_micro",
    "gpu_hours",
    "active_customers",
    "active_providers",
)


@dataclass(frozen=True)
class Day:
    day: date
    revenue_micro: int
    fees_micro: int
    provider_earnings_micro: int
    gpu_hours: float
    active_customers: int
    active_providers: int


@dataclass(frozen=True)
class Totals:
    revenue_micro: int
    fees_micro: int
    provider_earnings_micro: int
    gpu_hours: float
    customers: int  # active on any day of the period, each counted once
    providers: int


@dataclass(frozen=True)
class DailyFigures:
    start: date
    end: date  # the period's last day, included
    days: list[Day]  # every day of the period, oldest first, empty days as zeros
    gpu_hours_by_model: dict[str, list[float]]  # per model, one value per day of ``days``
    totals: Totals


def period(
    start: date | None, end: date | None, *, default_days: int = 30, today: date | None = None
) -> tuple[date, date]:
    """The days asked for, checked: ``end`` defaults to today (UTC), ``start`` to ``default_days`` before
    it, both included; InvalidInput for an end before the start, more than ``MAX_DAYS`` days, or a day
    outside the portal's span of time."""
    end = end or today or datetime.now(UTC).date()
    start = start or end - timedelta(days=default_days - 1)
    for name, day in (("since", start), ("until", end)):
        if not dates.EARLIEST.date() <= day < dates.LATEST.date():
            raise InvalidInput(f"{name} {dates.OUT_OF_RANGE}.", details={"field": name})
    if end < start:
        raise InvalidInput(
            "until is before since: the period ends after it starts.", details={"field": "until"}
        )
    if (end - start).days + 1 > MAX_DAYS:
        raise InvalidInput(f"The period spans at most {MAX_DAYS} days.", details={"field": "since"})
    return start, end


def utc_day_number(session: Session) -> ColumnElement[int]:
    """A usage record's UTC day as days since 1970-01-01, computed by the database."""
    if session.get_bind().dialect.name == "sqlite":
        # SQLite keeps the UTC moment as text; strftime('%s') reads it as seconds since the epoch.
        seconds = cast(func.strftime("%s", UsageRecord.period_end), Integer)
        return cast(seconds / SECONDS_PER_DAY, Integer)
    return cast(func.floor(func.extract("epoch", UsageRecord.period_end) / SECONDS_PER_DAY), Integer)


def _hours(gpu_seconds: int | None) -> float:
    return round(int(gpu_seconds or 0) / 3600, 3)


def daily_figures(session: Session, start: date | None, end: date | None) -> DailyFigures:
    """The figures of every day from ``start`` to ``end`` (both included; see ``period`` for the days
    taken when they are left out, and those refused)."""
    start, end = period(start, end)
    since = datetime.combine(start, time.min, tzinfo=UTC)
    until = datetime.combine(end + timedelta(days=1), time.min, tzinfo=UTC)
    in_period = (col(UsageRecord.period_end) >= since, col(UsageRecord.period_end) < until)
    day = utc_day_number(session).label("day")
    gpu_seconds = func.sum(UsageRecord.seconds * UsageRecord.gpu_count)
    by_day = {
        int(number): row
        for number, *row in session.exec(
            select(
                day,
                func.sum(UsageRecord.amount_micro),
                func.sum(UsageRecord.fee_micro),
                gpu_seconds,
                func.count(func.distinct(UsageRecord.customer_id)),
                func.count(func.distinct(UsageRecord.provider_id)),
            )
            .where(*in_period)
            .group_by(day)
        ).all()
    }
    first = (start - EPOCH).days
    numbers = range(first, first + (end - start).days + 1)
    days = []
    for number in numbers:
        revenue, fees, seconds, customers, providers = by_day.get(number, (0, 0, 0, 0, 0))
        days.append(
            Day(
                day=EPOCH + timedelta(days=number),
                revenue_micro=int(revenue or 0),
                fees_micro=int(fees or 0),
                provider_earnings_micro=int(revenue or 0) - int(fees or 0),
                gpu_hours=_hours(seconds),
                active_customers=int(customers),
                active_providers=int(providers),
            )
        )
    model = func.coalesce(Device.gpu_model, NO_MODEL).label("model")
    by_model: dict[str, list[float]] = {}
    for number, name, seconds in session.exec(
        select(day, model, gpu_seconds)
        .join(Device, col(Device.id) == UsageRecord.device_id)
        .where(*in_period)
        .group_by(day, model)
        .order_by(model)
    ).all():
        by_model.setdefault(str(name or NO_MODEL), [0.0] * len(days))[int(number) - first] = _hours(seconds)
    customers, providers, all_seconds = session.exec(
        select(
            func.count(func.distinct(UsageRecord.customer_id)),
            func.count(func.distinct(UsageRecord.provider_id)),
            gpu_seconds,
        ).where(*in_period)
    ).one()
    revenue = sum(d.revenue_micro for d in days)
    fees = sum(d.fees_micro for d in days)
    totals = Totals(
        revenue_micro=revenue,
        fees_micro=fees,
        provider_earnings_micro=revenue - fees,
        gpu_hours=_hours(all_seconds),
        customers=int(customers),
        providers=int(providers),
    )
    return DailyFigures(start, end, days, by_model, totals)


def as_csv(figures: DailyFigures) -> str:
    """The days as a CSV file (money in micro-USD, as numbers a spreadsheet sums)."""
    return csv_export.csv_text(
        CSV_COLUMNS,
        (
            (
                f"{d.day:%Y-%m-%d}",
                d.revenue_micro,
                d.fees_micro,
                d.provider_earnings_micro,
                d.gpu_hours,
                d.active_customers,
                d.active_providers,
            )
            for d in figures.days
        ),
    )
