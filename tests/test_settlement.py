"""Solana settlement on a real LiteSVM chain: payouts exactly once across crashes, batching, failures and an
admin's retry; deposits credited exactly once; the chain's state shared through its file."""

from __future__ import annotations

import multiprocessing
import uuid
from pathlib import Path

import pytest
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.signature import Signature
from spl.token.instructions import create_idempotent_associated_token_account
from sqlmodel import select

from portal.infra.db import session_scope
from portal.models import AccountKind, Deposit, LedgerTransaction, Payout, PayoutState, User
from portal.services.money import chain, deposits, ledger, payouts, treasury
from portal.services.money.chain import ChainError, LiteSvmChain, Outcome
from portal.services.money.ledger import Leg
from portal.services.money.treasury import Settlement, Treasury, local_settlement
from tests.conftest import settings_for
from tests.factories import RecordedFollowUps, make_provider, make_user

SETTINGS = settings_for(payout_threshold_micro=1_000_000, payout_batch_size=10)


class Crash(Exception):
    """The process dies here."""


def crash_at(point: str):
    def checkpoint(reached: str) -> None:
        if reached == point:
            raise Crash(point)

    return checkpoint


@pytest.fixture
def settlement(tmp_path) -> Settlement:
    return local_settlement(LiteSvmChain(tmp_path / "ledger.json"), Keypair(), Keypair())


def restarted(settlement: Settlement, tmp_path) -> Settlement:
    """The same chain and treasury as a new process sees them: loaded from the chain's file."""
    return Settlement(LiteSvmChain(tmp_path / "ledger.json"), settlement.treasury)


def provider_with_earnings(engine, amount: int, *, wallet: bool = True) -> tuple[uuid.UUID, Pubkey]:
    address = Keypair().pubkey()
    with session_scope(engine) as session:
        provider_id = make_provider(session)
        if wallet:
            session.get(User, provider_id).wallet_address = str(address)
        ledger.post(
            session,
            kind="usage",
            idempotency_key=f"earned:{provider_id}",
            legs=[
                Leg(ledger.get_account(session, AccountKind.GRANTS), -amount),
                Leg(ledger.get_account(session, AccountKind.PROVIDER_EARNED, provider_id), amount),
            ],
        )
    return provider_id, address


def paid(settlement: Settlement, wallet: Pubkey) -> int:
    return settlement.chain.token_balance(chain.token_account(wallet, settlement.treasury.mint)) or 0


def books_balance(engine) -> None:
    with session_scope(engine) as session:
        assert ledger.verify_books(session) == []


def _first_use(path: str, start, keys) -> None:
    start.wait()
    try:
        keys.put(str(treasury.treasury_keypair(settings_for(data_dir=Path(path))).pubkey()))
    except Exception as error:  # reported in the test's process
        keys.put(f"{type(error).__name__}: {error}")


def test_processes_sharing_a_data_dir_make_its_treasury_key_once_together(tmp_path):
    """Portals and task workers on one data_dir may all need the local treasury first at the same moment:
    they must all sign with one key, and none may read the file half written."""
    processes = 8
    context = multiprocessing.get_context("fork")
    for attempt in range(5):
        start, keys = context.Barrier(processes), context.Queue()
        started = [
            context.Process(target=_first_use, args=(str(tmp_path / str(attempt)), start, keys))
            for _ in range(processes)
        ]
        for process in started:
            process.start()
        seen = [keys.get(timeout=30) for _ in started]
        for process in started:
            process.join()
        assert len(set(seen)) == 1, seen
        assert [path.name for path in (tmp_path / str(attempt)).iterdir()] == ["solana-treasury.json"]


def test_the_chain_file_is_one_chain_for_every_process_and_a_resend_changes_nothing(tmp_path, settlement):
    wallet = Keypair().pubkey()
    other_process = restarted(settlement, tmp_path)
    treasury = settlement.treasury
    transfer = chain.sign(
        chain.transfer_instructions(
            payer=treasury.address,
            source_owner=treasury.address,
            mint=treasury.mint,
            decimals=6,
            recipient=wallet,
            amount=1234,
            create_recipient_account=True,
        ),
        [treasury.keypair],
        other_process.chain.latest_blockhash(),
    )
    settlement.chain.send(transfer)
    settlement.chain.send(transfer)  # the same signature again
    other_process.chain.send(transfer)
    assert paid(other_process, wallet) == 1234
    assert other_process.chain.status(transfer.signatures[0]).outcome is Outcome.LANDED
    assert settlement.chain.status(Keypair().sign_message(b"x")).outcome is Outcome.UNKNOWN

    stale = chain.sign(
        chain.transfer_instructions(
            payer=treasury.address,
            source_owner=treasury.address,
            mint=treasury.mint,
            decimals=6,
            recipient=wallet,
            amount=1,
            create_recipient_account=False,
        ),
        [treasury.keypair],
        settlement.chain.latest_blockhash(),
    )
    other_process.chain.expire_blockhash()
    assert not settlement.chain.blockhash_valid(stale.message.recent_blockhash)
    with pytest.raises(ChainError, match="BlockhashNotFound"):
        settlement.chain.send(stale)
    assert paid(settlement, wallet) == 1234


