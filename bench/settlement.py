"""Metering and settlement at scale, each next to a same-run baseline.

- Metering 1,000,000 device-minutes: 10,000 running nodes (5,000 two-node clusters) 100 minutes after their
  start, charged by one run of the ``meter_clusters`` actor (200 clusters locked and metered per
  transaction: usage lines and ledger postings in bulk). Baseline: a bulk insert of the same rows (usage
  lines, ledger transactions and entries) in one transaction. Target: under 10 s.
- Settling 10,000 provider payouts on LiteSVM through ``payouts.settle`` (database and chain): payouts per
  second and transactions used, batched (``PORTAL_PAYOUT_BATCH_SIZE``) and unbatched (one transfer per
  transaction); baseline: the chain alone, one signed ``transfer_checked`` per payout sent to LiteSVM with no
  database. Each payout goes to a new wallet, so each transfer also creates its token account (which caps a
  batch by the transaction size).
"""

from __future__ import annotations

import tempfile
import time
import uuid
from datetime import timedelta

from solders.keypair import Keypair
from sqlalchemy import Engine, insert, select

from bench.sizes import size
from portal.config import Settings
from portal.infra import migrations
from portal.infra.cache import MemoryCache
from portal.infra.db import build_engine, session_scope
from portal.models import (
    AccountKind,
    Cluster,
    ClusterNode,
    ClusterState,
    Device,
    DeviceState,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    NodeState,
    Payout,
    UsageRecord,
    User,
)
from portal.models.base import utcnow
from portal.parts import AppParts
from portal.parts import in_use as parts_in_use
from portal.services.money import chain, ledger, payouts
from portal.services.money.chain import LiteSvmChain
from portal.services.money.treasury import local_settlement
from tasks import billing as billing_actors

NODES = size(10_000, 200)
MINUTES = size(100, 10)
PAYOUTS = size(10_000, 100)
RATE = 2_000_000


def _engine() -> Engine:
    url = f"sqlite:///{tempfile.mkdtemp(prefix='portal-bench-settle-')}/bench.db"
    migrations.upgrade(url)
    return build_engine(url)


