"""The billing interface the cluster code calls: hold escrow at deploy and extend, return what is left
at the end (``metering`` charges the uptime in between).

Every movement is a ledger transaction with an idempotency key derived from the cluster, so a retried
actor never holds or refunds twice.
"""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import Session, col, select

from portal.models import (
    AccountKind,
    Cluster,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
)
from portal.services.errors import Conflict
from portal.services.money import ledger
from portal.services.money.ledger import Leg

BPS = 10_000
SECONDS_PER_HOUR = 3600


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


def release(session: Session, cluster: Cluster) -> int:
    """Return what the cluster's escrow still holds to the customer's available credit; returns it."""
    rest = in_escrow(session, cluster)
    if rest <= 0:
        return 0
    ledger.post(
        session,
        kind="escrow_release",
        idempotency_key=f"cluster:{cluster.id}:release",
        legs=[
            Leg(ledger.get_account(session, AccountKind.CUSTOMER_ESCROW, cluster.owner_id), -rest),
            Leg(ledger.get_account(session, AccountKind.CUSTOMER_AVAILABLE, cluster.owner_id), rest),
        ],
        description="unused escrow returned",
        cluster_id=cluster.id,
    )
    return rest