def test_due_providers_are_paid_in_batched_transactions_once(engine, settlement):
    providers = [provider_with_earnings(engine, 1_000_000 + n) for n in range(23)]
    below, below_wallet = provider_with_earnings(engine, 999_999)
    no_wallet, _ = provider_with_earnings(engine, 5_000_000, wallet=False)

    result = payouts.settle(engine, SETTINGS, settlement)

    assert result["created"] == 23 and result["confirmed"] == 23
    assert 3 <= result["transactions"] < 23
    for n, (_, wallet) in enumerate(providers):
        assert paid(settlement, wallet) == 1_000_000 + n
    assert paid(settlement, below_wallet) == 0
    with session_scope(engine) as session:
        rows = session.exec(select(Payout)).all()
        assert {row.state for row in rows} == {PayoutState.CONFIRMED}
        assert len({row.tx_signature for row in rows}) == result["transactions"]
        assert ledger.get_account(session, AccountKind.PROVIDER_EARNED, no_wallet).balance_micro == 5_000_000
        assert ledger.get_account(session, AccountKind.PROVIDER_EARNED, below).balance_micro == 999_999
        assert ledger.get_account(session, AccountKind.PAYOUTS_IN_FLIGHT).balance_micro == 0
    again = payouts.settle(engine, SETTINGS, settlement)
    assert again == {"created": 0, "transactions": 0, "confirmed": 0, "failed": 0}
    books_balance(engine)


@pytest.mark.parametrize("point", ["signed", "persisted", "sent"])
def test_a_crash_between_sign_persist_send_and_confirm_never_pays_twice(engine, settlement, tmp_path, point):
    provider_id, wallet = provider_with_earnings(engine, 7_654_321)
    with pytest.raises(Crash):
        payouts.settle(engine, SETTINGS, settlement, checkpoint=crash_at(point))
    assert paid(settlement, wallet) == (7_654_321 if point == "sent" else 0)

    # A new process takes over; a transaction persisted but never sent waits for its blockhash to expire.
    after_restart = restarted(settlement, tmp_path)
    first = payouts.settle(engine, SETTINGS, after_restart)
    if point == "persisted":
        assert first["confirmed"] == 0 and paid(after_restart, wallet) == 0
        after_restart.chain.expire_blockhash()
        first = payouts.settle(engine, SETTINGS, after_restart)
    assert first["confirmed"] == 1
    payouts.settle(engine, SETTINGS, after_restart)

    assert paid(after_restart, wallet) == 7_654_321
    with session_scope(engine) as session:
        (payout,) = session.exec(select(Payout)).all()
        assert payout.state == PayoutState.CONFIRMED and payout.amount_micro == 7_654_321
        assert payout.attempts == (2 if point == "persisted" else 1)
        landed = after_restart.chain.status(Signature.from_string(payout.tx_signature))
        assert landed.outcome is Outcome.LANDED
        assert ledger.get_account(session, AccountKind.PROVIDER_EARNED, provider_id).balance_micro == 0
        assert ledger.get_account(session, AccountKind.TREASURY).balance_micro == 7_654_321
    books_balance(engine)


def test_a_payout_that_fails_on_chain_is_failed_until_an_admin_retries_it(engine, tmp_path):
    unfunded_mint = Keypair()
    funded = local_settlement(LiteSvmChain(tmp_path / "ledger.json"), Keypair(), unfunded_mint)
    # A treasury that holds no tokens of the mint: the transfer executes and fails on chain.
    empty = Keypair()
    funded.chain.airdrop(empty.pubkey(), 10**10)
    chain.send_checked(
        funded.chain,
        chain.sign(
            [
                create_idempotent_associated_token_account(
                    empty.pubkey(), empty.pubkey(), unfunded_mint.pubkey()
                )
            ],
            [empty],
            funded.chain.latest_blockhash(),
        ),
    )
    broke = Settlement(funded.chain, Treasury(empty, unfunded_mint.pubkey(), 6))
    _, wallet = provider_with_earnings(engine, 2_000_000)

    result = payouts.settle(engine, SETTINGS, broke)

    assert result["failed"] == 1 and paid(funded, wallet) == 0
    with session_scope(engine) as session:
        (payout,) = session.exec(select(Payout)).all()
        assert payout.state == PayoutState.FAILED and "insufficient" in payout.error.lower()
        payout_id = payout.id
    assert payouts.settle(engine, SETTINGS, broke)["transactions"] == 0  # failed stays failed
    with session_scope(engine) as session:
        followups = RecordedFollowUps()
        payouts.retry(session, followups, payout_id, reason="treasury refilled", admin_id=uuid.uuid4())
    assert followups.handed == [("settle_payouts", None)]
    assert payouts.settle(engine, SETTINGS, funded)["confirmed"] == 1
    assert paid(funded, wallet) == 2_000_000
    books_balance(engine)


