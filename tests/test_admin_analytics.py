"""The admin's figures per day (``daily_figures``): revenue, fees, earnings, GPU-hours by model and active
customers and providers summed by the database on SQLite and PostgreSQL, and the API that serves them."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlmodel import Session

from portal.infra.db import session_scope
from portal.models import DeviceState, Role
from portal.services.errors import InvalidInput
from portal.services.network import daily_figures, signup_cohorts
from tests.factories import access_token_for, make_device, make_provider, make_usage, make_user

DAY = date(2026, 3, 10)


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def a_week_of_usage(session: Session) -> dict[str, object]:
    """Two customers on two providers' devices (an H100 and two A100s) over three days of a week."""
    alice, bob = make_user(session), make_user(session)
    h100 = make_device(session, make_provider(session), state=DeviceState.HIRED, model="H100-80GB")
    a100 = make_device(session, make_provider(session), state=DeviceState.HIRED, gpus=2, model="A100-40GB")
    # DAY: alice on the H100 twice (an hour, then half an hour), bob on both A100s for an hour.
    make_usage(session, customer_id=alice.id, device=h100, ended_at=at(DAY, 1), amount_micro=2_000_000)
    make_usage(
        session,
        customer_id=alice.id,
        device=h100,
        ended_at=at(DAY, 23, 59),
        seconds=1800,
        amount_micro=1_000_000,
        fee_micro=100_000,
    )
    make_usage(
        session,
        customer_id=bob.id,
        device=a100,
        ended_at=at(DAY, 12),
        gpu_count=2,
        amount_micro=3_000_000,
        fee_micro=300_000,
    )
    # The next day's first minute belongs to the next day; two days later, alice alone.
    make_usage(session, customer_id=bob.id, device=a100, ended_at=at(DAY + timedelta(days=1), 0, 0))
    make_usage(session, customer_id=alice.id, device=h100, ended_at=at(DAY + timedelta(days=3), 9))
    # Outside the week asked for: the day before, and the day after its end.
    make_usage(session, customer_id=alice.id, device=h100, ended_at=at(DAY - timedelta(days=1), 23, 59))
    make_usage(session, customer_id=bob.id, device=a100, ended_at=at(DAY + timedelta(days=7), 0, 0))
    return {"alice": alice.id, "bob": bob.id}


