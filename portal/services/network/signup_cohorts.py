"""Sign-up cohorts for the admin: customers (or providers) grouped by the month or week (UTC) they signed
up, and how many of each cohort were active in that period and each one after it, up to now.

A customer is active in a period when a usage record of theirs (a metered period of a cluster they ran)
ends in it; a provider when one of their devices' does (they earned). Who is a customer or a provider is
read from the roles held now; the cohort is the account's sign-up, whatever role it held then.

Counted by the database, grouped by period numbers it computes (months since year 0, Monday-based weeks
since 1970), so the service reads one row per cohort and period however many people and records there are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

from sqlalchemy import BigInteger, Integer, cast, func
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql import ColumnElement
from sqlmodel import Session, col, select

from portal.models import Role, UsageRecord, User, UserRole
from portal.services.errors import InvalidInput

Who = Literal["customers", "providers"]
By = Literal["month", "week"]
WHO: tuple[Who, ...] = ("customers", "providers")
BY: tuple[By, ...] = ("month", "week")
DEFAULT_PERIODS = 12
MAX_PERIODS = 60
SECONDS_PER_DAY = 86_400
# Week 0 starts on Monday 1969-12-29, so every week number is a Monday-to-Sunday week (1970-01-01 was a
# Thursday: three days into its week).
WEEK_ZERO = date(1969, 12, 29)
DAYS_INTO_WEEK_ZERO = 3


@dataclass(frozen=True)
class Cohort:
    start: date  # the first day of the month or week its people signed up in
    size: int  # how many signed up then
    active: list[int]  # how many were active in the sign-up period (0) and each one after it, up to now

    @property
    def shares(self) -> list[float]:
        """The share of the cohort active in each period, 0 to 1."""
        return [round(count / self.size, 4) if self.size else 0.0 for count in self.active]


@dataclass(frozen=True)
class SignupCohorts:
    who: Who
    by: By
    periods: int  # how many periods back the cohorts go: the oldest could have been active in as many
    cohorts: list[Cohort]  # the cohorts of those periods with a sign-up, oldest first

    def label(self, cohort: Cohort) -> str:
        return f"{cohort.start:%Y-%m}" if self.by == "month" else f"{cohort.start:%Y-%m-%d}"


def period_number(session: Session, moment: InstrumentedAttribute | ColumnElement, by: By) -> ColumnElement:
    """The UTC month (months since year 0) or Monday-based week (``WEEK_ZERO`` is 0) of a timestamp column,
    computed by the database."""
    if session.get_bind().dialect.name == "sqlite":
        # SQLite keeps UTC moments as text; strftime reads its fields.
        if by == "month":
            return (
                cast(func.strftime("%Y", moment), Integer) * 12
                + cast(func.strftime("%m", moment), Integer)
                - 1
            )
        seconds = cast(func.strftime("%s", moment), BigInteger)
    else:
        if by == "month":
            utc = func.timezone("UTC", moment)
            return (
                cast(func.extract("year", utc), Integer) * 12 + cast(func.extract("month", utc), Integer) - 1
            )
        seconds = cast(func.floor(func.extract("epoch", moment)), BigInteger)
    return (seconds + DAYS_INTO_WEEK_ZERO * SECONDS_PER_DAY) // (7 * SECONDS_PER_DAY)


def number_of(day: date, by: By) -> int:
    """``period_number`` of a day, in Python."""
    if by == "month":
        return day.year * 12 + day.month - 1
    return (day - WEEK_ZERO).days // 7


def start_of(number: int, by: By) -> date:
    """The first day of a period number."""
    if by == "month":
        return date(number // 12, number % 12 + 1, 1)
    return WEEK_ZERO + timedelta(weeks=number)


def signup_cohorts(
    session: Session,
    who: str = "customers",
    by: str = "month",
    periods: int = DEFAULT_PERIODS,
    *,
    today: date | None = None,
) -> SignupCohorts:
    """The cohorts of people who signed up in the last ``periods`` months or weeks (the current one
    included), each with its size and how many were active in each period since; periods nobody signed up
    in are left out. InvalidInput for an unknown ``who`` or ``by``, or ``periods`` outside 1 to
    ``MAX_PERIODS``."""
    if who not in WHO:
        raise InvalidInput("who is customers or providers.", details={"field": "who"})
    if by not in BY:
        raise InvalidInput("by is month or week.", details={"field": "by"})
    if not 1 <= periods <= MAX_PERIODS:
        raise InvalidInput(f"periods is from 1 to {MAX_PERIODS}.", details={"field": "periods"})
    today = today or datetime.now(UTC).date()
    now = number_of(today, by)
    first = now - periods + 1
    since = datetime.combine(start_of(first, by), time.min, tzinfo=UTC)
    role = Role.CUSTOMER if who == "customers" else Role.PROVIDER
    person = UsageRecord.customer_id if who == "customers" else UsageRecord.provider_id
    signed_up = period_number(session, User.created_at, by)
    cohort = signed_up.label("cohort")
    holds_role = (col(UserRole.user_id) == User.id) & (col(UserRole.role) == role)
    recent = col(User.created_at) >= since
    sizes = {
        int(number): int(size)
        for number, size in session.exec(
            select(cohort, func.count(col(User.id))).join(UserRole, holds_role).where(recent).group_by(cohort)
        ).all()
    }
    after = (period_number(session, UsageRecord.period_end, by) - signed_up).label("periods_after")
    active: dict[tuple[int, int], int] = {
        (int(number), int(later)): int(people)
        for number, later, people in session.exec(
            select(cohort, after, func.count(func.distinct(col(User.id))))
            .select_from(User)
            .join(UserRole, holds_role)
            .join(UsageRecord, col(person) == User.id)
            .where(recent, col(UsageRecord.period_end) >= since)
            .group_by(cohort, after)
        ).all()
    }
    cohorts = [
        Cohort(
            start=start_of(number, by),
            size=sizes[number],
            active=[active.get((number, later), 0) for later in range(now - number + 1)],
        )
        for number in range(first, now + 1)
        if number in sizes
    ]
    return SignupCohorts(who, by, periods, cohorts)  # type: ignore[arg-type]
