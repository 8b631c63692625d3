"""The double-entry ledger: every movement of money is a balanced transaction between accounts.

Amounts are integer micro-USD. Account balances are a cache updated in the same database
transaction as the entries; the entries are the truth (``verify_books`` recomputes from them).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, update
from sqlmodel import Session, select

from portal.models import AccountKind, LedgerAccount, LedgerEntry, LedgerTransaction
from portal.services.errors import InvalidInput

# Accounts owned by a person; the others belong to the platform and have no owner.
PERSONAL_KINDS = {AccountKind.CUSTOMER_AVAILABLE, AccountKind.CUSTOMER_ESCROW, AccountKind.PROVIDER_EARNED}


@dataclass(frozen=True)
class Leg:
    account: LedgerAccount
    amount_micro: int


def get_account(session: Session, kind: AccountKind, owner_id: uuid.UUID | None = None) -> LedgerAccount:
    """The account of that kind and owner, created on first use."""
    if (kind in PERSONAL_KINDS) != (owner_id is not None):
        raise ValueError(f"{kind} accounts {'need' if kind in PERSONAL_KINDS else 'take no'} owner")
    account = session.exec(
        select(LedgerAccount).where(LedgerAccount.kind == kind, LedgerAccount.owner_id == owner_id)
    ).first()
    if account is None:
        account = LedgerAccount(kind=kind, owner_id=owner_id)
        session.add(account)
        session.flush()
    return account


def post(
    session: Session,
    *,
    kind: str,
    idempotency_key: str,
    legs: Sequence[Leg],
    description: str = "",
    created_by: uuid.UUID | None = None,
    cluster_id: uuid.UUID | None = None,
) -> LedgerTransaction:
    """Record one balanced transaction; posting the same idempotency key again returns the first one.

    Two concurrent first postings of one key meet the unique index: one fails with an IntegrityError,
    and its retry then finds the other's transaction.
    """
    existing = session.exec(
        select(LedgerTransaction).where(LedgerTransaction.idempotency_key == idempotency_key)
    ).first()
    if existing is not None:
        return existing
    if len(legs) < 2 or sum(leg.amount_micro for leg in legs) != 0:
        raise ValueError("a ledger transaction needs two or more legs that sum to zero")
    transaction = LedgerTransaction(
        kind=kind,
        idempotency_key=idempotency_key,
        description=description,
        created_by=created_by,
        cluster_id=cluster_id,
    )
    session.add(transaction)
    session.flush()
    for leg in legs:
        session.add(
            LedgerEntry(
                transaction_id=transaction.id, account_id=leg.account.id, amount_micro=leg.amount_micro
            )
        )
        # Incremented in SQL, not in Python, so concurrent postings never lose an update of the cache.
        session.execute(
            update(LedgerAccount)
            .where(LedgerAccount.id == leg.account.id)
            .values(balance_micro=LedgerAccount.balance_micro + leg.amount_micro)
        )
    session.flush()
    for leg in legs:
        session.refresh(leg.account)
    return transaction


def grant_credits(
    session: Session,
    *,
    user_id: uuid.UUID,
    amount_micro: int,
    reason: str,
    idempotency_key: str,
    granted_by: uuid.UUID | None = None,
) -> LedgerTransaction:
    if amount_micro <= 0:
        raise InvalidInput("A grant must be a positive amount.", details={"field": "amount_micro"})
    source = get_account(session, AccountKind.GRANTS)
    target = get_account(session, AccountKind.CUSTOMER_AVAILABLE, user_id)
    return post(
        session,
        kind="credit_grant",
        idempotency_key=idempotency_key,
        legs=[Leg(source, -amount_micro), Leg(target, amount_micro)],
        description=reason,
        created_by=granted_by,
    )


def available_balance(session: Session, user_id: uuid.UUID) -> int:
    return get_account(session, AccountKind.CUSTOMER_AVAILABLE, user_id).balance_micro


def verify_books(session: Session) -> list[str]:
    """Problems found by recomputing every balance from the entries; empty when the books are right."""
    problems = []
    total = session.exec(select(func.coalesce(func.sum(LedgerEntry.amount_micro), 0))).one()
    if total != 0:
        problems.append(f"entries sum to {total}, not 0")
    sums = dict(
        session.exec(
            select(LedgerEntry.account_id, func.sum(LedgerEntry.amount_micro)).group_by(
                LedgerEntry.account_id
            )
        ).all()
    )
    for account in session.exec(select(LedgerAccount)).all():
        derived = sums.get(account.id, 0)
        if derived != account.balance_micro:
            problems.append(
                f"account {account.id} ({account.kind}) caches {account.balance_micro}, entries say {derived}"
            )
        if account.kind in PERSONAL_KINDS and derived < 0:
            problems.append(f"account {account.id} ({account.kind}) is negative: {derived}")
    return problems