def test_the_days_of_a_period_sum_usage_by_utc_day_with_empty_days_as_zeros(engine):
    with session_scope(engine) as session:
        a_week_of_usage(session)
        figures = daily_figures.daily_figures(session, DAY, DAY + timedelta(days=6))
    assert [d.day for d in figures.days] == [DAY + timedelta(days=n) for n in range(7)]
    first, second, third, fourth = figures.days[:4]
    assert (first.revenue_micro, first.fees_micro, first.provider_earnings_micro) == (
        6_000_000,
        600_000,
        5_400_000,
    )
    assert first.gpu_hours == 3.5  # 1 h + 0.5 h on one GPU, 1 h on two
    assert (first.active_customers, first.active_providers) == (2, 2)
    assert (second.revenue_micro, second.active_customers, second.active_providers) == (2_000_000, 1, 1)
    assert (third.revenue_micro, third.gpu_hours, third.active_customers) == (0, 0.0, 0)
    assert (fourth.revenue_micro, fourth.gpu_hours) == (2_000_000, 1.0)
    assert figures.gpu_hours_by_model == {
        "A100-40GB": [2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        "H100-80GB": [1.5, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
    }
    totals = figures.totals
    assert (totals.revenue_micro, totals.fees_micro, totals.provider_earnings_micro) == (
        10_000_000,
        1_000_000,
        9_000_000,
    )
    # Each customer and provider once over the week, though active on several days.
    assert (totals.gpu_hours, totals.customers, totals.providers) == (5.5, 2, 2)


def test_a_period_defaults_to_the_last_30_days_and_refuses_a_backwards_or_too_long_one():
    today = date(2026, 5, 31)
    assert daily_figures.period(None, None, today=today) == (date(2026, 5, 2), today)
    assert daily_figures.period(date(2026, 5, 30), None, today=today) == (date(2026, 5, 30), today)
    assert daily_figures.period(DAY, DAY) == (DAY, DAY)
    with pytest.raises(InvalidInput, match="before"):
        daily_figures.period(DAY, DAY - timedelta(days=1))
    with pytest.raises(InvalidInput, match="366"):
        daily_figures.period(DAY - timedelta(days=366), DAY)
    assert daily_figures.period(DAY - timedelta(days=365), DAY)[0] == DAY - timedelta(days=365)
    with pytest.raises(InvalidInput, match="between"):
        daily_figures.period(date(1969, 12, 31), DAY)


def test_the_days_export_as_csv_with_money_as_numbers(sqlite_url):
    from portal.infra import migrations
    from portal.infra.db import build_engine

    migrations.upgrade(sqlite_url)
    engine = build_engine(sqlite_url)
    with session_scope(engine) as session:
        a_week_of_usage(session)
        figures = daily_figures.daily_figures(session, DAY, DAY + timedelta(days=1))
    engine.dispose()
    rows = list(csv.DictReader(io.StringIO(daily_figures.as_csv(figures))))
    assert [(r["day"], r["revenue_micro"], r["gpu_hours"], r["active_providers"]) for r in rows] == [
        ("2026-03-10", "6000000", "3.5", "2"),
        ("2026-03-11", "2000000", "1.0", "1"),
    ]


def test_admins_get_the_days_as_json_and_csv_and_bad_periods_are_refused(parts, api_client):
    with session_scope(parts.engine) as session:
        a_week_of_usage(session)
        admin = {"Authorization": f"Bearer {access_token_for(session, make_user(session, Role.ADMIN))}"}
        customer = {"Authorization": f"Bearer {access_token_for(session, make_user(session))}"}
        provider = {"Authorization": f"Bearer {access_token_for(session, make_user(session, Role.PROVIDER))}"}
    week = {"since": "2026-03-10", "until": "2026-03-16"}
    answer = api_client.get("/api/v1/admin/analytics/daily", params=week, headers=admin)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["since"], body["until"], len(body["days"])) == ("2026-03-10", "2026-03-16", 7)
    assert body["days"][0]["revenue_micro"] == 6_000_000 and body["totals"]["customers"] == 2
    assert body["gpu_hours_by_model"]["A100-40GB"][:2] == [2.0, 1.0]
    assert len(api_client.get("/api/v1/admin/analytics/daily", headers=admin).json()["days"]) == 30

    exported = api_client.get("/api/v1/admin/analytics/daily.csv", params=week, headers=admin)
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    assert "gpu-portal-daily-2026-03-10-2026-03-16.csv" in exported.headers["content-disposition"]
    assert len(list(csv.DictReader(io.StringIO(exported.text)))) == 7
    # The tables of before keep their paths.
    assert api_client.get("/api/v1/admin/analytics/revenue.csv", headers=admin).status_code == 200

    for bad in (
        {"since": "2026-03-16", "until": "2026-03-10"},
        {"since": "2025-01-01", "until": "2026-03-10"},
        {"since": "yesterday"},
        {"until": "2026-02-30"},
        {"since": "0001-01-01"},
    ):
        for path in ("/api/v1/admin/analytics/daily", "/api/v1/admin/analytics/daily.csv"):
            refused = api_client.get(path, params=bad, headers=admin)
            assert refused.status_code == 422, (bad, refused.text)
            assert refused.json()["error"]["code"] == "invalid_input"
    for path in ("/api/v1/admin/analytics/daily", "/api/v1/admin/analytics/daily.csv"):
        assert api_client.get(path, headers=customer).status_code == 403
        assert api_client.get(path, headers=provider).status_code == 403
        assert api_client.get(path).status_code == 401


def signed_up(session: Session, when: datetime, *roles: Role) -> uuid.UUID:
    person = make_user(session, *roles)
    person.created_at = when
    session.add(person)
    session.flush()
    return person.id


def test_signup_cohorts_count_who_was_active_in_each_month_and_week_after_signing_up(engine):
    today = date(2026, 5, 20)  # a Wednesday
    with session_scope(engine) as session:
        pete = signed_up(session, at(date(2026, 3, 1), 0), Role.PROVIDER)
        device = make_device(session, pete, state=DeviceState.HIRED)
        signed_up(session, at(date(2026, 2, 28), 23, 59), Role.PROVIDER)  # no device yet
        alice = signed_up(session, at(date(2026, 3, 5), 10))
        bob = signed_up(session, at(date(2026, 3, 31), 23, 59))
        carol = signed_up(session, at(date(2026, 4, 2), 8))
        signed_up(session, at(date(2026, 5, 1), 0))  # dave, never active
        erin = signed_up(session, at(date(2026, 5, 17), 23))  # the Sunday before this week
        veteran = signed_up(session, at(date(2025, 1, 1), 0))  # signed up before the window
        for who, ended in (
            (alice, at(date(2026, 3, 10), 1)),
            (alice, at(date(2026, 3, 11), 1)),  # twice in March, counted once
            (alice, at(date(2026, 4, 30), 23, 59)),
            (bob, at(date(2026, 5, 1), 0)),  # the first minute of May is May
            (carol, at(date(2026, 4, 3), 9)),
            (carol, at(date(2026, 5, 12), 9)),
            (erin, at(date(2026, 5, 18), 0, 30)),
            (veteran, at(date(2026, 3, 20), 0)),
        ):
            make_usage(session, customer_id=who, device=device, ended_at=ended)

        months = signup_cohorts.signup_cohorts(session, "customers", "month", 3, today=today)
        assert [(months.label(c), c.size, c.active) for c in months.cohorts] == [
            ("2026-03", 2, [1, 1, 1]),
            ("2026-04", 1, [1, 1]),
            ("2026-05", 2, [1]),
        ]
        assert months.cohorts[0].shares == [0.5, 0.5, 0.5]
        providers = signup_cohorts.signup_cohorts(session, "providers", "month", 4, today=today)
        # pete earned every month since March; the provider of February has earned nothing yet.
        assert [(providers.label(c), c.size, c.active) for c in providers.cohorts] == [
            ("2026-02", 1, [0, 0, 0, 0]),
            ("2026-03", 1, [1, 1, 1]),
        ]
        weeks = signup_cohorts.signup_cohorts(session, "customers", "week", 2, today=today)
        # Weeks start on Monday: erin signed up on Sunday the 17th and was active on Monday the 18th.
        assert [(weeks.label(c), c.size, c.active) for c in weeks.cohorts] == [("2026-05-11", 1, [0, 1])]
        assert (
            signup_cohorts.signup_cohorts(session, "customers", "month", 1, today=date(2027, 1, 1)).cohorts
            == []
        )
        for bad in ({"who": "admins"}, {"by": "day"}, {"periods": 0}, {"periods": 61}):
            with pytest.raises(InvalidInput):
                signup_cohorts.signup_cohorts(session, today=today, **bad)  # type: ignore[arg-type]


def test_admins_export_signup_cohorts_as_csv(parts, api_client):
    with session_scope(parts.engine) as session:
        device = make_device(session, make_provider(session), state=DeviceState.HIRED)
        customer = make_user(session)
        make_usage(session, customer_id=customer.id, device=device, ended_at=datetime.now(UTC))
        make_user(session)  # signed up this month, not active yet
        admin = {"Authorization": f"Bearer {access_token_for(session, make_user(session, Role.ADMIN))}"}
    exported = api_client.get("/api/v1/admin/analytics/signups.csv", headers=admin)
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    assert 'filename="gpu-portal-signups.csv"' in exported.headers["content-disposition"]
    month = f"{datetime.now(UTC):%Y-%m}"
    rows = [tuple(row.values()) for row in csv.DictReader(io.StringIO(exported.text))]
    assert rows == [("customers", month, "2", "0", "1", "0.5"), ("providers", month, "1", "0", "1", "1.0")]
    assert api_client.get("/api/v1/admin/analytics", headers=admin).json()["signups"][0]["active"] == 1
