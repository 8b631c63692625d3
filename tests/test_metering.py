"""Metering charges verified uptime to the micro-unit and never charges downtime; random sequences of
deposits, heartbeats, downtime, metering passes, extensions, the end and payouts (with crashes between sign,
persist, send and confirm) keep the books balanced and move every token on chain exactly once."""

import contextlib
import tempfile
from datetime import timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.signature import Signature
from sqlmodel import select

from portal.infra import migrations
from portal.infra.db import build_engine, session_scope
from portal.models import (
    AccountKind,
    Cluster,
    ClusterNode,
    Deposit,
    Device,
    Payout,
    PayoutState,
    UsageRecord,
    User,
)
from portal.services.errors import Conflict
from portal.services.money import chain, deposits, escrow, ledger, metering, payouts
from portal.services.money.chain import LiteSvmChain, Outcome
from portal.services.money.treasury import local_settlement
from portal.services.rentals import clusters
from tests.conftest import settings_for
from tests.test_clusters import H100_PRICE, SETTINGS, assert_charges_are_exact, run_to_running
from tests.test_settlement import Crash, crash_at

CREDIT = 100_000_000
PAY_EVERYTHING = settings_for(payout_threshold_micro=1, payout_batch_size=10)
CRASH_POINTS = st.sampled_from([None, "signed", "persisted", "sent"])


def at(engine, cluster_id, seconds: float):
    with session_scope(engine) as session:
        return session.get(Cluster, cluster_id).started_at + timedelta(seconds=seconds)


def beat_at(engine, device_id, moment) -> None:
    with session_scope(engine) as session:
        device = session.get(Device, device_id)
        device.last_heartbeat_at = moment
        session.add(device)


def meter(engine, cluster_id, moment) -> int:
    with session_scope(engine) as session:
        cluster = clusters.lock_cluster(session, None, cluster_id)
        return metering.meter_cluster(session, SETTINGS, cluster, moment)


def lines(engine, cluster_id) -> list[UsageRecord]:
    with session_scope(engine) as session:
        return list(
            session.exec(
                select(UsageRecord).where(UsageRecord.cluster_id == cluster_id).order_by(UsageRecord.id)
            ).all()
        )


def test_a_running_cluster_is_charged_as_it_runs_and_downtime_is_not_charged(engine):
    cluster_id, customer, (device,) = run_to_running(engine, [1], 1)
    ten_minutes = at(engine, cluster_id, 600)
    beat_at(engine, device.id, ten_minutes)
    assert meter(engine, cluster_id, ten_minutes) == H100_PRICE * 600 // 3600
    assert meter(engine, cluster_id, ten_minutes) == 0  # the same moment again: nothing more
    # The agent falls silent 100 s later; 5 minutes on, only those 100 s (and one interval) are charged.
    beat_at(engine, device.id, at(engine, cluster_id, 700))
    meter(engine, cluster_id, at(engine, cluster_id, 900))
    first, second = lines(engine, cluster_id)
    assert (first.seconds, second.seconds) == (600, 100 + SETTINGS.heartbeat_interval_s)
    assert second.period_end - second.period_start == timedelta(seconds=300)
    # Still silent through the next period: nothing charged for it.
    assert meter(engine, cluster_id, at(engine, cluster_id, 1200)) == 0
    with session_scope(engine) as session:
        assert_charges_are_exact(session, cluster_id)
        spent, held = clusters.spent_and_escrow(session, SETTINGS, session.get(Cluster, cluster_id))
        assert (
            spent
            == escrow.charged(session, session.get(Cluster, cluster_id))
            == sum(line.amount_micro for line in lines(engine, cluster_id))
        )
        assert ledger.available_balance(session, customer) + held + spent == CREDIT
        assert ledger.verify_books(session) == []


