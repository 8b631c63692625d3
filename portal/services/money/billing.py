"""What customers and providers see of their money: balances, ledger lines, usage lines and earnings."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from sqlalchemy import func
from sqlmodel import Session, col, select

from portal.config import Settings
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
    User,
)
from portal.models.base import utcnow
from portal.security.principal import RequestOrigin
from portal.services import audit, csv_export
from portal.services.accounts import users
from portal.services.money import ledger
from portal.services.network import daily_figures


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
    in_flight_micro: int  # in a payout not confirmed on chain yet
    paid_micro: int  # paid out, confirmed on chain
    payout_threshold_micro: int
    wallet_address: str | None
    by_device: list[dict]
    by_cluster: list[dict]
    by_day: list[dict]  # the last EARNINGS_DAYS days, oldest first, days without earnings included


EARNINGS_DAYS = 30


def _money(value: object) -> int:
    return int(value or 0)  # PostgreSQL sums BIGINT as NUMERIC


def earnings(session: Session, settings: Settings, provider_id: uuid.UUID) -> Earnings:
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
    paid_by_state = dict(
        session.exec(
            select(Payout.state, func.sum(Payout.amount_micro))
            .where(Payout.provider_id == provider_id)
            .group_by(Payout.state)
        ).all()
    )
    paid = _money(paid_by_state.get(PayoutState.CONFIRMED))
    in_flight = sum(_money(v) for state, v in paid_by_state.items() if state != PayoutState.CONFIRMED)
    pending = ledger.get_account(session, AccountKind.PROVIDER_EARNED, provider_id).balance_micro
    provider = session.get(User, provider_id)
    return Earnings(
        accrued_micro=pending + in_flight + paid,
        pending_micro=pending,
        in_flight_micro=in_flight,
        paid_micro=paid,
        payout_threshold_micro=settings.payout_threshold_micro,
        wallet_address=provider.wallet_address if provider else None,
        by_device=[
            {"device_id": d, "name": n, "earned_micro": _money(e), "seconds": _money(s)}
            for d, n, e, s in by_device
        ],
        by_cluster=[
            {"cluster_id": c, "name": n, "earned_micro": _money(e), "since": since}
            for c, n, e, since in by_cluster
        ],
        by_day=earnings_by_day(session, provider_id),
    )


def earnings_by_day(
    session: Session,
    provider_id: uuid.UUID,
    *,
    device_id: uuid.UUID | None = None,
    days: int = EARNINGS_DAYS,
    today: date | None = None,
) -> list[dict]:
    """What the provider earned (charges less the platform's fee) on each UTC day of the last ``days`` up to
    ``today``, oldest first, days without earnings as zero; only on ``device_id`` when given. A usage record
    counts on the day its period ends (as in the admin's daily figures); the database sums each day."""
    today = today or utcnow().date()
    first = today - timedelta(days=days - 1)
    day = daily_figures.utc_day_number(session).label("day")
    query = (
        select(day, func.sum(UsageRecord.amount_micro - UsageRecord.fee_micro))
        .where(
            UsageRecord.provider_id == provider_id,
            col(UsageRecord.period_end) >= datetime.combine(first, time.min, tzinfo=UTC),
            col(UsageRecord.period_end) < datetime.combine(today + timedelta(days=1), time.min, tzinfo=UTC),
        )
        .group_by(day)
    )
    if device_id is not None:
        query = query.where(UsageRecord.device_id == device_id)
    earned = {
        daily_figures.EPOCH + timedelta(days=int(number)): _money(amount)
        for number, amount in session.exec(query)
    }
    return [
        {
            "day": (first + timedelta(days=n)).isoformat(),
            "earned_micro": earned.get(first + timedelta(days=n), 0),
        }
        for n in range(days)
    ]


INVOICE_COLUMNS = (
    "period_start",
    "period_end",
    "cluster",
    "cluster_id",
    "device",
    "gpus",
    "seconds",
    "rate_per_gpu_hour_usd",
    "amount_usd",
    "amount_micro",
)


def usd(amount_micro: int) -> str:
    """Exact decimal dollars from micro-USD, no float."""
    sign = "-" if amount_micro < 0 else ""
    whole, micro = divmod(abs(amount_micro), 1_000_000)
    return f"{sign}{whole}.{micro:06d}"


def invoice_csv(session: Session, customer_id: uuid.UUID, month: date) -> str:
    """The month's usage lines as CSV, with a total line; amounts exact to the micro-USD."""
    start = datetime.combine(month.replace(day=1), time.min, tzinfo=UTC)
    end = datetime.combine((month.replace(day=28) + timedelta(days=4)).replace(day=1), time.min, tzinfo=UTC)
    rows = session.exec(
        select(UsageRecord, Device.name, Cluster.name)
        .join(Device, col(Device.id) == UsageRecord.device_id)
        .join(Cluster, col(Cluster.id) == UsageRecord.cluster_id)
        .where(
            UsageRecord.customer_id == customer_id,
            UsageRecord.period_start >= start,
            UsageRecord.period_start < end,
        )
        .order_by(col(UsageRecord.period_start), col(UsageRecord.id))
    ).all()
    lines: list[list[object]] = [
        [
            usage.period_start.isoformat(),
            usage.period_end.isoformat(),
            cluster_name,
            usage.cluster_id,
            device_name,
            usage.gpu_count,
            usage.seconds,
            Decimal(usd(usage.rate_micro)),  # a number, not text: a spreadsheet sums it
            Decimal(usd(usage.amount_micro)),
            usage.amount_micro,
        ]
        for usage, device_name, cluster_name in rows
    ]
    total = sum(usage.amount_micro for usage, _, _ in rows)
    lines.append(["total", "", "", "", "", "", "", "", Decimal(usd(total)), total])
    return csv_export.csv_text(INVOICE_COLUMNS, lines)


@dataclass(frozen=True)
class InvoiceLine:
    """One cluster's usage in the month."""

    cluster_id: uuid.UUID
    cluster: str
    gpu_model: str
    gpu_seconds: int
    amount_micro: int


@dataclass(frozen=True)
class Invoice:
    number: str
    customer_email: str
    period_start: date
    period_end: date  # the month's last day, inclusive
    lines: list[InvoiceLine]
    total_micro: int
    fee_micro: int  # of the total, the platform's fee; the rest is paid to the providers


def _month_span(month: date) -> tuple[datetime, datetime]:
    start = datetime.combine(month.replace(day=1), time.min, tzinfo=UTC)
    end = datetime.combine((month.replace(day=28) + timedelta(days=4)).replace(day=1), time.min, tzinfo=UTC)
    return start, end


def invoice_number(customer_id: uuid.UUID, month: date) -> str:
    """Stable for a customer and month, so a reprint carries the same number: GP-202611-1A2B3C4D."""
    return f"GP-{month:%Y%m}-{customer_id.hex[:8].upper()}"


def invoice(session: Session, customer_id: uuid.UUID, month: date) -> Invoice:
    """The month's invoice: one line per cluster (its GPU-seconds and what they cost), the total and the
    platform's share of it. The same usage lines as ``invoice_csv``, summed per cluster."""
    start, end = _month_span(month)
    rows = session.exec(
        select(
            Cluster.id,
            Cluster.name,
            Cluster.gpu_model,
            func.sum(UsageRecord.seconds * UsageRecord.gpu_count),
            func.sum(UsageRecord.amount_micro),
            func.sum(UsageRecord.fee_micro),
            func.min(UsageRecord.period_start),
        )
        .join(Cluster, col(Cluster.id) == UsageRecord.cluster_id)
        .where(
            UsageRecord.customer_id == customer_id,
            UsageRecord.period_start >= start,
            UsageRecord.period_start < end,
        )
        .group_by(Cluster.id, Cluster.name, Cluster.gpu_model)
        .order_by(func.min(UsageRecord.period_start))
    ).all()
    lines = [
        InvoiceLine(cluster_id, name, model, int(seconds or 0), _money(amount))
        for cluster_id, name, model, seconds, amount, _, _ in rows
    ]
    user = users.get_user(session, customer_id)
    return Invoice(
        number=invoice_number(customer_id, month),
        customer_email=user.email or user.display_name,
        period_start=start.date(),
        period_end=(end - timedelta(days=1)).date(),
        lines=lines,
        total_micro=sum(line.amount_micro for line in lines),
        fee_micro=sum(_money(fee) for *_, fee, _ in rows),
    )


def grant_credits(
    session: Session,
    *,
    user_id: uuid.UUID,
    amount_micro: int,
    reason: str,
    admin_id: uuid.UUID,
    origin: RequestOrigin | None = None,
) -> None:
    """An admin's grant of credits to an account (404 for an unknown one), audited with the reason."""
    users.get_user(session, user_id)
    ledger.grant_credits(
        session,
        user_id=user_id,
        amount_micro=amount_micro,
        reason=reason,
        idempotency_key=f"admin-grant:{uuid.uuid4()}",
        granted_by=admin_id,
    )
    audit.record(
        session,
        "billing.grant",
        actor_id=f"user:{admin_id}",
        origin=origin,
        target_type="user",
        target_id=user_id,
        details={"amount_micro": amount_micro, "reason": reason},
    )
