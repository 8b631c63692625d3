"""Metering: each node's seconds of verified uptime, charged from the cluster's escrow as it runs.

A node serves from the later of its join and the cluster's start, to the earlier of its end and the
cluster's paid end. Each metering pass covers the node's time since the previous pass, and charges only the
part its device's heartbeats vouch for: a device silent since its last beat is up until that beat plus one
interval, and the rest of the period is recorded as downtime and never charged (so the granularity of
downtime is one metering period). Amounts are cumulative per node: a node's charges always add up to its
rate times its GPUs times its charged seconds, rounded down once, to the micro-unit; the platform's fee
likewise. Each pass is a usage line and a ledger transaction keyed by node and period start, so a retried
pass posts nothing twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, insert
from sqlmodel import Session, col, select

from portal.config import Settings
from portal.models import (
    AccountKind,
    Cluster,
    ClusterNode,
    Device,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    UsageRecord,
)
from portal.models.base import utcnow
from portal.services.money import escrow, ledger
from portal.services.money.escrow import SECONDS_PER_HOUR


@dataclass(frozen=True)
class Metered:
    seconds: int
    amount_micro: int
    fee_micro: int
    until: datetime | None


def metered(session: Session, node: ClusterNode) -> Metered:
    seconds, amount, fee, until = session.exec(
        select(
            func.coalesce(func.sum(UsageRecord.seconds), 0),
            func.coalesce(func.sum(UsageRecord.amount_micro), 0),
            func.coalesce(func.sum(UsageRecord.fee_micro), 0),
            func.max(UsageRecord.period_end),
        ).where(UsageRecord.node_id == node.id)
    ).one()
    return Metered(int(seconds), int(amount), int(fee), until)


def service_window(node: ClusterNode, cluster: Cluster, until: datetime) -> tuple[datetime, datetime] | None:
    """When the node served the running cluster, up to ``until``; None when it never did."""
    if node.joined_at is None or cluster.started_at is None:
        return None
    start = max(node.joined_at, cluster.started_at)
    end = min(until, *(t for t in (node.ended_at, cluster.ended_at, cluster.expires_at) if t is not None))
    return (start, end) if end > start else None


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime
    seconds: int  # charged: the part of [start, end] the heartbeats vouch for
    amount_micro: int
    fee_micro: int


def _period(
    settings: Settings,
    cluster: Cluster,
    node: ClusterNode,
    until: datetime,
    done: Metered,
    last_beat: datetime | None,
    escrow_left: int,
) -> Period | None:
    """The node's next uncharged period up to ``until``, priced from what it was charged so far
    (``done``), its device's last heartbeat and what the cluster's escrow still holds."""
    window = service_window(node, cluster, until)
    if window is None:
        return None
    start = max(window[0], done.until) if done.until else window[0]
    end = window[1]
    if end <= start:
        return None
    up_until = min(end, last_beat + timedelta(seconds=settings.heartbeat_interval_s)) if last_beat else start
    seconds = max(0, int((max(up_until, start) - start).total_seconds()))
    total_seconds = done.seconds + seconds
    amount = node.rate_micro * node.gpu_count * total_seconds // SECONDS_PER_HOUR - done.amount_micro
    amount = min(amount, escrow_left)
    fee = escrow.fee_of(done.amount_micro + amount, settings.platform_fee_bps) - done.fee_micro
    return Period(start, end, seconds, amount, fee)


def next_period(
    session: Session, settings: Settings, cluster: Cluster, node: ClusterNode, until: datetime
) -> Period | None:
    """The node's next uncharged period up to ``until``, priced; None when there is nothing to meter."""
    device = session.get(Device, node.device_id)
    return _period(
        settings,
        cluster,
        node,
        until,
        metered(session, node),
        device.last_heartbeat_at if device else None,
        escrow.in_escrow(session, cluster),
    )


def _metered_by_node(session: Session, node_ids: list[uuid.UUID]) -> dict[uuid.UUID, Metered]:
    rows = session.exec(
        select(
            UsageRecord.node_id,
            func.sum(UsageRecord.seconds),
            func.sum(UsageRecord.amount_micro),
            func.sum(UsageRecord.fee_micro),
            func.max(UsageRecord.period_end),
        )
        .where(col(UsageRecord.node_id).in_(node_ids))
        .group_by(UsageRecord.node_id)
    ).all()
    return {node: Metered(int(s), int(a), int(f), until) for node, s, a, f, until in rows}


def _escrow_by_cluster(session: Session, chosen: Sequence[Cluster]) -> dict[uuid.UUID, int]:
    """What each cluster's escrow still holds (``escrow.in_escrow`` for many clusters at once)."""
    escrow_accounts = select(LedgerAccount.id).where(
        LedgerAccount.kind == AccountKind.CUSTOMER_ESCROW,
        col(LedgerAccount.owner_id).in_({c.owner_id for c in chosen}),
    )
    rows = session.exec(
        select(LedgerTransaction.cluster_id, func.sum(LedgerEntry.amount_micro))
        .join(LedgerTransaction, col(LedgerTransaction.id) == LedgerEntry.transaction_id)
        .where(
            col(LedgerEntry.account_id).in_(escrow_accounts),
            col(LedgerTransaction.cluster_id).in_([c.id for c in chosen]),
        )
        .group_by(LedgerTransaction.cluster_id)
    ).all()
    return {cluster_id: int(held) for cluster_id, held in rows if cluster_id is not None}


