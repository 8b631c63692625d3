"""Idle devices whose agent falls silent go offline with a fault event, and come back with a heartbeat."""

from datetime import timedelta

from sqlmodel import col, select

from portal.infra.db import session_scope
from portal.models import Device, DeviceState, FaultEvent, HearingGap
from portal.models.base import utcnow
from portal.parts import in_use as parts_in_use
from portal.services.providers import agents, faults, liveness
from tasks import devices
from tests.test_clusters import SETTINGS, market_with


def test_a_silent_idle_device_goes_offline_and_comes_back_with_its_next_beat(parts):
    with session_scope(parts.engine) as session:
        silent, hired, chatty = market_with(session, [1, 1, 1])
        silent.last_heartbeat_at = hired.last_heartbeat_at = utcnow() - timedelta(minutes=1)
        hired.state = DeviceState.HIRED
        session.add_all([silent, hired])
    with parts_in_use(parts):
        devices.mark_silent_devices_offline.fn()
    with session_scope(parts.engine) as session:
        states = {d.id: d.state for d in session.exec(select(Device)).all()}
        assert states == {silent.id: "offline", hired.id: "hired", chatty.id: "ready"}
        (fault,) = session.exec(select(FaultEvent)).all()
        assert fault.device_id == silent.id and fault.kind == "missed_heartbeats"
        assert faults.silent_devices(session, SETTINGS) == []
    with session_scope(parts.engine) as session:
        state, _ = agents.heartbeat(session, parts.cache, silent.id, samples=[], ray={"state": "none"})
    assert state == DeviceState.READY


def test_the_portals_own_deafness_is_no_devices_silence(parts):
    """A portal restart silences every agent at once: that time is recorded as a gap and forgiven."""
    long_ago = utcnow() - timedelta(seconds=80)
    with session_scope(parts.engine) as session:
        first, second = market_with(session, [1, 1])
        first.last_heartbeat_at = second.last_heartbeat_at = long_ago
        session.add_all([first, second])
    with session_scope(parts.engine) as session:
        assert faults.silent_devices(session, SETTINGS) == []  # nobody heard: the portal is deaf
    with session_scope(parts.engine) as session:
        agents.heartbeat(session, parts.cache, first.id, samples=[], ray={"state": "none"})
    with session_scope(parts.engine) as session:
        (gap,) = session.exec(select(HearingGap)).all()
        assert abs((gap.started_at - long_ago).total_seconds()) < 1 and gap.ended_at > long_ago
        assert faults.silent_devices(session, SETTINGS) == []  # the second agent gets its time to return
        # A minute after the portal heard again (past the agents' retry backoff), the second agent is still
        # silent: that is its own silence.
        gap.started_at -= timedelta(seconds=90)
        gap.ended_at -= timedelta(seconds=90)
        device = session.get(Device, second.id)
        device.last_heartbeat_at -= timedelta(seconds=90)
        session.add_all([gap, device])
    with session_scope(parts.engine) as session:
        assert faults.silent_devices(session, SETTINGS) == [second.id]


def test_a_beat_noted_as_the_portal_went_down_leaves_the_outage_a_gap(parts):
    """A beat noted in the cache just before the portal died is flushed with the first beats after its
    return: the outage between them is a gap too, so agents still backing off are not called silent."""
    now = utcnow()
    long_ago, dying = now - timedelta(seconds=120), now - timedelta(seconds=80)
    with session_scope(parts.engine) as session:
        first, second = market_with(session, [1, 1])
        first.last_heartbeat_at = second.last_heartbeat_at = long_ago
        session.add_all([first, second])
    # The second agent's beat was noted as the portal went down, the first agent's once it was back.
    liveness.record(parts.cache, second.id, samples=[], ray={"state": "none"}, now=dying, sweep_s=600)
    liveness.record(parts.cache, first.id, samples=[], ray={"state": "none"}, now=now, sweep_s=600)
    with session_scope(parts.engine) as session:
        liveness.flush(session, parts.cache)
    with session_scope(parts.engine) as session:
        gaps = session.exec(select(HearingGap).order_by(col(HearingGap.started_at))).all()
        assert [(g.started_at, g.ended_at) for g in gaps] == [(long_ago, dying), (dying, now)]
        assert faults.silent_devices(session, SETTINGS) == []


