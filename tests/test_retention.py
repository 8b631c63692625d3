"""Retention: operational rows past their window go in bounded batches, what a page or an actor still reads
stays, and money is never touched."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from portal.infra.cache import MemoryCache
from portal.infra.db import session_scope
from portal.models import (
    AuditLog,
    AuthSession,
    Cluster,
    ClusterEvent,
    ClusterNode,
    ClusterState,
    CommandState,
    Deposit,
    DeviceCommand,
    DeviceState,
    FaultEvent,
    GpuSample,
    HearingGap,
    LedgerEntry,
    LedgerTransaction,
    MeshCertificate,
    NodeState,
    Payout,
    RefreshToken,
    Role,
    StateTransition,
    UsageRecord,
)
from portal.models.base import utcnow
from portal.parts import AppParts, in_use
from portal.services import retention
from portal.services.providers import telemetry
from tasks.retention import prune_old_rows
from tests.conftest import settings_for
from tests.factories import make_device, make_usage, make_user
from tests.test_clusters import customer_with

SETTINGS = settings_for()
MONEY = (LedgerTransaction, LedgerEntry, UsageRecord, Payout, Deposit)


def days_ago(days: float) -> datetime:
    return utcnow() - timedelta(days=days)


def sample(device_id: uuid.UUID, days: float) -> GpuSample:
    return GpuSample(
        device_id=device_id,
        at=days_ago(days),
        gpu_index=0,
        util_pct=50,
        mem_used_mb=1,
        temp_c=60,
        power_w=300,
    )


def move(kind: str, entity_id: object, to_state: str, days: float) -> StateTransition:
    return StateTransition(entity_type=kind, entity_id=str(entity_id), to_state=to_state, at=days_ago(days))


def cluster(session: Session, owner_id: uuid.UUID, state: ClusterState, ended_days: float | None) -> Cluster:
    found = Cluster(
        owner_id=owner_id,
        name="c",
        state=state,
        gpu_model="H100-80GB",
        gpu_count=1,
        duration_hours=1,
        price_per_gpu_hour_micro=1,
        created_at=days_ago(200),
        ended_at=None if ended_days is None else days_ago(ended_days),
    )
    session.add(found)
    session.flush()
    return found


def event(cluster_id: uuid.UUID, kind: str, days: float) -> ClusterEvent:
    return ClusterEvent(cluster_id=cluster_id, kind=kind, message=kind, at=days_ago(days))


def command(device_id: uuid.UUID, state: CommandState, completed_days: float | None) -> DeviceCommand:
    return DeviceCommand(
        device_id=device_id,
        kind="stop_ray",
        state=state,
        created_at=days_ago(30),
        completed_at=None if completed_days is None else days_ago(completed_days),
    )


def counts(engine: Engine, *models: type) -> dict[str, int]:
    with session_scope(engine) as session:
        return {
            model.__name__: session.exec(select(func.count()).select_from(model)).one() for model in models
        }


def test_old_operational_rows_go_and_recent_or_still_read_ones_stay(engine):
    with session_scope(engine) as session:
        provider = make_user(session, Role.PROVIDER)
        device = make_device(session, provider.id, state=DeviceState.READY)
        hired = make_device(session, provider.id, state=DeviceState.HIRED)
        customer_id = customer_with(session, 50_000_000)  # a ledger posting
        make_usage(session, customer_id=customer_id, device=device, ended_at=days_ago(1000))
        session.add(
            Payout(provider_id=provider.id, wallet_address="w", amount_micro=1, created_at=days_ago(900))
        )
        session.add(Deposit(user_id=customer_id, token_account="t", amount_micro=1, created_at=days_ago(900)))
        session.add_all([sample(device.id, 8), sample(device.id, 1 / 24)])
        payout_id = uuid.uuid4()
        session.add_all(
            [
                move("device", device.id, "verifying", 100),
                move("device", device.id, "ready", 95),  # the state the window opens in: kept
                move("device", device.id, "hired", 10),
                move("cluster", uuid.uuid4(), "terminated", 100),  # its row keeps its state: goes
                move("payout", payout_id, "submitted", 500),  # money: kept, however old
                move("payout", payout_id, "confirmed", 499),
            ]
        )
        session.add_all(
            [
                FaultEvent(device_id=device.id, kind="old", message="old", at=days_ago(100)),
                FaultEvent(device_id=device.id, kind="recent", message="recent", at=days_ago(10)),
                HearingGap(started_at=days_ago(40), ended_at=days_ago(40)),
                HearingGap(started_at=days_ago(1), ended_at=days_ago(1)),
            ]
        )
        ended_long_ago = cluster(session, customer_id, ClusterState.TERMINATED, 100)
        ended_lately = cluster(session, customer_id, ClusterState.TERMINATED, 10)
        running = cluster(session, customer_id, ClusterState.RUNNING, None)
        session.add_all(
            [
                event(ended_long_ago.id, "created", 101),
                event(ended_long_ago.id, ClusterState.TERMINATED, 100),
                event(ended_lately.id, "created", 11),
                event(running.id, "created", 200),  # its owner still sees the log
            ]
        )
        answered_old = command(device.id, CommandState.SUCCEEDED, 10)
        start_of_running = command(device.id, CommandState.SUCCEEDED, 10)  # its head address is read
        stop_not_handed_back = command(hired.id, CommandState.SUCCEEDED, 10)
        answered_lately = command(device.id, CommandState.FAILED, 1)
        still_queued = command(device.id, CommandState.QUEUED, None)
        session.add_all([answered_old, start_of_running, stop_not_handed_back, answered_lately, still_queued])
        session.flush()
        session.add_all(
            [
                ClusterNode(
                    cluster_id=running.id,
                    device_id=device.id,
                    role="head",
                    state=NodeState.JOINED,
                    gpu_count=1,
                    command_id=start_of_running.id,
                ),
                ClusterNode(
                    cluster_id=ended_lately.id,
                    device_id=hired.id,
                    role="head",
                    state=NodeState.RELEASED,
                    gpu_count=1,
                    command_id=stop_not_handed_back.id,
                ),
            ]
        )
        expired = AuthSession(user_id=customer_id, created_at=days_ago(80), expires_at=days_ago(40))
        revoked = AuthSession(
            user_id=customer_id, expires_at=days_ago(-10), revoked_at=days_ago(40), revoked_reason="sign-out"
        )
        live = AuthSession(user_id=customer_id, created_at=days_ago(20), expires_at=days_ago(-10))
        session.add_all([expired, revoked, live])
        session.flush()
        session.add_all(
            RefreshToken(session_id=auth.id, token_hash=uuid.uuid4().hex, used_at=days_ago(19))
            for auth in (expired, revoked, live)
        )
        session.add_all(
            MeshCertificate(
                fingerprint=uuid.uuid4().hex,
                groups="g",
                issued_at=days_ago(days + 1),
                expires_at=days_ago(days),
            )
            for days in (10, 1)
        )
        session.add_all(
            AuditLog(actor_kind="user", action=f"old-{days}", at=days_ago(days)) for days in (500, 300)
        )
    money_before = counts(engine, *MONEY)

    with in_use(AppParts(SETTINGS, engine, MemoryCache())):
        prune_old_rows.fn()  # as the scheduler sends it every 10 minutes

    assert counts(engine, *MONEY) == money_before and all(money_before.values())
    with session_scope(engine) as session:
        assert [round((utcnow() - at).days) for at in session.exec(select(GpuSample.at)).all()] == [0]
        moves = session.exec(select(StateTransition.to_state).order_by(col(StateTransition.at))).all()
        assert moves == ["submitted", "confirmed", "ready", "hired"]
        assert session.exec(select(FaultEvent.kind)).all() == ["recent"]
        assert len(session.exec(select(HearingGap.id)).all()) == 1
        kept_events = session.exec(select(ClusterEvent.cluster_id, ClusterEvent.kind)).all()
        assert sorted(kept_events) == sorted([(ended_lately.id, "created"), (running.id, "created")])
        kept_commands = set(session.exec(select(DeviceCommand.id)).all())
        assert kept_commands == {
            start_of_running.id,
            stop_not_handed_back.id,
            answered_lately.id,
            still_queued.id,
        }
        assert session.exec(select(AuthSession.id)).all() == [live.id]
        assert session.exec(select(RefreshToken.session_id)).all() == [live.id]
        assert len(session.exec(select(MeshCertificate.id)).all()) == 1
        assert session.exec(select(AuditLog.action)).all() == ["old-300"]


def test_a_backlog_goes_in_bounded_batches_oldest_first(engine):
    settings = settings_for(retention_batch_rows=100)
    with session_scope(engine) as session:
        device = make_device(session, make_user(session, Role.PROVIDER).id, state=DeviceState.READY)
        # 250 faults past the window, a minute apart, raised oldest first, and one inside it.
        session.add_all(
            FaultEvent(device_id=device.id, kind="k", message="m", at=days_ago(91 + minute / 1440))
            for minute in reversed(range(250))
        )
        session.add(FaultEvent(device_id=device.id, kind="k", message="m", at=days_ago(1)))
    rule = next(rule for rule in retention.rules(settings) if rule.table.name == "fault_events")

    deleted, newest = retention.prune_batch(engine, rule, utcnow() - rule.window, 100)
    assert deleted == 100  # one batch, no more
    with session_scope(engine) as session:
        oldest_left, first_id_left = session.exec(
            select(func.min(FaultEvent.at), func.min(FaultEvent.id))
        ).one()
    assert utcnow() - oldest_left < timedelta(days=91, minutes=150)  # the oldest hundred went first
    assert newest == first_id_left - 1  # where the next batch starts

    out_of_time = retention.prune(engine, settings, budget_s=0, tables=["fault_events"])
    assert out_of_time.out_of_time and out_of_time.rows == {"fault_events": 0}  # the next pass carries on
    pruned = retention.prune(engine, settings, tables=["fault_events"])
    assert (pruned.rows, pruned.batches, pruned.out_of_time) == ({"fault_events": 150}, 2, False)
    assert counts(engine, FaultEvent) == {"FaultEvent": 1}


def test_batches_go_on_past_the_rows_kept_between_expired_ones(engine):
    settings = settings_for(retention_batch_rows=100)
    with session_scope(engine) as session:
        for _ in range(120):  # each device's moves, one after another: a kept row after each expired one
            device_id = uuid.uuid4()
            session.add(move("device", device_id, "ready", 100))
            session.add(move("device", device_id, "hired", 95))  # the state its window opens in
            session.flush()

    pruned = retention.prune(engine, settings, tables=["state_transitions"])

    assert (pruned.rows, pruned.batches) == ({"state_transitions": 120}, 2)
    with session_scope(engine) as session:
        assert session.exec(select(StateTransition.to_state).distinct()).all() == ["hired"]
        assert len(session.exec(select(StateTransition.id)).all()) == 120


def test_the_sample_store_folds_old_samples_and_the_day_chart_reads_the_same(engine):
    with session_scope(engine) as session:
        device = make_device(session, make_user(session, Role.PROVIDER).id, state=DeviceState.READY)
        now = utcnow()
        # Three hours of beats every 5 s, and two hours of them two days ago: 3,600 samples.
        moments = [now - timedelta(seconds=5 * beat) for beat in range(2160)]
        moments += [now - timedelta(days=2, seconds=5 * beat) for beat in range(1440)]
        session.add_all(
            GpuSample(
                device_id=device.id,
                at=at,
                gpu_index=0,
                util_pct=float(number % 97),
                mem_used_mb=1000.0,
                temp_c=float(number % 13),
                power_w=300.0,
            )
            for number, at in enumerate(moments)
        )
    with session_scope(engine) as session:
        day_chart = telemetry.series(session, SETTINGS, [device.id], 1440)

    pruned = retention.prune(engine, SETTINGS, tables=["gpu_samples"])

    with session_scope(engine) as session:
        kept = session.exec(select(GpuSample.at)).all()
        assert telemetry.series(session, SETTINGS, [device.id], 1440) == day_chart
    # The last hour raw (720 to 840 samples from the 10-minute boundary before it), the two hours before it
    # in 10-minute rows, the day-old ones in hourly rows.
    assert 720 + 12 <= len(kept) <= 840 + 13 + 3, len(kept)
    assert pruned.rows["gpu_samples folded"] == 3600 - len(kept)
    assert retention.prune(engine, SETTINGS, tables=["gpu_samples"]).rows["gpu_samples folded"] == 0
