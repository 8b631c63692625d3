"""A provider's earnings per UTC day (``billing.earnings_by_day``), in all and for one device: summed by the
database on SQLite and PostgreSQL, for the device page's trend and the /earnings chart."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from portal.infra.db import session_scope
from portal.models import DeviceState
from portal.services.money import billing
from tests.factories import make_device, make_provider, make_usage, make_user

TODAY = date(2026, 3, 30)


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def test_earnings_per_utc_day_of_one_device_or_all_with_empty_days_as_zeros(engine):
    with session_scope(engine) as session:
        customer, provider = make_user(session), make_provider(session)
        rig = make_device(session, provider, state=DeviceState.HIRED)
        other = make_device(session, provider, state=DeviceState.HIRED)
        stranger = make_device(session, make_provider(session), state=DeviceState.HIRED)
        # Today: two periods on the rig (charges less the fee), one on the provider's other device.
        make_usage(session, customer_id=customer.id, device=rig, ended_at=at(TODAY, 1))
        make_usage(
            session,
            customer_id=customer.id,
            device=rig,
            ended_at=at(TODAY, 23, 59),
            amount_micro=1_000_000,
            fee_micro=100_000,
        )
        make_usage(session, customer_id=customer.id, device=other, ended_at=at(TODAY, 12))
        # A period ending at midnight counts on the day it ends; the oldest day of the 30 is in.
        make_usage(session, customer_id=customer.id, device=rig, ended_at=at(TODAY - timedelta(days=2), 0))
        make_usage(session, customer_id=customer.id, device=rig, ended_at=at(TODAY - timedelta(days=29), 0))
        # Outside the 30 days (the day before them, and tomorrow), and another provider's device.
        make_usage(
            session, customer_id=customer.id, device=rig, ended_at=at(TODAY - timedelta(days=30), 23, 59)
        )
        make_usage(session, customer_id=customer.id, device=rig, ended_at=at(TODAY + timedelta(days=1), 0))
        make_usage(session, customer_id=customer.id, device=stranger, ended_at=at(TODAY, 2))

        on_rig = billing.earnings_by_day(session, provider, device_id=rig.id, today=TODAY)
        everywhere = billing.earnings_by_day(session, provider, today=TODAY)
        nothing = billing.earnings_by_day(session, provider, device_id=stranger.id, today=TODAY)

    assert [d["day"] for d in on_rig] == [(TODAY - timedelta(days=29 - n)).isoformat() for n in range(30)]
    earned = {d["day"]: d["earned_micro"] for d in on_rig if d["earned_micro"]}
    assert earned == {
        TODAY.isoformat(): 1_800_000 + 900_000,
        (TODAY - timedelta(days=2)).isoformat(): 1_800_000,
        (TODAY - timedelta(days=29)).isoformat(): 1_800_000,
    }
    assert everywhere[-1]["earned_micro"] == 1_800_000 + 900_000 + 1_800_000  # the other device's too
    assert sum(d["earned_micro"] for d in everywhere) == 4 * 1_800_000 + 900_000
    # Someone else's device: nothing of this provider's earned there.
    assert len(nothing) == 30 and not any(d["earned_micro"] for d in nothing)
