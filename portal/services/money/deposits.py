"""Customer deposits: a personal deposit wallet per customer, watched, swept to the treasury, credited once.

Tokens that arrive on a customer's deposit account open a ``pending`` deposit; its sweep to the treasury is
signed, persisted and sent like a payout (see ``payouts``), and the customer is credited exactly the swept
amount once the sweep has landed, under an idempotency key of the deposit. Tokens arriving meanwhile stay
on the account and open the next deposit.
"""

from __future__ import annotations

import uuid

from solders.pubkey import Pubkey
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from portal.infra.db import session_scope
from portal.models import AccountKind, Deposit, DepositAccount, PayoutState
from portal.models.base import utcnow
from portal.services import state_machines
from portal.services.money import chain, ledger
from portal.services.money.chain import ChainError
from portal.services.money.ledger import Leg
from portal.services.money.payouts import Checkpoint, Resolution, no_checkpoint, resolve
from portal.services.money.treasury import Settlement, Treasury

OPEN_STATES = (PayoutState.PENDING, PayoutState.SUBMITTED)
MAX_SWEEP_ATTEMPTS = 5


def deposit_account(session: Session, treasury: Treasury, user_id: uuid.UUID) -> DepositAccount:
    """The customer's deposit wallet, made on first request (an address only: nothing on chain yet)."""
    account = session.get(DepositAccount, user_id)
    if account is None:
        owner = treasury.deposit_keypair(user_id).pubkey()
        account = DepositAccount(
            user_id=user_id,
            owner_address=str(owner),
            token_account=str(chain.token_account(owner, treasury.mint)),
        )
        session.add(account)
        session.flush()
    return account


def scan(engine: Engine, settlement: Settlement) -> int:
    """Open a deposit for every deposit account holding tokens and no open deposit; returns those opened."""
    with session_scope(engine) as session:
        accounts = session.exec(select(DepositAccount)).all()
        busy = set(
            session.exec(
                select(Deposit.user_id).where(col(Deposit.state).in_([*OPEN_STATES, PayoutState.FAILED]))
            ).all()
        )
    opened = 0
    for account in accounts:
        if account.user_id in busy:
            continue
        balance = settlement.chain.token_balance(Pubkey.from_string(account.token_account))
        if not balance:
            continue
        with session_scope(engine) as session:
            session.add(
                Deposit(user_id=account.user_id, token_account=account.token_account, amount_micro=balance)
            )
        opened += 1
    return opened


def submit_pending(engine: Engine, settlement: Settlement, *, checkpoint: Checkpoint = no_checkpoint) -> int:
    """Sign, persist and send a sweep for each pending deposit; returns the sweeps sent."""
    treasury = settlement.treasury
    with session_scope(engine) as session:
        pending_ids = session.exec(select(Deposit.id).where(Deposit.state == PayoutState.PENDING)).all()
    sent = 0
    for deposit_id in pending_ids:
        with session_scope(engine) as session:
            deposit = session.get(Deposit, deposit_id, with_for_update=True)
            if deposit is None or deposit.state != PayoutState.PENDING:
                continue
            # All that is there now: the account only ever grows until the portal sweeps it.
            balance = settlement.chain.token_balance(Pubkey.from_string(deposit.token_account)) or 0
            if balance <= 0:
                continue
            deposit.amount_micro = balance
            owner = treasury.deposit_keypair(deposit.user_id)
            blockhash = settlement.chain.latest_blockhash()
            transaction = chain.sign(
                [
                    chain.memo(treasury.address, f"gpu-portal deposit {deposit.id} a{deposit.attempts + 1}"),
                    *chain.transfer_instructions(
                        payer=treasury.address,
                        source_owner=owner.pubkey(),
                        mint=treasury.mint,
                        decimals=treasury.decimals,
                        recipient=treasury.address,
                        amount=balance,
                        create_recipient_account=False,
                    ),
                ],
                [treasury.keypair, owner],
                blockhash,
            )
            checkpoint("signed")
            signature = str(transaction.signatures[0])
            deposit.tx_signature = signature
            deposit.blockhash = str(blockhash)
            deposit.attempts += 1
            deposit.submitted_at = utcnow()
            state_machines.move(session, "deposit", deposit, PayoutState.SUBMITTED, f"swept in {signature}")
        checkpoint("persisted")
        try:
            settlement.chain.send(transaction)
        except ChainError as error:
            with session_scope(engine) as session:
                noted = session.get(Deposit, deposit_id)
                if noted is not None:
                    noted.error = str(error)[:1000]
        checkpoint("sent")
        sent += 1
    return sent


