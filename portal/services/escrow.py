"""The billing interface the cluster code calls: hold escrow at deploy and extend, settle at the end.

Every movement is a ledger transaction with an idempotency key derived from the cluster, so a retried
actor never holds, charges or refunds twice. Settlement charges each node's seconds between joining and
ending at the rate frozen when it was placed, splits the charge into the provider's earning and the
platform's fee, and returns the rest of the escrow to the customer.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from portal.models import (
    AccountKind,
    Cluster,
    ClusterNode,
    Device,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
)
from portal.services import ledger
from portal.services.errors import Conflict
from portal.services.ledger import Leg

BPS = 10_000
SECONDS_PER_HOUR = 3600


def node_charge_micro(node: ClusterNode, cluster: Cluster, until: datetime | None) -> int:
    """What a node's uptime costs: whole seconds it served the running cluster (from the later of its
    join and the cluster's start, to the earlier of its end and the cluster's paid end), times its GPUs, at
    its per-GPU-hour rate. A cluster that never ran costs nothing."""
    if node.joined_at is None or cluster.started_at is None:
        return 0
    start = max(node.joined_at, cluster.started_at)
    end = node.ended_at or until
    if end is None:
        return 0
    if cluster.expires_at is not None:
        end = min(end, cluster.expires_at)
    if end <= start:
        return 0
    seconds = int((end - start).total_seconds())
    return node.rate_micro * node.gpu_count * seconds // SECONDS_PER_HOUR


def fee_of(amount_micro: int, fee_bps: int) -> int:
    return amount_micro * fee_bps // BPS


def in_escrow(session: Session, cluster: Cluster) -> int:
    """What the customer's escrow still holds for this cluster."""
    escrow = ledger.get_account(session, AccountKind.CUSTOMER_ESCROW, cluster.owner_id)
    # int(): PostgreSQL sums BIGINT as NUMERIC.
    return int(
        session.exec(
            select(func.coalesce(func.sum(LedgerEntry.amount_micro), 0))
            .join(LedgerTransaction, col(LedgerTransaction.id) == LedgerEntry.transaction_id)
            .where(LedgerEntry.account_id == escrow.id, LedgerTransaction.cluster_id == cluster.id)
        ).one()
    )


def charged(session: Session, cluster: Cluster) -> int:
    """What the customer has paid for this cluster so far."""
    accounts = select(LedgerAccount.id).where(
        col(LedgerAccount.kind).in_([AccountKind.PROVIDER_EARNED, AccountKind.PLATFORM_FEES])
    )
    return int(
        session.exec(
            select(func.coalesce(func.sum(LedgerEntry.amount_micro), 0))
            .join(LedgerTransaction, col(LedgerTransaction.id) == LedgerEntry.transaction_id)
            .where(
                LedgerTransaction.cluster_id == cluster.id,
                LedgerTransaction.kind == "cluster_charge",
                col(LedgerEntry.account_id).in_(accounts),
            )
        ).one()
    )


def hold(session: Session, cluster: Cluster, amount_micro: int, *, key: str, description: str) -> None:
    """Move ``amount_micro`` from the customer's available credit into escrow; 409 when it is short."""
    available = ledger.get_account(session, AccountKind.CUSTOMER_AVAILABLE, cluster.owner_id)
    escrow = ledger.get_account(session, AccountKind.CUSTOMER_ESCROW, cluster.owner_id)
    ledger.post(
        session,
        kind="escrow_hold",
        idempotency_key=key,
        legs=[Leg(available, -amount_micro), Leg(escrow, amount_micro)],
        description=description,
        created_by=cluster.owner_id,
        cluster_id=cluster.id,
    )
    # Checked after the posting, on the balance the database computed: two concurrent deploys of one
    # customer cannot both spend the same credit (the second sees the first's hold and fails).
    if available.balance_micro < 0:
        short = -available.balance_micro
        raise Conflict(
            f"Not enough credit: this needs {amount_micro / 1e6:.2f} USD in escrow, "
            f"{short / 1e6:.2f} USD more than you have available.",
            code="insufficient_credit",
            details={"needed_micro": amount_micro, "short_micro": short},
        )


def settle(session: Session, cluster: Cluster, fee_bps: int) -> tuple[int, int]:
    """Charge the cluster's uptime from escrow and return the rest; returns (charged, refunded).

    Called once the cluster has ended (every node has ``ended_at``); harmless to call again."""
    escrow = ledger.get_account(session, AccountKind.CUSTOMER_ESCROW, cluster.owner_id)
    held = in_escrow(session, cluster)
    total = 0
    nodes = session.exec(
        select(ClusterNode)
        .where(ClusterNode.cluster_id == cluster.id)
        .order_by(col(ClusterNode.created_at), col(ClusterNode.id))
    ).all()
    for node in nodes:
        amount = min(node_charge_micro(node, cluster, cluster.ended_at), held - total)
        if amount <= 0:
            continue
        device = session.get(Device, node.device_id)
        assert device is not None
        fee = fee_of(amount, fee_bps)
        ledger.post(
            session,
            kind="cluster_charge",
            idempotency_key=f"cluster:{cluster.id}:node:{node.id}:charge",
            legs=[
                Leg(escrow, -amount),
                Leg(ledger.get_account(session, AccountKind.PROVIDER_EARNED, device.owner_id), amount - fee),
                Leg(ledger.get_account(session, AccountKind.PLATFORM_FEES), fee),
            ],
            description=f"node {node.id} on device {device.name}",
            cluster_id=cluster.id,
        )
        total += amount
    rest = in_escrow(session, cluster)
    if rest > 0:
        ledger.post(
            session,
            kind="escrow_release",
            idempotency_key=f"cluster:{cluster.id}:release",
            legs=[
                Leg(escrow, -rest),
                Leg(ledger.get_account(session, AccountKind.CUSTOMER_AVAILABLE, cluster.owner_id), rest),
            ],
            description="unused escrow returned",
            cluster_id=cluster.id,
        )
    return total, max(rest, 0)