def busy(util: float, xid: int = 0, ecc: int = 0) -> list[dict]:
    return [
        {
            "index": 0,
            "util_pct": util,
            "mem_used_mb": 1000,
            "temp_c": 60,
            "power_w": 300,
            "xid_errors": xid,
            "ecc_uncorrected": ecc,
        }
    ]


def sweep(parts, device_id, samples: list[dict]) -> list[str]:
    with session_scope(parts.engine) as session:
        agents.heartbeat(session, parts.cache, device_id, samples=samples, ray={"state": "none"})
    with session_scope(parts.engine) as session:
        return [fault.kind for fault in faults.gpu_faults(session, parts.cache, SETTINGS)]


def test_gpus_busy_on_an_unhired_device_raise_one_double_renting_fault(parts):
    with session_scope(parts.engine) as session:
        idle, hired = market_with(session, [1, 1])
        hired.state = DeviceState.HIRED
        session.add(hired)
    assert [sweep(parts, idle.id, busy(90)) for _ in range(4)] == [[], [], ["gpu_busy_while_idle"], []]
    assert sweep(parts, idle.id, busy(2)) == []  # quiet again: the count starts over
    assert [sweep(parts, hired.id, busy(95)) for _ in range(4)] == [[], [], [], []]  # its own cluster's work
    with session_scope(parts.engine) as session:
        (fault,) = session.exec(select(FaultEvent)).all()
        assert fault.device_id == idle.id and "double-renting" in fault.message


def test_a_rising_xid_error_count_raises_a_fault_once_per_new_value(parts):
    with session_scope(parts.engine) as session:
        (device,) = market_with(session, [1])
    assert sweep(parts, device.id, busy(1, xid=0)) == []
    assert sweep(parts, device.id, busy(1, xid=43)) == ["gpu_xid"]
    assert sweep(parts, device.id, busy(1, xid=43)) == []
    assert sweep(parts, device.id, busy(1, xid=79)) == ["gpu_xid"]


def test_a_rising_uncorrectable_ecc_count_raises_a_fault_for_the_new_errors(parts):
    with session_scope(parts.engine) as session:
        (device,) = market_with(session, [1])
    assert sweep(parts, device.id, busy(1, ecc=0)) == []
    assert sweep(parts, device.id, busy(1, ecc=2)) == ["gpu_ecc"]
    assert sweep(parts, device.id, busy(1, ecc=2)) == []
    assert sweep(parts, device.id, busy(1, ecc=0)) == []  # the driver reloaded: the count starts over
    assert sweep(parts, device.id, busy(1, ecc=1)) == ["gpu_ecc"]
    with session_scope(parts.engine) as session:
        messages = [f.message for f in session.exec(select(FaultEvent).order_by(col(FaultEvent.id))).all()]
    assert messages == [
        "GPU 0 reported 2 uncorrectable ECC error(s) (2 since its driver loaded): its memory is failing.",
        "GPU 0 reported 1 uncorrectable ECC error(s) (1 since its driver loaded): its memory is failing.",
    ]


def test_one_sweep_raises_each_devices_own_faults(parts):
    """The sweep reads every GPU's kept counts at once: each fault lands on its own device and GPU."""
    with session_scope(parts.engine) as session:
        with_xid, with_ecc, healthy = market_with(session, [1, 1, 1])
    for device, samples in ((with_xid, busy(1, xid=13)), (with_ecc, busy(1, ecc=4)), (healthy, busy(1))):
        with session_scope(parts.engine) as session:
            agents.heartbeat(session, parts.cache, device.id, samples=samples, ray={"state": "none"})
    with session_scope(parts.engine) as session:
        raised = {(f.device_id, f.kind) for f in faults.gpu_faults(session, parts.cache, SETTINGS)}
    assert raised == {(with_xid.id, "gpu_xid"), (with_ecc.id, "gpu_ecc")}
    with session_scope(parts.engine) as session:
        assert faults.gpu_faults(session, parts.cache, SETTINGS) == []  # the same counts, kept