def test_two_equal_payouts_to_one_wallet_under_one_blockhash_both_land(engine, settlement):
    """Without a memo naming the payout they would be one transaction, and the chain would run it once."""
    provider_id, wallet = provider_with_earnings(engine, 4_000_000)
    keys = settlement.treasury
    opened = [create_idempotent_associated_token_account(keys.address, wallet, keys.mint)]
    chain.send_checked(
        settlement.chain, chain.sign(opened, [keys.keypair], settlement.chain.latest_blockhash())
    )
    payouts.settle(engine, SETTINGS, settlement)
    with session_scope(engine) as session:
        ledger.post(
            session,
            kind="usage",
            idempotency_key=f"earned-again:{provider_id}",
            legs=[
                Leg(ledger.get_account(session, AccountKind.GRANTS), -4_000_000),
                Leg(ledger.get_account(session, AccountKind.PROVIDER_EARNED, provider_id), 4_000_000),
            ],
        )
    assert payouts.settle(engine, SETTINGS, settlement)["confirmed"] == 1
    assert paid(settlement, wallet) == 8_000_000
    with session_scope(engine) as session:
        assert len({p.tx_signature for p in session.exec(select(Payout)).all()}) == 2
    books_balance(engine)


def test_retry_refuses_a_payout_that_has_not_failed(engine, settlement):
    provider_with_earnings(engine, 3_000_000)
    payouts.settle(engine, SETTINGS, settlement)
    with session_scope(engine) as session:
        (payout,) = session.exec(select(Payout)).all()
        with pytest.raises(Exception, match="Only a failed payout"):
            payouts.retry(session, RecordedFollowUps(), payout.id, reason="no", admin_id=uuid.uuid4())
        with pytest.raises(Exception, match="No such payout"):
            payouts.retry(session, RecordedFollowUps(), uuid.uuid4(), reason="no", admin_id=uuid.uuid4())


def deposit_tokens(settlement: Settlement, address: str, amount: int) -> None:
    treasury = settlement.treasury
    chain.mint_to(settlement.chain, treasury.keypair, treasury.mint, 6, Pubkey.from_string(address), amount)


def credited(engine, user_id) -> int:
    with session_scope(engine) as session:
        return ledger.available_balance(session, user_id)


@pytest.mark.parametrize("point", [None, "signed", "persisted", "sent"])
def test_a_deposit_is_credited_exactly_once_across_crashes(engine, settlement, tmp_path, point):
    with session_scope(engine) as session:
        user_id = make_user(session).id
        address = deposits.deposit_account(session, settlement.treasury, user_id).owner_address
    deposit_tokens(settlement, address, 25_000_000)
    if point is not None:
        with pytest.raises(Crash):
            deposits.watch(engine, settlement, checkpoint=crash_at(point))
        settlement = restarted(settlement, tmp_path)
        settlement.chain.expire_blockhash()  # lets a sweep persisted but never sent be signed again
    for _ in range(3):
        deposits.watch(engine, settlement)

    assert credited(engine, user_id) == 25_000_000
    treasury_before = settlement.chain.token_balance(settlement.treasury.token_account)
    deposit_tokens(settlement, address, 5_000_000)  # a second deposit later
    deposits.watch(engine, settlement)
    deposits.watch(engine, settlement)
    assert credited(engine, user_id) == 30_000_000
    assert settlement.chain.token_balance(settlement.treasury.token_account) == treasury_before + 5_000_000
    with session_scope(engine) as session:
        rows = session.exec(select(Deposit)).all()
        assert sorted(row.amount_micro for row in rows) == [5_000_000, 25_000_000]
        assert {row.state for row in rows} == {PayoutState.CONFIRMED}
        kinds = session.exec(select(LedgerTransaction.kind).where(LedgerTransaction.kind == "deposit")).all()
        assert len(kinds) == 2
    books_balance(engine)


def test_each_customer_has_their_own_deposit_address(engine, settlement):
    with session_scope(engine) as session:
        first = make_user(session).id
        second = make_user(session).id
        a = deposits.deposit_account(session, settlement.treasury, first)
        b = deposits.deposit_account(session, settlement.treasury, second)
        assert deposits.deposit_account(session, settlement.treasury, first).owner_address == a.owner_address
    assert a.owner_address != b.owner_address
    assert a.token_account == str(
        chain.token_account(Pubkey.from_string(a.owner_address), settlement.treasury.mint)
    )
