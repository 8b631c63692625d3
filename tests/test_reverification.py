"""Idle devices prove their compute again periodically, through their real agent; hired ones never do.
And the periodic ticks are sent once per period however many portal processes tick."""

import uuid
from datetime import timedelta

import pytest
from sqlmodel import select

from portal.infra.cache import MemoryCache
from portal.infra.db import session_scope
from portal.models import Device, DeviceCommand, DeviceState, FaultEvent
from portal.models.base import utcnow
from portal.parts import in_use as parts_in_use
from portal.services.providers import agents, verification
from tasks import devices, scheduler
from tests.conftest import wait_until
from tests.test_clusters import market_with
from tests.test_gpu_pool import RunningAgent, WrongAgent, add_device, device_row, simulated_agent


@pytest.fixture
def actors_use(portal_api):
    """The actors work on the test's database and wake-ups."""
    with parts_in_use(portal_api[1]):
        yield portal_api


def age_proof(parts, device_id: str, hours: int) -> None:
    with session_scope(parts.engine) as session:
        device = session.get(Device, uuid.UUID(device_id))
        device.verified_at = utcnow() - timedelta(hours=hours)
        session.add(device)


def test_an_idle_device_whose_proof_aged_proves_itself_again(actors_use):
    server, parts = actors_use
    device_id, token = add_device(parts)
    with RunningAgent(simulated_agent(server.url, token)):
        wait_until(lambda: device_row(parts, device_id).state == DeviceState.READY)
        age_proof(parts, device_id, hours=parts.settings.reverify_after_h - 1)
        devices.reverify_devices.fn()
        assert device_row(parts, device_id).state == DeviceState.READY  # not due yet
        age_proof(parts, device_id, hours=parts.settings.reverify_after_h + 1)
        aged = device_row(parts, device_id).verified_at
        devices.reverify_devices.fn()
        assert device_row(parts, device_id).state == DeviceState.VERIFYING  # off the market meanwhile
        wait_until(lambda: device_row(parts, device_id).verified_at > aged, timeout_s=30)
        assert device_row(parts, device_id).state == DeviceState.READY
        # The agent reports the command's outcome just after its proof: wait for it before stopping it.
        wait_until(lambda: verify_command_state(parts) == "succeeded", timeout_s=10)


def verify_command_state(parts) -> str:
    with session_scope(parts.engine) as session:
        (command,) = session.exec(select(DeviceCommand).where(DeviceCommand.kind == "verify")).all()
        return command.state


def test_a_device_failing_its_reverification_leaves_the_market_with_a_fault(actors_use):
    server, parts = actors_use
    device_id, token = add_device(parts)
    agent = WrongAgent(simulated_agent(server.url, token).client, simulated_agent(server.url, token).gpus)
    with session_scope(parts.engine) as session:
        # Proven once with the GPUs its agent reports (a re-registration with others would clear the proof).
        device = session.get(Device, uuid.UUID(device_id))
        # As an earlier run of its agent reported it (another version: its own registration shows below).
        report = agents.MachineReport(**{**agent.report(), "agent_version": "earlier"})
        agents.register(session, device, report, peer="127.0.0.1", settings=parts.settings)
        device.state, device.verified_at, device.last_heartbeat_at = DeviceState.READY, utcnow(), utcnow()
        session.add(device)
    age_proof(parts, device_id, hours=parts.settings.reverify_after_h + 1)
    with RunningAgent(agent):
        # Registered by the agent itself before reverification starts: registering while off the market,
        # it would prove at once and again for the command (the setup above wrote an agent version too).
        wait_until(lambda: device_row(parts, device_id).agent_version not in ("", "earlier"))
        devices.reverify_devices.fn()
        wait_until(lambda: device_row(parts, device_id).verified_at is None, timeout_s=30)
    assert device_row(parts, device_id).state == DeviceState.VERIFYING
    with session_scope(parts.engine) as session:
        assert session.exec(select(FaultEvent.kind)).all() == ["verification_failed"]


def test_hired_and_offline_devices_are_never_reverified(parts):
    with session_scope(parts.engine) as session:
        hired, offline, due = market_with(session, [1, 1, 1])
        hired.state = DeviceState.HIRED
        offline.last_heartbeat_at = utcnow() - timedelta(minutes=10)
        for device in (hired, offline, due):
            device.verified_at = utcnow() - timedelta(days=3)
            session.add(device)
    with session_scope(parts.engine) as session:
        assert [d.id for d in verification.due_for_reverification(session, parts.settings)] == [due.id]


def test_each_periodic_tick_is_sent_once_whatever_the_number_of_processes():
    shared = MemoryCache()
    now = 1_000_000.0
    first = scheduler.tick(shared, now)
    every_5_s = {"expire_clusters", "reconcile_clusters", "mark_silent_devices_offline", "detect_gpu_faults"}
    assert set(first) == every_5_s | {
        "reverify_devices",
        "meter_clusters",
        "prune_old_rows",
        "snapshot_network",
        "settle_payouts",
        "watch_deposits",
        "refresh_reliability",
    }
    assert scheduler.tick(shared, now + 0.5) == []  # another process, same periods
    # 1,000,005 s also begins a 15 s period of the deposit watcher.
    assert set(scheduler.tick(shared, now + 5)) == every_5_s | {"watch_deposits"}