def _account_ids(session: Session, kind: AccountKind, owners: set[uuid.UUID]) -> dict[uuid.UUID, int]:
    """Account ids of that kind by owner, made where missing."""
    found: dict[uuid.UUID, int] = {
        owner: account_id
        for owner, account_id in session.exec(
            select(LedgerAccount.owner_id, LedgerAccount.id).where(
                LedgerAccount.kind == kind, col(LedgerAccount.owner_id).in_(owners)
            )
        ).all()
        if owner is not None and account_id is not None
    }
    for owner in owners - set(found):
        found[owner] = ledger.get_account(session, kind, owner).id or 0
    return found


def meter_clusters(
    session: Session, settings: Settings, chosen: Sequence[Cluster], now: datetime | None = None
) -> int:
    """Charge every node of these clusters up to ``now``, with a few statements for all of them; returns
    the amount charged. The caller holds the clusters' locks (``clusters.lock_clusters``)."""
    if not chosen:
        return 0
    until = now or utcnow()
    by_id = {cluster.id: cluster for cluster in chosen}
    nodes = session.exec(
        select(ClusterNode)
        .where(col(ClusterNode.cluster_id).in_(list(by_id)))
        .order_by(col(ClusterNode.created_at), col(ClusterNode.id))
    ).all()
    if not nodes:
        return 0
    devices = {
        device_id: (owner, name, beat)
        for device_id, owner, name, beat in session.exec(
            select(Device.id, Device.owner_id, Device.name, Device.last_heartbeat_at).where(
                col(Device.id).in_({node.device_id for node in nodes})
            )
        ).all()
    }
    done = _metered_by_node(session, [node.id for node in nodes])
    escrow_left = _escrow_by_cluster(session, chosen)
    escrows = _account_ids(session, AccountKind.CUSTOMER_ESCROW, {c.owner_id for c in chosen})
    earned = _account_ids(session, AccountKind.PROVIDER_EARNED, {owner for owner, _, _ in devices.values()})
    fees = ledger.get_account(session, AccountKind.PLATFORM_FEES).id or 0
    postings: list[ledger.Posting] = []
    usage: list[tuple[str | None, dict]] = []
    charged = 0
    for node in nodes:
        cluster = by_id[node.cluster_id]
        owner, name, last_beat = devices[node.device_id]
        left = escrow_left.get(cluster.id, 0)
        period = _period(
            settings, cluster, node, until, done.get(node.id, Metered(0, 0, 0, None)), last_beat, left
        )
        if period is None:
            continue
        escrow_left[cluster.id] = left - period.amount_micro
        charged += period.amount_micro
        key = None
        if period.amount_micro > 0:
            key = f"usage:{node.id}:{period.start.isoformat()}"
            postings.append(
                ledger.Posting(
                    "cluster_charge",
                    key,
                    [
                        (escrows[cluster.owner_id], -period.amount_micro),
                        (earned[owner], period.amount_micro - period.fee_micro),
                        (fees, period.fee_micro),
                    ],
                    f"{period.seconds} s of {node.gpu_count} GPU on {name}",
                    cluster.id,
                )
            )
        usage.append(
            (
                key,
                {
                    "cluster_id": cluster.id,
                    "node_id": node.id,
                    "device_id": node.device_id,
                    "customer_id": cluster.owner_id,
                    "provider_id": owner,
                    "period_start": period.start,
                    "period_end": period.end,
                    "seconds": period.seconds,
                    "gpu_count": node.gpu_count,
                    "rate_micro": node.rate_micro,
                    "amount_micro": period.amount_micro,
                    "fee_micro": period.fee_micro,
                },
            )
        )
    if usage:
        transaction_ids = ledger.post_many(session, postings)
        session.execute(
            insert(UsageRecord.__table__),  # type: ignore[attr-defined]
            [
                {**row, "ledger_transaction_id": transaction_ids.get(key) if key else None}
                for key, row in usage
            ],
        )
    return charged


def nodes_in_order(session: Session, cluster: Cluster) -> list[ClusterNode]:
    return list(
        session.exec(
            select(ClusterNode)
            .where(ClusterNode.cluster_id == cluster.id)
            .order_by(col(ClusterNode.created_at), col(ClusterNode.id))
        ).all()
    )


def meter_cluster(session: Session, settings: Settings, cluster: Cluster, now: datetime | None = None) -> int:
    """Charge every node of the cluster up to ``now``; returns the amount charged. The caller holds the
    cluster's lock (``clusters.lock_cluster``)."""
    return meter_clusters(session, settings, [cluster], now)


def pending_micro(session: Session, settings: Settings, cluster: Cluster, now: datetime | None = None) -> int:
    """What the next metering pass would charge now, for showing spending between passes."""
    until = now or utcnow()
    periods = (
        next_period(session, settings, cluster, node, until) for node in nodes_in_order(session, cluster)
    )
    return min(sum(p.amount_micro for p in periods if p is not None), escrow.in_escrow(session, cluster))


def settle(session: Session, settings: Settings, cluster: Cluster) -> tuple[int, int]:
    """At the cluster's end: meter the last periods, then return the rest of the escrow. Returns the total
    charged for the cluster and the amount returned now; harmless to call again."""
    meter_cluster(session, settings, cluster, cluster.ended_at)
    returned = escrow.release(session, cluster)
    return escrow.charged(session, cluster), returned
