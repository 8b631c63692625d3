"""The JSON-RPC back end (``RpcChain`` over solana-py) against an endpoint answering from LiteSVM: payouts
exactly once across a crash, deposits credited once, refusals and unknown signatures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from portal.infra.db import session_scope
from portal.services.money import chain, deposits, ledger, payouts
from portal.services.money.chain import ChainError, LiteSvmChain, Outcome, RpcChain
from portal.services.money.treasury import Settlement, local_settlement
from tests.factories import make_user
from tests.servers import ServerThread
from tests.solana_rpc import rpc_app
from tests.test_settlement import SETTINGS, Crash, crash_at, paid, provider_with_earnings


@pytest.fixture
def chains() -> Iterator[tuple[Settlement, Settlement]]:
    """The same chain and treasury twice: through JSON-RPC (what the portal uses) and directly (to look)."""
    direct = local_settlement(LiteSvmChain(), Keypair(), Keypair())
    with ServerThread(rpc_app(direct.chain)) as url:  # type: ignore[arg-type]
        yield Settlement(RpcChain(url), direct.treasury), direct


def test_the_rpc_chain_sends_looks_up_and_refuses(chains):
    rpc, direct = chains
    keys = rpc.treasury
    wallet = Keypair().pubkey()
    blockhash = rpc.chain.latest_blockhash()
    assert rpc.chain.blockhash_valid(blockhash)
    transfer = chain.sign(
        chain.transfer_instructions(
            payer=keys.address, source_owner=keys.address, mint=keys.mint, decimals=6, recipient=wallet,
            amount=4321, create_recipient_account=True,
        ),
        [keys.keypair],
        blockhash,
    )  # fmt: skip
    rpc.chain.send(transfer)
    assert rpc.chain.status(transfer.signatures[0]).outcome is Outcome.LANDED
    assert rpc.chain.token_balance(chain.token_account(wallet, keys.mint)) == 4321
    assert rpc.chain.account_exists(chain.token_account(wallet, keys.mint))
    assert not rpc.chain.account_exists(Keypair().pubkey())
    assert rpc.chain.status(Keypair().sign_message(b"x")).outcome is Outcome.UNKNOWN
    direct.chain.expire_blockhash()  # type: ignore[attr-defined]
    assert not rpc.chain.blockhash_valid(blockhash)
    stale = chain.sign([chain.memo(keys.address, "late")], [keys.keypair], blockhash)
    with pytest.raises(ChainError, match="BlockhashNotFound"):
        rpc.chain.send(stale)


@pytest.mark.parametrize("point", ["persisted", "sent"])
def test_payouts_over_rpc_land_once_across_a_crash(engine, chains, point):
    rpc, direct = chains
    _, wallet = provider_with_earnings(engine, 3_333_333)
    with pytest.raises(Crash):
        payouts.settle(engine, SETTINGS, rpc, checkpoint=crash_at(point))
    direct.chain.expire_blockhash()  # type: ignore[attr-defined]
    payouts.settle(engine, SETTINGS, rpc)
    payouts.settle(engine, SETTINGS, rpc)
    assert paid(direct, wallet) == 3_333_333
    with session_scope(engine) as session:
        assert ledger.verify_books(session) == []


def test_a_deposit_over_rpc_is_credited_once(engine, chains):
    rpc, direct = chains
    with session_scope(engine) as session:
        user_id = make_user(session).id
        address = deposits.deposit_account(session, rpc.treasury, user_id).owner_address
    keys = direct.treasury
    chain.mint_to(direct.chain, keys.keypair, keys.mint, 6, Pubkey.from_string(address), 7_000_000)
    for _ in range(2):
        deposits.watch(engine, rpc)
    with session_scope(engine) as session:
        assert ledger.available_balance(session, user_id) == 7_000_000