def reconcile(engine: Engine, settlement: Settlement) -> dict[str, int]:
    """Credit every sweep that landed; sign again those that can no longer land."""
    with session_scope(engine) as session:
        submitted = session.exec(
            select(Deposit.id, Deposit.tx_signature, Deposit.blockhash).where(
                Deposit.state == PayoutState.SUBMITTED
            )
        ).all()
    counts = {Resolution.LANDED: 0, Resolution.FAILED: 0, Resolution.EXPIRED: 0, Resolution.WAIT: 0}
    for deposit_id, signature, blockhash in submitted:
        if signature is None or blockhash is None:
            continue
        resolution, error = resolve(settlement.chain, signature, blockhash)
        counts[resolution] += 1
        with session_scope(engine) as session:
            deposit = session.get(Deposit, deposit_id, with_for_update=True)
            if deposit is None or deposit.state != PayoutState.SUBMITTED:
                continue
            _apply(session, deposit, resolution, error)
    return counts


def _apply(session: Session, deposit: Deposit, resolution: str, error: str) -> None:
    if resolution == Resolution.LANDED:
        deposit.confirmed_at = utcnow()
        state_machines.move(session, "deposit", deposit, PayoutState.CONFIRMED, "swept to the treasury")
        ledger.post(
            session,
            kind="deposit",
            idempotency_key=f"deposit:{deposit.id}",
            legs=[
                Leg(ledger.get_account(session, AccountKind.DEPOSITS), -deposit.amount_micro),
                Leg(
                    ledger.get_account(session, AccountKind.CUSTOMER_AVAILABLE, deposit.user_id),
                    deposit.amount_micro,
                ),
            ],
            description=f"Deposit confirmed on chain ({deposit.tx_signature})",
        )
    elif resolution == Resolution.FAILED:
        deposit.error = error[:1000]
        giving_up = deposit.attempts >= MAX_SWEEP_ATTEMPTS
        state_machines.move(
            session,
            "deposit",
            deposit,
            PayoutState.FAILED if giving_up else PayoutState.PENDING,
            f"sweep failed on chain: {error}",
        )
    elif resolution == Resolution.EXPIRED:
        deposit.tx_signature = None
        deposit.blockhash = None
        state_machines.move(
            session, "deposit", deposit, PayoutState.PENDING, "sweep not seen before its blockhash expired"
        )


def watch(
    engine: Engine, settlement: Settlement, *, checkpoint: Checkpoint = no_checkpoint
) -> dict[str, int]:
    """One pass of the deposit watcher."""
    before = reconcile(engine, settlement)
    opened = scan(engine, settlement)
    swept = submit_pending(engine, settlement, checkpoint=checkpoint)
    after = reconcile(engine, settlement)
    return {
        "opened": opened,
        "swept": swept,
        "credited": before[Resolution.LANDED] + after[Resolution.LANDED],
    }


def list_deposits(
    session: Session, user_id: uuid.UUID, *, limit: int, offset: int
) -> tuple[list[Deposit], int]:
    query = select(Deposit).where(Deposit.user_id == user_id)
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(query.order_by(col(Deposit.created_at).desc()).limit(limit).offset(offset)).all()
    return list(rows), total
