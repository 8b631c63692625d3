"""What customers and providers see of their money: balances, ledger lines, usage lines and earnings."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from portal.models import (
    AccountKind,
    Cluster,
    Device,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    Payout,
    PayoutState,
    UsageRecord,
)
from portal.services import ledger


@dataclass(frozen=True)
class LedgerLine:
    id: int
    at: datetime
    account: str
    amount_micro: int
    kind: str
    description: str
    cluster_id: uuid.UUID | None


def balance(session: Session, user_id: uuid.UUID) -> tuple[int, int]:
    """(available, in escrow) for a customer."""
    return (
        ledger.get_account(session, AccountKind.CUSTOMER_AVAILABLE, user_id).balance_micro,
        ledger.get_account(session, AccountKind.CUSTOMER_ESCROW, user_id).balance_micro,
    )


def ledger_lines(
    session: Session, user_id: uuid.UUID, *, limit: int, offset: int
) -> tuple[list[LedgerLine], int]:
    """Every movement on the person's accounts, newest first."""
    query = (
        select(LedgerEntry, LedgerAccount.kind, LedgerTransaction)
        .join(LedgerAccount, col(LedgerAccount.id) == LedgerEntry.account_id)
        .join(LedgerTransaction, col(LedgerTransaction.id) == LedgerEntry.transaction_id)
        .where(LedgerAccount.owner_id == user_id)
    )
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(query.order_by(col(LedgerEntry.id).desc()).limit(limit).offset(offset)).all()
    return [
        LedgerLine(
            entry.id or 0,
            entry.created_at,
            kind,
            entry.amount_micro,
            transaction.kind,
            transaction.description,
            transaction.cluster_id,
        )
        for entry, kind, transaction in rows
    ], total


def usage_lines(
    session: Session, customer_id: uuid.UUID, *, cluster_id: uuid.UUID | None, limit: int, offset: int
) -> tuple[list[tuple[UsageRecord, str]], int]:
    """Metered usage of the customer's clusters (with each device's name), newest first."""
    query = (
        select(UsageRecord, Device.name)
        .join(Device, col(Device.id) == UsageRecord.device_id)
        .where(UsageRecord.customer_id == customer_id)
    )
    if cluster_id is not None:
        query = query.where(UsageRecord.cluster_id == cluster_id)
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(query.order_by(col(UsageRecord.id).desc()).limit(limit).offset(offset)).all()
    return [(usage, name) for usage, name in rows], total


@dataclass(frozen=True)
class Earnings:
    accrued_micro: int  # earned so far, all time
    pending_micro: int  # earned and not paid out yet
    paid_micro: int  # paid out, confirmed on chain
    by_device: list[dict]
    by_cluster: list[dict]


def earnings(session: Session, provider_id: uuid.UUID) -> Earnings:
    def money(value: object) -> int:
        return int(value or 0)  # PostgreSQL sums BIGINT as NUMERIC

    earned = UsageRecord.amount_micro - UsageRecord.fee_micro
    by_device = session.exec(
        select(Device.id, Device.name, func.sum(earned), func.sum(UsageRecord.seconds))
        .join(Device, col(Device.id) == UsageRecord.device_id)
        .where(UsageRecord.provider_id == provider_id)
        .group_by(Device.id, Device.name)
    ).all()
    by_cluster = session.exec(
        select(Cluster.id, Cluster.name, func.sum(earned), func.min(UsageRecord.period_start))
        .join(Cluster, col(Cluster.id) == UsageRecord.cluster_id)
        .where(UsageRecord.provider_id == provider_id)
        .group_by(Cluster.id, Cluster.name)
    ).all()
    paid = session.exec(
        select(func.sum(Payout.amount_micro)).where(
            Payout.provider_id == provider_id, Payout.state == PayoutState.CONFIRMED
        )
    ).one()
    pending = ledger.get_account(session, AccountKind.PROVIDER_EARNED, provider_id).balance_micro
    return Earnings(
        accrued_micro=pending + money(paid),
        pending_micro=pending,
        paid_micro=money(paid),
        by_device=[
            {"device_id": d, "name": n, "earned_micro": money(e), "seconds": money(s)}
            for d, n, e, s in by_device
        ],
        by_cluster=[
            {"cluster_id": c, "name": n, "earned_micro": money(e), "since": since}
            for c, n, e, since in by_cluster
        ],
    )
