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

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func
from sqlmodel import Session, col, select

from portal.config import Settings
from portal.models import AccountKind, Cluster, ClusterNode, Device, UsageRecord
from portal.models.base import utcnow
from portal.services import escrow, ledger
from portal.services.escrow import SECONDS_PER_HOUR
from portal.services.ledger import Leg


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


def next_period(
    session: Session, settings: Settings, cluster: Cluster, node: ClusterNode, until: datetime
) -> Period | None:
    """The node's next uncharged period up to ``until``, priced; None when there is nothing to meter."""
    window = service_window(node, cluster, until)
    if window is None:
        return None
    done = metered(session, node)
    start = max(window[0], done.until) if done.until else window[0]
    end = window[1]
    if end <= start:
        return None
    device = session.get(Device, node.device_id)
    last_beat = device.last_heartbeat_at if device else None
    up_until = min(end, last_beat + timedelta(seconds=settings.heartbeat_interval_s)) if last_beat else start
    seconds = max(0, int((max(up_until, start) - start).total_seconds()))
    total_seconds = done.seconds + seconds
    amount = node.rate_micro * node.gpu_count * total_seconds // SECONDS_PER_HOUR - done.amount_micro
    amount = min(amount, escrow.in_escrow(session, cluster))
    fee = escrow.fee_of(done.amount_micro + amount, settings.platform_fee_bps) - done.fee_micro
    return Period(start, end, seconds, amount, fee)


def meter_node(
    session: Session, settings: Settings, cluster: Cluster, node: ClusterNode, until: datetime
) -> int:
    """Charge the node's next period; returns the amount charged."""
    period = next_period(session, settings, cluster, node, until)
    if period is None:
        return 0
    device = session.get(Device, node.device_id)
    assert device is not None
    transaction_id = None
    if period.amount_micro > 0:
        transaction = ledger.post(
            session,
            kind="cluster_charge",
            idempotency_key=f"usage:{node.id}:{period.start.isoformat()}",
            legs=[
                Leg(
                    ledger.get_account(session, AccountKind.CUSTOMER_ESCROW, cluster.owner_id),
                    -period.amount_micro,
                ),
                Leg(
                    ledger.get_account(session, AccountKind.PROVIDER_EARNED, device.owner_id),
                    period.amount_micro - period.fee_micro,
                ),
                Leg(ledger.get_account(session, AccountKind.PLATFORM_FEES), period.fee_micro),
            ],
            description=f"{period.seconds} s of {node.gpu_count} GPU on {device.name}",
            cluster_id=cluster.id,
        )
        transaction_id = transaction.id
    session.add(
        UsageRecord(
            cluster_id=cluster.id,
            node_id=node.id,
            device_id=device.id,
            customer_id=cluster.owner_id,
            provider_id=device.owner_id,
            period_start=period.start,
            period_end=period.end,
            seconds=period.seconds,
            gpu_count=node.gpu_count,
            rate_micro=node.rate_micro,
            amount_micro=period.amount_micro,
            fee_micro=period.fee_micro,
            ledger_transaction_id=transaction_id,
        )
    )
    session.flush()
    return period.amount_micro


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
    until = now or utcnow()
    return sum(
        meter_node(session, settings, cluster, node, until) for node in nodes_in_order(session, cluster)
    )


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