def _running_clusters(engine: Engine) -> None:
    """5,000 two-node clusters running for MINUTES, escrow held, every device heartbeating now."""
    now = utcnow()
    started = now - timedelta(minutes=MINUTES)
    hold = 2 * RATE * 3
    with session_scope(engine) as session:
        customer = User(email="customer@bench.test")
        provider = User(email="provider@bench.test")
        session.add_all([customer, provider])
        session.flush()
        escrow = ledger.get_account(session, AccountKind.CUSTOMER_ESCROW, customer.id)
        grants = ledger.get_account(session, AccountKind.GRANTS)
        holds, nodes = [], []
        for number in range(NODES // 2):
            cluster = Cluster(
                owner_id=customer.id,
                name=f"c{number}",
                state=ClusterState.RUNNING,
                gpu_model="H100-80GB",
                gpu_count=2,
                duration_hours=3,
                price_per_gpu_hour_micro=RATE,
                started_at=started,
                expires_at=started + timedelta(hours=3),
            )
            session.add(cluster)
            for role in ("head", "worker"):
                device = Device(
                    owner_id=provider.id,
                    name=f"d{number}{role}",
                    country="DE",
                    state=DeviceState.HIRED,
                    token_hash=uuid.uuid4().hex,
                    token_prefix="x",
                    last_heartbeat_at=now,
                    gpu_model="H100-80GB",
                    gpu_count=1,
                    hourly_price_micro=RATE,
                )
                session.add(device)
                nodes.append(
                    ClusterNode(
                        cluster_id=cluster.id,
                        device_id=device.id,
                        role=role,
                        state=NodeState.JOINED,
                        gpu_count=1,
                        rate_micro=RATE,
                        joined_at=started,
                    )
                )
        # Parents first: the ORM orders inserts by relationships, and these models declare none.
        session.flush()
        session.add_all(nodes)
        session.flush()
        for cluster_id in session.exec(select(Cluster.id)).scalars().all():  # type: ignore[call-overload]
            posting = LedgerTransaction(
                kind="escrow_hold", idempotency_key=f"hold:{cluster_id}", cluster_id=cluster_id
            )
            session.add(posting)
            holds.append(posting)
        session.flush()
        for posting in holds:
            session.add(LedgerEntry(transaction_id=posting.id, account_id=escrow.id, amount_micro=hold))
            session.add(LedgerEntry(transaction_id=posting.id, account_id=grants.id, amount_micro=-hold))
        escrow.balance_micro = hold * len(holds)
        grants.balance_micro = -hold * len(holds)


def _metering_pass(engine: Engine, settings: Settings) -> tuple[float, int, int]:
    """One run of the ``meter_clusters`` actor, as the scheduler sends it."""
    with parts_in_use(AppParts(settings, engine, MemoryCache())):
        started = time.perf_counter()
        billing_actors.meter_clusters.fn()
        elapsed = time.perf_counter() - started
    with session_scope(engine) as session:
        lines = len(session.exec(select(UsageRecord.id)).scalars().all())  # type: ignore[call-overload]
        seconds = sum(session.exec(select(UsageRecord.seconds)).scalars().all())  # type: ignore[call-overload]
    return elapsed, lines, seconds


def _bulk_insert_baseline(engine: Engine) -> float:
    """The rows the pass wrote (usage lines, ledger transactions and entries), inserted again with one bulk
    insert per table in one transaction, into the same database (keys made unique again)."""
    with session_scope(engine) as session:
        usage = [dict(row._mapping) for row in session.execute(select(UsageRecord.__table__))]
        transactions = [dict(row._mapping) for row in session.execute(select(LedgerTransaction.__table__))]
        entries = [dict(row._mapping) for row in session.execute(select(LedgerEntry.__table__))]
    for rows in (usage, transactions, entries):
        for row in rows:
            row.pop("id", None)
    for row in usage:
        row["period_start"] += timedelta(microseconds=1)
    for row in transactions:
        row["idempotency_key"] = uuid.uuid4().hex
    started = time.perf_counter()
    with session_scope(engine) as session:
        session.execute(insert(LedgerTransaction), transactions)
        session.execute(insert(LedgerEntry), entries)
        session.execute(insert(UsageRecord), usage)
    return time.perf_counter() - started


def bench_metering() -> None:
    print(f"Metering {NODES * MINUTES:,} device-minutes: {NODES:,} nodes {MINUTES} min after start (SQLite)")
    engine = _engine()
    settings = Settings(heartbeat_interval_s=5)
    _running_clusters(engine)
    elapsed, lines, seconds = _metering_pass(engine, settings)
    with session_scope(engine) as session:
        problems = ledger.verify_books(session)
    baseline = _bulk_insert_baseline(engine)
    print(f"  baseline: bulk insert of the same rows            {baseline:8.2f} s")
    print(
        f"  metering pass (meter_clusters)                   {elapsed:8.2f} s   {lines:,} usage lines, "
        f"{seconds / 60:,.0f} device-minutes charged, {NODES * MINUTES / elapsed:,.0f} device-minutes/s, "
        f"books {'balance' if not problems else 'WRONG: ' + problems[0]}   (target < 10 s)"
    )
    engine.dispose()


def _providers_due(engine: Engine, count: int) -> None:
    """``count`` providers with a wallet and 1.000001..N USD of unpaid earnings, in one balanced posting."""
    with session_scope(engine) as session:
        grants = ledger.get_account(session, AccountKind.GRANTS)
        posting = LedgerTransaction(kind="usage", idempotency_key="bench-earnings")
        session.add(posting)
        providers = [
            User(email=f"p{n}@bench.test", wallet_address=str(Keypair().pubkey())) for n in range(count)
        ]
        session.add_all(providers)
        session.flush()
        accounts = [
            LedgerAccount(kind=AccountKind.PROVIDER_EARNED, owner_id=provider.id, balance_micro=1_000_001 + n)
            for n, provider in enumerate(providers)
        ]
        session.add_all(accounts)
        session.flush()
        total = sum(account.balance_micro for account in accounts)
        session.add_all(
            LedgerEntry(transaction_id=posting.id, account_id=account.id, amount_micro=account.balance_micro)
            for account in accounts
        )
        session.add(LedgerEntry(transaction_id=posting.id, account_id=grants.id, amount_micro=-total))
        grants.balance_micro = -total


def _settle(batch_size: int) -> tuple[float, int, int, int, bool]:
    """Settlement passes until every payout is confirmed (a transaction whose blockhash expired between
    signing and sending is signed again by the next pass, as after a real chain's ~60 s)."""
    engine = _engine()
    _providers_due(engine, PAYOUTS)
    settlement = local_settlement(LiteSvmChain(), Keypair(), Keypair())
    settings = Settings(payout_threshold_micro=1, payout_batch_size=batch_size)
    confirmed = passes = 0
    started = time.perf_counter()
    while confirmed < PAYOUTS and passes < 5:
        confirmed += payouts.settle(engine, settings, settlement)["confirmed"]
        passes += 1
        settlement.chain.expire_blockhash()
    elapsed = time.perf_counter() - started
    with session_scope(engine) as session:
        signatures = set(session.exec(select(Payout.tx_signature)).scalars().all())  # type: ignore[call-overload]
        right = ledger.verify_books(session) == []
    engine.dispose()
    return elapsed, confirmed, len(signatures), passes, right


def _raw_transfers() -> float:
    settlement = local_settlement(LiteSvmChain(), Keypair(), Keypair())
    keys = settlement.treasury
    started = time.perf_counter()
    for n in range(PAYOUTS):
        instructions = chain.transfer_instructions(
            payer=keys.address,
            source_owner=keys.address,
            mint=keys.mint,
            decimals=6,
            recipient=Keypair().pubkey(),
            amount=1_000_001 + n,
            create_recipient_account=True,
        )
        settlement.chain.send(chain.sign(instructions, [keys.keypair], settlement.chain.latest_blockhash()))
    return time.perf_counter() - started


def bench_payouts() -> None:
    print(f"Settling {PAYOUTS:,} provider payouts on LiteSVM (in-process), each to a new wallet")
    raw = _raw_transfers()
    print(
        f"  baseline: one transfer per transaction, chain only  {raw:7.2f} s   "
        f"{PAYOUTS / raw:8,.0f} payouts/s"
    )
    for batch_size in (1, 10):
        elapsed, confirmed, transactions, passes, right = _settle(batch_size)
        print(
            f"  payouts.settle, up to {batch_size:>2} per transaction        {elapsed:7.2f} s   "
            f"{confirmed / elapsed:8,.0f} payouts/s   {confirmed:,} confirmed in {transactions:,} "
            f"transactions, {passes} pass(es), books {'balance' if right else 'WRONG'}"
        )


def bench_settlement() -> None:
    bench_metering()
    bench_payouts()


if __name__ == "__main__":
    bench_settlement()
