"""The platform's side of the chain: the treasury keypair, the mint, and customers' deposit keys.

The treasury keypair comes from the settings or a solana-keygen file; in development it is generated once
into ``data_dir`` (mode 600). It is never logged. Deposit keys are derived from it per customer (HMAC), so
no customer key is stored anywhere. On the embedded LiteSVM chain the treasury also creates and funds a
local mint; a real deployment names an existing mint (``PORTAL_SOLANA_MINT``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from solders.keypair import Keypair
from solders.pubkey import Pubkey

from portal.config import Settings, made_once
from portal.services.money import chain as chain_module
from portal.services.money.chain import Chain, LiteSvmChain, RpcChain

LOCAL_SUPPLY = 10**15  # tokens minted to the treasury of a local chain (a billion USD at 6 decimals)
LOCAL_LAMPORTS = 10**12  # SOL for fees on a local chain


@dataclass(frozen=True)
class Treasury:
    keypair: Keypair
    mint: Pubkey
    decimals: int

    @property
    def address(self) -> Pubkey:
        return self.keypair.pubkey()

    @property
    def token_account(self) -> Pubkey:
        return chain_module.token_account(self.address, self.mint)

    def deposit_keypair(self, user_id: uuid.UUID) -> Keypair:
        seed = hmac.new(bytes(self.keypair)[:32], b"deposit:" + user_id.bytes, hashlib.sha256).digest()
        return Keypair.from_seed(seed)

    def __repr__(self) -> str:  # never the key
        return f"Treasury(address={self.address}, mint={self.mint})"


def _keypair_from_text(text: str) -> Keypair:
    text = text.strip()
    if text.startswith("["):
        return Keypair.from_bytes(bytes(json.loads(text)))
    return Keypair.from_base58_string(text)


def _local_keypair(path: Path) -> Keypair:
    """A keypair kept in a solana-keygen style file under data_dir, made on first use (by one process of
    those sharing data_dir, whichever comes first)."""
    return _keypair_from_text(made_once(path, lambda: json.dumps(list(bytes(Keypair())))))


def treasury_keypair(settings: Settings) -> Keypair:
    if settings.solana_treasury_keypair is not None:
        return _keypair_from_text(settings.solana_treasury_keypair.get_secret_value())
    if settings.solana_treasury_keypair_file is not None:
        return _keypair_from_text(settings.solana_treasury_keypair_file.read_text())
    return _local_keypair(settings.data_dir / "solana-treasury.json")


@dataclass(frozen=True)
class Settlement:
    """The chain and the treasury that settles on it."""

    chain: Chain
    treasury: Treasury


_prepare_lock = threading.Lock()


def _prepare_local_chain(chain: Chain, treasury_key: Keypair, mint_key: Keypair, decimals: int) -> None:
    """Fund the treasury and create the local mint, once per chain."""
    exclusive = chain.exclusive() if isinstance(chain, LiteSvmChain) else contextlib.nullcontext()
    with _prepare_lock, exclusive:
        if chain.account_exists(mint_key.pubkey()):
            return
        chain.airdrop(treasury_key.pubkey(), LOCAL_LAMPORTS)
        chain_module.create_mint(chain, treasury_key, mint_key, decimals)
        chain_module.mint_to(
            chain, treasury_key, mint_key.pubkey(), decimals, treasury_key.pubkey(), LOCAL_SUPPLY
        )


def local_settlement(chain: Chain, treasury_key: Keypair, mint_key: Keypair, decimals: int = 6) -> Settlement:
    """A funded treasury on a development chain (LiteSVM)."""
    _prepare_local_chain(chain, treasury_key, mint_key, decimals)
    return Settlement(chain, Treasury(treasury_key, mint_key.pubkey(), decimals))


def treasury_of(settings: Settings) -> Treasury:
    """The treasury's keys and mint, without touching the chain (enough to derive deposit addresses)."""
    if settings.solana_rpc_url is not None and settings.solana_mint is not None:
        mint = Pubkey.from_string(settings.solana_mint)
    else:
        mint = _local_keypair(settings.data_dir / "solana-mint.json").pubkey()
    return Treasury(treasury_keypair(settings), mint, settings.solana_token_decimals)


@functools.cache
def _settlement(rpc_url: str | None, data_dir: Path, treasury: Treasury) -> Settlement:
    if rpc_url is not None:
        return Settlement(RpcChain(rpc_url), treasury)
    chain = LiteSvmChain(data_dir / "solana-ledger.json")
    return local_settlement(
        chain, treasury.keypair, _local_keypair(data_dir / "solana-mint.json"), treasury.decimals
    )


def settlement(settings: Settings) -> Settlement:
    """The installation's chain and treasury (a local chain is funded on first use); one per process."""
    return _settlement(settings.solana_rpc_url, settings.data_dir, treasury_of(settings))


def network_name(settings: Settings) -> str:
    """What the UI says about the chain: "local" is LiteSVM, whose tokens are not real."""
    return "local" if settings.solana_rpc_url is None else "solana"
