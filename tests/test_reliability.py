"""Reliability: uptime over 30 days lowered by each serious fault, 0 until a device proves its compute;
stored by the periodic actor, explained in words, and preferred by placement at equal price."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import select

from portal.infra.db import session_scope
from portal.models import Device, DeviceState, FaultEvent, StateTransition
from portal.models.base import utcnow
from portal.parts import in_use as parts_in_use
from portal.services.providers import reliability
from portal.services.rentals import placement
from tasks import devices as device_actors
from tests.test_clusters import SETTINGS, market_with, spec


def up_since(session, device: Device, days: float) -> None:
    """The device was added ``days`` ago and has been ready since."""
    device.created_at = device.created_at - timedelta(days=days)
    session.add(device)
    session.add(
        StateTransition(
            entity_type="device",
            entity_id=str(device.id),
            from_state=DeviceState.REGISTERED,
            to_state=DeviceState.READY,
            reason="test",
            at=device.created_at,
        )
    )


def fault(session, device: Device, severity: str = "error") -> None:
    session.add(FaultEvent(device_id=device.id, kind="node_lost", severity=severity, message="lost"))


def test_the_score_is_uptime_lowered_by_each_serious_fault(engine):
    with session_scope(engine) as session:
        steady, flaky, fresh = market_with(session, [1, 1, 1])
        for device in (steady, flaky):
            up_since(session, device, 3)
        fault(session, flaky)
        fault(session, flaky)
        fault(session, flaky, severity="warning")  # not serious: not counted
        fresh.verified_at = None
    with session_scope(engine) as session:
        steady_score = reliability.assess(session, session.get(Device, steady.id))
        flaky_score = reliability.assess(session, session.get(Device, flaky.id))
        fresh_score = reliability.assess(session, session.get(Device, fresh.id))
    assert steady_score.uptime == pytest.approx(1.0) and steady_score.score == pytest.approx(1.0)
    assert flaky_score.faults == 2 and flaky_score.score == pytest.approx(0.81)
    assert flaky_score.explained() == (
        "0.81 = 100% uptime over 30 days x 0.9 per fault (2 serious faults in that time)."
    )
    assert fresh_score.score == 0.0 and "not proved" in fresh_score.explained()
    with session_scope(engine) as session:
        proved = session.get(Device, fresh.id)
        proved.verified_at = utcnow()
        assert reliability.assess(session, proved).explained().startswith("New: under a day of history")


def test_the_actor_stores_scores_and_placement_prefers_the_reliable_device_at_equal_price(parts):
    with session_scope(parts.engine) as session:
        flaky, steady = market_with(session, [1, 1])
        for device in (flaky, steady):
            up_since(session, device, 2)
        fault(session, flaky)
    with parts_in_use(parts):
        device_actors.refresh_reliability.fn()
    with session_scope(parts.engine) as session:
        stored = dict(session.exec(select(Device.id, Device.reliability)).all())
        assert stored[steady.id] == pytest.approx(1.0) and stored[flaky.id] == pytest.approx(0.9)
        chosen = placement.reserve(session, SETTINGS, spec(1).placement(), "test")
    assert [candidate.device_id for candidate in chosen or []] == [steady.id]


def move(session, device: Device, to_state: str, days_ago: float) -> None:
    session.add(
        StateTransition(
            entity_type="device",
            entity_id=str(device.id),
            from_state="",
            to_state=to_state,
            reason="test",
            at=utcnow() - timedelta(days=days_ago),
        )
    )


def test_the_periodic_scores_of_all_devices_equal_each_device_assessed_alone(engine):
    """``changed_scores`` reads every device at once (three queries, not two per device); it must say
    what ``assess`` says of each, across the window's edge, outages, faults and unverified devices."""
    with session_scope(engine) as session:
        old, flapping, recent, unproved = market_with(session, [1, 1, 1, 1])
        for device in (old, flapping, unproved):
            device.created_at -= timedelta(days=60)
        recent.created_at -= timedelta(days=2)
        move(session, old, DeviceState.READY, 45)  # ready since before the window opened
        move(session, flapping, DeviceState.READY, 50)
        move(session, flapping, DeviceState.OFFLINE, 40)  # offline when the window opens
        move(session, flapping, DeviceState.READY, 20)
        move(session, flapping, DeviceState.OFFLINE, 5.5)
        move(session, flapping, DeviceState.HIRED, 5)
        move(session, recent, DeviceState.VERIFYING, 2)
        move(session, recent, DeviceState.READY, 1.9)
        fault(session, flapping)
        fault(session, recent, severity="critical")
        unproved.verified_at = None
        for device in (old, flapping, recent, unproved):
            device.reliability = 0.5  # stale: every score changes
            session.add(device)
    with session_scope(engine) as session:
        alone = {d.id: reliability.assess(session, d).score for d in session.exec(select(Device)).all()}
        together = reliability.changed_scores(session)
    assert together == pytest.approx(alone, abs=1e-4)
    assert together[unproved.id] == 0.0 and 0.0 < together[flapping.id] < together[old.id] == 1.0
