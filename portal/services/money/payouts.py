"""Provider payouts on Solana, exactly once even across crashes.

1. ``create_due``: a provider whose unpaid earnings reached the threshold and who linked a wallet gets a
   ``pending`` payout; the amount leaves their earned account for "payouts in flight" in the same
   transaction, so it can never be paid twice from the ledger's side.
2. ``submit_pending``: pending payouts are packed into transactions of several ``transfer_checked``
   instructions, signed, and the signature and blockhash are committed (``submitted``) before the
   transaction is sent.
3. ``reconcile``: each submitted signature is looked up on chain. Landed: ``confirmed`` and the amount leaves
   the platform. Failed on chain: ``failed`` (an admin may retry). Unseen with a blockhash that can no
   longer land anything: back to ``pending``, to be signed anew. Unseen otherwise: wait.

A crash anywhere leaves a state this sequence completes: before the commit nothing was sent; after it the
signature is known and looked up before anything is signed again.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from solders.hash import Hash
from solders.instruction import Instruction
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import VersionedTransaction
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from portal.config import Settings
from portal.infra.db import session_scope
from portal.models import AccountKind, LedgerAccount, Payout, PayoutState, User
from portal.models.base import utcnow
from portal.security.principal import RequestOrigin
from portal.services import audit, state_machines
from portal.services.errors import Conflict, InvalidInput, NotFound
from portal.services.followups import FollowUps
from portal.services.money import chain, ledger
from portal.services.money.chain import Chain, ChainError, Outcome
from portal.services.money.treasury import Settlement

# Named points between the steps of a submission, where tests inject crashes.
Checkpoint = Callable[[str], None]


def no_checkpoint(_: str) -> None:
    return None


def create_due(session: Session, settings: Settings) -> list[Payout]:
    """A pending payout for every provider with a wallet whose unpaid earnings reached the threshold."""
    due = session.exec(
        select(LedgerAccount, User.wallet_address)
        .join(User, col(User.id) == LedgerAccount.owner_id)
        .where(
            LedgerAccount.kind == AccountKind.PROVIDER_EARNED,
            LedgerAccount.balance_micro >= settings.payout_threshold_micro,
            col(User.wallet_address).is_not(None),
        )
        .order_by(col(LedgerAccount.id))
        # Locked and read under the lock: a concurrent pass that paid a provider first leaves nothing due.
        .with_for_update(of=LedgerAccount)
        .execution_options(populate_existing=True)
    ).all()
    made = [
        Payout(provider_id=earned.owner_id, wallet_address=wallet, amount_micro=earned.balance_micro)
        for earned, wallet in due
        if _valid_address(wallet)
    ]
    if not made:
        return []
    session.add_all(made)
    session.flush()
    earned_ids = {earned.owner_id: earned.id for earned, _ in due}
    in_flight = ledger.get_account(session, AccountKind.PAYOUTS_IN_FLIGHT).id
    ledger.post_many(
        session,
        [
            ledger.Posting(
                "payout",
                f"payout:{payout.id}",
                [(earned_ids[payout.provider_id], -payout.amount_micro), (in_flight, payout.amount_micro)],
                f"Payout to {payout.wallet_address}",
            )
            for payout in made
        ],
    )
    return made


def _valid_address(address: str | None) -> bool:
    try:
        Pubkey.from_string(address or "")
    except ValueError:
        return False
    return True


@dataclass
class _Batch:
    payouts: list[Payout]
    transaction: VersionedTransaction


def _pack(
    payouts: Sequence[Payout], settlement: Settlement, blockhash: Hash, known_accounts: set[Pubkey]
) -> _Batch:
    """The longest prefix of ``payouts`` whose transfers fit in one transaction (at least one), with a memo
    naming the first payout and its attempt, which no other transaction carries."""
    treasury = settlement.treasury
    transfers: list[list[Instruction]] = []
    for payout in payouts:
        wallet = Pubkey.from_string(payout.wallet_address)
        destination = chain.token_account(wallet, treasury.mint)
        if destination not in known_accounts and settlement.chain.account_exists(destination):
            known_accounts.add(destination)
        transfers.append(
            chain.transfer_instructions(
                payer=treasury.address,
                source_owner=treasury.address,
                mint=treasury.mint,
                decimals=treasury.decimals,
                recipient=wallet,
                amount=payout.amount_micro,
                create_recipient_account=destination not in known_accounts,
            )
        )
    first = payouts[0]
    note = chain.memo(
        treasury.address, f"gpu-portal payout {first.id} +{len(payouts) - 1} a{first.attempts + 1}"
    )
    for count in range(len(payouts), 0, -1):
        instructions = [note, *(i for transfer in transfers[:count] for i in transfer)]
        transaction = chain.sign(instructions, [treasury.keypair], blockhash)
        if chain.fits(transaction) or count == 1:
            return _Batch(list(payouts[:count]), transaction)
    raise AssertionError("unreachable")


def submit_pending(
    engine: Engine,
    settings: Settings,
    settlement: Settlement,
    *,
    checkpoint: Checkpoint = no_checkpoint,
    limit: int | None = None,
) -> int:
    """Sign, persist, then send pending payouts, batch after batch; returns the transactions sent."""
    sent = 0
    known_accounts: set[Pubkey] = set()
    while limit is None or sent < limit:
        with session_scope(engine) as session:
            pending = session.exec(
                select(Payout)
                .where(Payout.state == PayoutState.PENDING)
                .order_by(col(Payout.created_at), col(Payout.id))
                .limit(settings.payout_batch_size)
                .with_for_update(skip_locked=True)
            ).all()
            if not pending:
                break
            blockhash = settlement.chain.latest_blockhash()
            batch = _pack(pending, settlement, blockhash, known_accounts)
            checkpoint("signed")
            signature = str(batch.transaction.signatures[0])
            for payout in batch.payouts:
                payout.tx_signature = signature
                payout.blockhash = str(blockhash)
                payout.attempts += 1
                payout.submitted_at = utcnow()
                state_machines.move(
                    session, "payout", payout, PayoutState.SUBMITTED, f"signed as {signature}"
                )
        checkpoint("persisted")
        try:
            settlement.chain.send(batch.transaction)
        except ChainError as error:  # not taken: reconcile signs anew once its blockhash has expired
            _note_error(engine, signature, str(error))
        checkpoint("sent")
        sent += 1
    return sent


def _note_error(engine: Engine, signature: str, error: str) -> None:
    with session_scope(engine) as session:
        for payout in session.exec(select(Payout).where(Payout.tx_signature == signature)).all():
            payout.error = error[:1000]


class Resolution:
    LANDED = "landed"
    FAILED = "failed"
    EXPIRED = "expired"  # never seen, and can no longer land: safe to sign again
    WAIT = "wait"


def resolve(chain_: Chain, signature: str, blockhash: str) -> tuple[str, str]:
    """What became of a persisted transaction, as (resolution, error).

    The blockhash is checked before the signature: a transaction that lands in between is then seen by
    the lookup, so "unseen and expired" really means it can never land.
    """
    still_valid = chain_.blockhash_valid(Hash.from_string(blockhash))
    status = chain_.status(Signature.from_string(signature))
    if status.outcome is Outcome.LANDED:
        return Resolution.LANDED, ""
    if status.outcome is Outcome.FAILED:
        return Resolution.FAILED, status.error
    return (Resolution.WAIT if still_valid else Resolution.EXPIRED), ""


def reconcile(engine: Engine, settlement: Settlement) -> dict[str, int]:
    """Settle every submitted payout whose transaction's fate is known; returns payouts per outcome."""
    with session_scope(engine) as session:
        submitted = session.exec(
            select(Payout.tx_signature, Payout.blockhash)
            .where(Payout.state == PayoutState.SUBMITTED)
            .distinct()
        ).all()
    counts = {Resolution.LANDED: 0, Resolution.FAILED: 0, Resolution.EXPIRED: 0, Resolution.WAIT: 0}
    for signature, blockhash in submitted:
        if signature is None or blockhash is None:
            continue
        resolution, error = resolve(settlement.chain, signature, blockhash)
        with session_scope(engine) as session:
            payouts = session.exec(
                select(Payout)
                .where(Payout.tx_signature == signature, Payout.state == PayoutState.SUBMITTED)
                .with_for_update()
            ).all()
            _apply(session, payouts, resolution, error)
            counts[resolution] += len(payouts)
    return counts


