"""The double-entry ledger: every movement of money is a balanced transaction between accounts.

Amounts are integer micro-USD. Account balances are a cache updated in the same database
transaction as the entries; the entries are the truth (``verify_books`` recomputes from them).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, func, insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from portal.models import AccountKind, LedgerAccount, LedgerEntry, LedgerTransaction
from portal.models.base import utcnow
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
    query = select(LedgerAccount).where(LedgerAccount.kind == kind, LedgerAccount.owner_id == owner_id)
    account = session.exec(query).first()
    if account is not None:
        return account
    try:
        with session.begin_nested():
            account = LedgerAccount(kind=kind, owner_id=owner_id)
            session.add(account)
    except IntegrityError:
        # Another transaction made it meanwhile (a customer's two first deploys at once): that one is it.
        account = session.exec(query).one()
    return account


@dataclass(frozen=True)
class Posting:
    """One balanced transaction to record: (account id, signed amount) legs summing to zero."""

    kind: str
    idempotency_key: str
    legs: Sequence[tuple[int, int]]
    description: str = ""
    cluster_id: uuid.UUID | None = None
    created_by: uuid.UUID | None = None


def post_many(session: Session, postings: Sequence[Posting]) -> dict[str, int]:
    """Record balanced transactions in a few statements; returns each key's transaction id.

    A key posted before (or twice in ``postings``) is recorded once: its first transaction stands. Two
    concurrent first postings of one key meet the unique index: one fails with an IntegrityError, and its
    retry then finds the other's transaction. Balances are incremented in SQL, never overwritten, so
    concurrent postings never lose an update of the cache.
    """
    if not postings:
        return {}
    session.flush()  # accounts made in this transaction must exist before their entries
    keys = list(dict.fromkeys(p.idempotency_key for p in postings))
    ids: dict[str, int] = {}
    for chunk in _chunks(keys):
        ids.update(
            session.exec(
                select(LedgerTransaction.idempotency_key, LedgerTransaction.id).where(
                    col(LedgerTransaction.idempotency_key).in_(chunk)
                )
            ).all()
        )
    fresh: dict[str, Posting] = {}
    for posting in postings:
        if posting.idempotency_key in ids or posting.idempotency_key in fresh:
            continue
        if len(posting.legs) < 2 or sum(amount for _, amount in posting.legs) != 0:
            raise ValueError("a ledger transaction needs two or more legs that sum to zero")
        fresh[posting.idempotency_key] = posting
    if not fresh:
        return ids
    now = utcnow()
    table = LedgerTransaction.__table__
    rows = session.execute(
        insert(table).returning(table.c.idempotency_key, table.c.id, sort_by_parameter_order=True),
        [
            {
                "kind": p.kind,
                "idempotency_key": p.idempotency_key,
                "description": p.description,
                "created_by": p.created_by,
                "cluster_id": p.cluster_id,
                "created_at": now,
            }
            for p in fresh.values()
        ],
    ).all()
    ids.update((key, transaction_id) for key, transaction_id in rows)
    session.execute(
        insert(LedgerEntry.__table__),
        [
            {"transaction_id": ids[key], "account_id": account, "amount_micro": amount, "created_at": now}
            for key, p in fresh.items()
            for account, amount in p.legs
        ],
    )
    deltas: Counter[int] = Counter()
    for p in fresh.values():
        for account, amount in p.legs:
            deltas[account] += amount
    accounts = LedgerAccount.__table__
    session.execute(
        accounts.update()
        .where(accounts.c.id == bindparam("account"))
        .values(balance_micro=accounts.c.balance_micro + bindparam("delta")),
        [{"account": account, "delta": delta} for account, delta in deltas.items()],
    )
    # Loaded accounts read their new balance on next use.
    for loaded in list(session.identity_map.values()):
        if isinstance(loaded, LedgerAccount) and loaded.id in deltas:
            session.expire(loaded, ["balance_micro"])
    return ids


def _chunks(items: Sequence, size: int = 500) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
    """Record one balanced transaction; posting the same idempotency key again returns the first one."""
    ids = post_many(
        session,
        [
            Posting(
                kind,
                idempotency_key,
                [(leg.account.id, leg.amount_micro) for leg in legs],  # type: ignore[misc]
                description,
                cluster_id,
                created_by,
            )
        ],
    )
    transaction = session.get(LedgerTransaction, ids[idempotency_key])
    assert transaction is not None
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