class MeteredCluster(RuleBasedStateMachine):
    """A 2-node cluster on SQLite under a simulated clock: agents beat or fall silent, metering passes run,
    the customer extends, the cluster ends. The books must balance at every step, each node's charges must
    be exact, and charged seconds must lie between the node's verified uptime and its time in service."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.TemporaryDirectory()
        url = f"sqlite:///{self.directory.name}/portal.db"
        migrations.upgrade(url)
        self.engine = build_engine(url)

    @initialize()
    def deploy(self) -> None:
        self.cluster_id, self.customer, self.devices = run_to_running(self.engine, [1, 1], 2)
        self.clock = 0.0
        self.up = {device.id: True for device in self.devices}
        self.verified = {device.id: 0.0 for device in self.devices}  # seconds surely up, per device
        self.verified_at_pass = dict(self.verified)  # ...as of the last metering pass
        self.down_since: dict = {device.id: None for device in self.devices}  # clock when it fell silent
        self.last_pass = 0.0
        self.ended = False
        for device in self.devices:
            beat_at(self.engine, device.id, at(self.engine, self.cluster_id, 0))
        self.settlement = local_settlement(LiteSvmChain(), Keypair(), Keypair())
        self.deposited = 0
        with session_scope(self.engine) as session:
            self.deposit_owner = Pubkey.from_string(
                deposits.deposit_account(session, self.settlement.treasury, self.customer).owner_address
            )
            self.wallet = Pubkey.from_string(session.get(User, self.devices[0].owner_id).wallet_address)

    def teardown(self) -> None:
        self.engine.dispose()
        self.directory.cleanup()

    def paid_until(self) -> float:
        with session_scope(self.engine) as session:
            cluster = session.get(Cluster, self.cluster_id)
            return (cluster.expires_at - cluster.started_at).total_seconds()

    @precondition(lambda self: not self.ended)
    @rule(seconds=st.integers(min_value=1, max_value=2400))
    def time_passes(self, seconds: int) -> None:
        served = max(0.0, min(self.clock + seconds, self.paid_until()) - self.clock)
        self.clock += seconds
        for device in self.devices:
            if self.up[device.id]:
                self.verified[device.id] += served
                beat_at(self.engine, device.id, at(self.engine, self.cluster_id, self.clock))

    @precondition(lambda self: not self.ended)
    @rule(which=st.integers(0, 1), up=st.booleans())
    def agent_up_or_down(self, which: int, up: bool) -> None:
        device = self.devices[which]
        if up:
            self.down_since[device.id] = None
            beat_at(self.engine, device.id, at(self.engine, self.cluster_id, self.clock))
        elif self.up[device.id]:
            self.down_since[device.id] = self.clock
        self.up[device.id] = up

    @precondition(lambda self: not self.ended)
    @rule()
    def metering_pass(self) -> None:
        meter(self.engine, self.cluster_id, at(self.engine, self.cluster_id, self.clock))
        self.verified_at_pass = dict(self.verified)
        # A node whose agent was silent (past the grace of one interval) for the whole period: nothing.
        for device in self.devices:
            down_since = self.down_since[device.id]
            if down_since is not None and down_since + SETTINGS.heartbeat_interval_s <= self.last_pass:
                with session_scope(self.engine) as session:
                    newest = session.exec(
                        select(UsageRecord)
                        .join(ClusterNode, ClusterNode.id == UsageRecord.node_id)
                        .where(ClusterNode.device_id == device.id)
                        .order_by(UsageRecord.id.desc())  # type: ignore[union-attr]
                    ).first()
                assert (
                    newest is None
                    or newest.seconds == 0
                    or newest.period_end <= at(self.engine, self.cluster_id, self.last_pass)
                )
        self.last_pass = self.clock

    @precondition(lambda self: not self.ended)
    @rule(hours=st.integers(1, 2))
    def extend(self, hours: int) -> None:
        try:
            with session_scope(self.engine) as session:
                clusters.extend(session, clusters.lock_cluster(session, None, self.cluster_id), hours)
        except Conflict as refused:  # out of credit: refused, and nothing moved (the invariants check)
            assert refused.code == "insufficient_credit"

    @precondition(lambda self: not self.ended)
    @rule()
    def end(self) -> None:
        with session_scope(self.engine) as session:
            cluster = clusters.lock_cluster(session, None, self.cluster_id)
            cluster.ended_at = at(self.engine, self.cluster_id, self.clock)
            for node in clusters.nodes_of(session, cluster.id):
                node.ended_at = cluster.ended_at
                session.add(node)
            session.add(cluster)
            session.flush()
            metering.settle(session, SETTINGS, cluster)
        self.ended = True
        self.verified_at_pass = dict(self.verified)

    @precondition(lambda self: self.ended)
    @rule()
    def settle_again(self) -> None:
        """A retried end (a redelivered message) moves no money."""
        with session_scope(self.engine) as session:
            before = ledger.available_balance(session, self.customer)
            metering.settle(session, SETTINGS, clusters.lock_cluster(session, None, self.cluster_id))
            assert ledger.available_balance(session, self.customer) == before

    @rule(amount=st.integers(1, 50_000_000))
    def customer_deposits(self, amount: int) -> None:
        keys = self.settlement.treasury
        chain.mint_to(self.settlement.chain, keys.keypair, keys.mint, 6, self.deposit_owner, amount)
        self.deposited += amount

    @rule(crash=CRASH_POINTS)
    def deposit_watch(self, crash: str | None) -> None:
        with contextlib.suppress(Crash):
            deposits.watch(self.engine, self.settlement, checkpoint=crash_at(crash or ""))

    @rule(crash=CRASH_POINTS)
    def settlement_pass(self, crash: str | None) -> None:
        with contextlib.suppress(Crash):
            payouts.settle(self.engine, PAY_EVERYTHING, self.settlement, checkpoint=crash_at(crash or ""))

    @rule()
    def blockhash_expires(self) -> None:
        self.settlement.chain.expire_blockhash()

    def landed(self, rows) -> int:
        """What rows moved on chain: confirmed, or submitted with a transaction that landed."""
        return sum(
            row.amount_micro
            for row in rows
            if row.state == PayoutState.CONFIRMED
            or (
                row.state == PayoutState.SUBMITTED
                and self.settlement.chain.status(Signature.from_string(row.tx_signature)).outcome
                is Outcome.LANDED
            )
        )

    @invariant()
    def books_balance_and_no_money_is_made_or_lost(self) -> None:
        if not hasattr(self, "cluster_id"):
            return
        with session_scope(self.engine) as session:
            assert ledger.verify_books(session) == []
            cluster = session.get(Cluster, self.cluster_id)
            available = ledger.available_balance(session, self.customer)
            held = escrow.in_escrow(session, cluster)
            charged = escrow.charged(session, cluster)
            made = session.exec(select(Deposit)).all()
            credited = sum(d.amount_micro for d in made if d.state == PayoutState.CONFIRMED)
            assert available + held + charged == CREDIT + credited
            earned = ledger.get_account(session, AccountKind.PROVIDER_EARNED, self.devices[0].owner_id)
            in_flight = ledger.get_account(session, AccountKind.PAYOUTS_IN_FLIGHT)
            paid = ledger.get_account(session, AccountKind.TREASURY)
            fees = ledger.get_account(session, AccountKind.PLATFORM_FEES)
            assert (
                earned.balance_micro + in_flight.balance_micro + paid.balance_micro + fees.balance_micro
                == (charged)
            )
            if self.ended:
                assert held == 0
            # On chain every token moved once: the wallet holds exactly the payouts that landed, the
            # deposit account what was not swept; a crashed step is finished by a later pass, never doubled.
            sent = session.exec(select(Payout)).all()
            on_chain = self.settlement.chain.token_balance
            mint = self.settlement.treasury.mint
            assert (on_chain(chain.token_account(self.wallet, mint)) or 0) == self.landed(sent)
            assert sum(p.amount_micro for p in sent if p.state == PayoutState.CONFIRMED) == paid.balance_micro
            left = on_chain(chain.token_account(self.deposit_owner, mint)) or 0
            assert left + self.landed(made) == self.deposited

    @invariant()
    def charges_are_exact_and_within_uptime(self) -> None:
        """Charged seconds never exceed the time in service, and up to the last pass are at least the time
        the agent surely beat (each pass rounds its seconds down, so up to one second less per pass)."""
        if not hasattr(self, "cluster_id"):
            return
        with session_scope(self.engine) as session:
            assert_charges_are_exact(session, self.cluster_id)
            for device in self.devices:
                usage = session.exec(
                    select(UsageRecord)
                    .join(ClusterNode, ClusterNode.id == UsageRecord.node_id)
                    .where(ClusterNode.device_id == device.id, ClusterNode.cluster_id == self.cluster_id)
                ).all()
                charged_s = sum(u.seconds for u in usage)
                assert charged_s <= min(self.clock, self.paid_until())
                assert charged_s >= self.verified_at_pass[device.id] - len(usage)


MeteredCluster.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_metered_cluster_keeps_the_books = MeteredCluster.TestCase