def _apply(session: Session, payouts: Sequence[Payout], resolution: str, error: str) -> None:
    if resolution == Resolution.LANDED:
        in_flight = ledger.get_account(session, AccountKind.PAYOUTS_IN_FLIGHT).id
        treasury = ledger.get_account(session, AccountKind.TREASURY).id
        postings = []
        for payout in payouts:
            payout.confirmed_at = utcnow()
            state_machines.move(session, "payout", payout, PayoutState.CONFIRMED, "landed on chain")
            postings.append(
                ledger.Posting(
                    "payout_confirmed",
                    f"payout-confirmed:{payout.id}",
                    [(in_flight, -payout.amount_micro), (treasury, payout.amount_micro)],
                    f"Paid to {payout.wallet_address} in {payout.tx_signature}",
                )
            )
        ledger.post_many(session, postings)
        return
    for payout in payouts:
        if resolution == Resolution.FAILED:
            payout.error = error[:1000]
            state_machines.move(session, "payout", payout, PayoutState.FAILED, f"failed on chain: {error}")
        elif resolution == Resolution.EXPIRED:
            payout.error = f"attempt {payout.attempts}: {payout.tx_signature} expired unseen"
            payout.tx_signature = None
            payout.blockhash = None
            state_machines.move(
                session,
                "payout",
                payout,
                PayoutState.PENDING,
                "not seen on chain before its blockhash expired",
            )


def settle(
    engine: Engine, settings: Settings, settlement: Settlement, *, checkpoint: Checkpoint = no_checkpoint
) -> dict[str, int]:
    """One settlement pass: finish what an earlier pass (or a crash) left, make due payouts, send them."""
    outcome = reconcile(engine, settlement)
    with session_scope(engine) as session:
        made = len(create_due(session, settings))
    transactions = submit_pending(engine, settings, settlement, checkpoint=checkpoint)
    after = reconcile(engine, settlement)
    return {
        "created": made,
        "transactions": transactions,
        "confirmed": outcome[Resolution.LANDED] + after[Resolution.LANDED],
        "failed": outcome[Resolution.FAILED] + after[Resolution.FAILED],
    }


def retry(
    session: Session,
    followups: FollowUps,
    payout_id: uuid.UUID,
    *,
    reason: str,
    admin_id: uuid.UUID,
    origin: RequestOrigin | None = None,
) -> Payout:
    """Send a failed payout again (its amount is still held in flight), at the next settlement, which is
    asked for once this is committed. Audited with the adapter's origin."""
    payout = session.get(Payout, payout_id, with_for_update=True)
    if payout is None:
        raise NotFound("No such payout.", code="payout_not_found")
    if payout.state != PayoutState.FAILED:
        raise Conflict(
            f"Only a failed payout can be retried; this one is {payout.state}.", code="invalid_state"
        )
    payout.tx_signature = None
    payout.blockhash = None
    state_machines.move(session, "payout", payout, PayoutState.PENDING, f"retried by an admin: {reason}")
    audit.record(
        session,
        "payout.retry",
        actor_id=f"user:{admin_id}",
        origin=origin,
        target_type="payout",
        target_id=payout.id,
        details={"amount_micro": payout.amount_micro, "reason": reason},
    )
    session.commit()
    followups.settle_payouts()
    return payout


def list_payouts(
    session: Session, provider_id: uuid.UUID | None, *, limit: int, offset: int, state: str | None = None
) -> tuple[list[Payout], int]:
    """A provider's payouts (all of them for ``None``: admins), newest first."""
    query = select(Payout)
    if provider_id is not None:
        query = query.where(Payout.provider_id == provider_id)
    if state is not None:
        query = query.where(Payout.state == state)
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(query.order_by(col(Payout.created_at).desc()).limit(limit).offset(offset)).all()
    return list(rows), total


def search_payouts(
    session: Session,
    *,
    limit: int,
    offset: int,
    state: str | None = None,
    provider_id: uuid.UUID | None = None,
    provider_email: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[tuple[Payout, str | None]], int]:
    """Every provider's payouts for admins, newest first, each with its provider's email: filtered by
    state, provider (id, or part of the email), and made at or after ``since`` and before ``until``."""
    if since is not None and until is not None and until <= since:
        raise InvalidInput(
            "until is not after since: the period ends after it starts.", details={"field": "until"}
        )
    if state is not None and state not in set(PayoutState):
        raise InvalidInput(f"No payout is {state!r}.", details={"field": "state"})
    query = select(Payout, User.email).join(User, col(User.id) == Payout.provider_id)
    if state is not None:
        query = query.where(Payout.state == state)
    if provider_id is not None:
        query = query.where(Payout.provider_id == provider_id)
    if provider_email:
        query = query.where(func.lower(User.email).contains(provider_email.strip().lower(), autoescape=True))
    if since is not None:
        query = query.where(col(Payout.created_at) >= since)
    if until is not None:
        query = query.where(col(Payout.created_at) < until)
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(
        query.order_by(col(Payout.created_at).desc(), col(Payout.id)).limit(limit).offset(offset)
    ).all()
    return [(payout, email) for payout, email in rows], total


def explorer_url(settings: Settings, signature: str | None) -> str | None:
    return settings.solana_explorer_url.format(signature=signature) if signature else None


def totals_by_state(session: Session) -> dict[str, tuple[int, int]]:
    """Payouts ever made, by state: (how many, micro-USD)."""
    rows = session.exec(
        select(Payout.state, func.count(), func.coalesce(func.sum(Payout.amount_micro), 0)).group_by(
            Payout.state
        )
    ).all()
    return {state: (int(count), int(amount)) for state, count, amount in rows}
