"""The Solana settlement chain, one interface over two back ends.

- ``LiteSvmChain``: solders' LiteSVM in-process (embedded default and tests). Transactions really execute,
  SPL Token and Associated Token Account programs included. Its accounts, the outcome of every signature and
  the current blockhash live in one file under ``data_dir``, taken under a file lock for each operation, so
  every process of one installation (portal, task workers) sees one chain that survives restarts.
- ``RpcChain``: a JSON-RPC endpoint (``PORTAL_SOLANA_RPC_URL``) through solana-py.

The settlement code needs only: a recent blockhash, whether a blockhash can still land a transaction, send,
the outcome of a signature, and token balances. "Unknown signature and expired blockhash" is what makes a
resend safe; a blockhash is valid for ``BLOCKHASH_TTL_S`` on LiteSVM, like ~150 blocks on a real cluster.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar

from solders.account import Account
from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import CreateAccountParams, create_account
from solders.token.state import TokenAccount
from solders.transaction import VersionedTransaction
from solders.transaction_metadata import FailedTransactionMetadata
from spl.memo.constants import MEMO_PROGRAM_ID
from spl.memo.instructions import create_memo
from spl.memo.models import MemoParams
from spl.token.constants import TOKEN_PROGRAM_ID
from spl.token.instructions import (
    create_idempotent_associated_token_account,
    get_associated_token_address,
    initialize_mint,
    mint_to_checked,
    transfer_checked,
)
from spl.token.models import InitializeMintParams, MintToCheckedParams, TransferCheckedParams

BLOCKHASH_TTL_S = 60.0
T = TypeVar("T")
MAX_TRANSACTION_BYTES = 1232  # a Solana packet
MINT_SIZE = 82


class ChainError(Exception):
    """The chain refused or could not take a transaction; nothing was executed."""


class Outcome(StrEnum):
    LANDED = "landed"
    FAILED = "failed"  # executed and failed on chain (its fee paid, its transfers not made)
    UNKNOWN = "unknown"  # not seen (yet)


@dataclass(frozen=True)
class Status:
    outcome: Outcome
    error: str = ""


class Chain(Protocol):
    def latest_blockhash(self) -> Hash: ...
    def blockhash_valid(self, blockhash: Hash) -> bool: ...
    def send(self, transaction: VersionedTransaction) -> None: ...
    def status(self, signature: Signature) -> Status: ...
    def token_balance(self, token_account: Pubkey) -> int | None: ...
    def account_exists(self, address: Pubkey) -> bool: ...
    def airdrop(self, address: Pubkey, lamports: int) -> None: ...


def token_account(owner: Pubkey, mint: Pubkey) -> Pubkey:
    return get_associated_token_address(owner, mint)


def transfer_instructions(
    *,
    payer: Pubkey,
    source_owner: Pubkey,
    mint: Pubkey,
    decimals: int,
    recipient: Pubkey,
    amount: int,
    create_recipient_account: bool,
) -> list[Instruction]:
    """A checked token transfer to ``recipient``'s associated account, creating it first when asked."""
    destination = token_account(recipient, mint)
    instructions = []
    if create_recipient_account:
        instructions.append(create_idempotent_associated_token_account(payer, recipient, mint))
    instructions.append(
        transfer_checked(
            TransferCheckedParams(
                program_id=TOKEN_PROGRAM_ID,
                source=token_account(source_owner, mint),
                mint=mint,
                dest=destination,
                owner=source_owner,
                amount=amount,
                decimals=decimals,
            )
        )
    )
    return instructions


def memo(signer: Pubkey, text: str) -> Instruction:
    """A memo, which also makes a transaction unique: two identical transfers signed with one blockhash
    would have one signature, and the chain would run only the first."""
    return create_memo(MemoParams(program_id=MEMO_PROGRAM_ID, signer=signer, message=text.encode()))


def sign(
    instructions: Sequence[Instruction], signers: Sequence[Keypair], blockhash: Hash
) -> VersionedTransaction:
    """A transaction paid by the first signer."""
    message = MessageV0.try_compile(signers[0].pubkey(), list(instructions), [], blockhash)
    return VersionedTransaction(message, list(signers))


def fits(transaction: VersionedTransaction) -> bool:
    return len(bytes(transaction)) <= MAX_TRANSACTION_BYTES


def send_checked(chain: Chain, transaction: VersionedTransaction) -> None:
    """Send and insist that it landed (set-up steps, where there is nothing to reconcile)."""
    chain.send(transaction)
    status = chain.status(transaction.signatures[0])
    if status.outcome is not Outcome.LANDED:
        raise ChainError(f"transaction {transaction.signatures[0]} {status.outcome}: {status.error}")


def create_mint(chain: Chain, authority: Keypair, mint: Keypair, decimals: int) -> None:
    """A new SPL mint (development chains only: a real deployment names an existing one)."""
    rent = 1_461_600  # rent-exempt minimum for an 82-byte account
    instructions = [
        create_account(
            CreateAccountParams(
                from_pubkey=authority.pubkey(),
                to_pubkey=mint.pubkey(),
                lamports=rent,
                space=MINT_SIZE,
                owner=TOKEN_PROGRAM_ID,
            )
        ),
        initialize_mint(
            InitializeMintParams(
                decimals=decimals,
                program_id=TOKEN_PROGRAM_ID,
                mint=mint.pubkey(),
                mint_authority=authority.pubkey(),
                freeze_authority=None,
            )
        ),
    ]
    send_checked(chain, sign(instructions, [authority, mint], chain.latest_blockhash()))


def mint_to(
    chain: Chain, authority: Keypair, mint: Pubkey, decimals: int, owner: Pubkey, amount: int
) -> None:
    """Mint tokens to ``owner``'s associated account (development chains: the treasury is the authority)."""
    instructions = [
        memo(authority.pubkey(), f"gpu-portal mint {secrets.token_hex(8)}"),  # two equal mints are two
        create_idempotent_associated_token_account(authority.pubkey(), owner, mint),
        mint_to_checked(
            MintToCheckedParams(
                program_id=TOKEN_PROGRAM_ID,
                mint=mint,
                dest=token_account(owner, mint),
                mint_authority=authority.pubkey(),
                amount=amount,
                decimals=decimals,
            )
        ),
    ]
    send_checked(chain, sign(instructions, [authority], chain.latest_blockhash()))


# SPL Token program errors by number, to say in words why a transfer failed.
TOKEN_ERRORS = {
    0: "account not rent-exempt",
    1: "insufficient token funds",
    2: "invalid mint",
    3: "account does not match the mint",
    4: "owner does not match",
    17: "account is frozen",
}


def describe_error(error: str) -> str:
    """The runtime's error, with the token program's number put in words."""
    found = re.search(r"Custom\((\d+)\)", error)
    if found and int(found.group(1)) in TOKEN_ERRORS:
        return f"{TOKEN_ERRORS[int(found.group(1))]} ({error})"
    return error


def _token_amount(account: Account | None) -> int | None:
    if account is None or account.owner != TOKEN_PROGRAM_ID:
        return None
    return TokenAccount.from_bytes(bytes(account.data)).amount


class LiteSvmChain:
    """LiteSVM with its state in ``state_file`` (shared by the installation's processes), or in memory."""

    # Outcomes that mean the runtime never executed the transaction.
    _NOT_EXECUTED = ("BlockhashNotFound", "AlreadyProcessed", "SignatureFailure")

    def __init__(self, state_file: Path | None = None, *, blockhash_ttl_s: float = BLOCKHASH_TTL_S) -> None:
        self._file = state_file
        self._ttl_s = blockhash_ttl_s
        self._lock = threading.RLock()
        self._version = -1
        self._stamp: tuple[int, int, int] | None = None
        self._svm = LiteSVM().with_blockhash_check(False)
        self._accounts: set[str] = set()
        self._signatures: dict[str, str | None] = {}  # signature -> None when it landed, else its error
        self._blockhash = Hash.new_unique()
        self._blockhash_at = time.time()
        self._depth = 0

    @contextlib.contextmanager
    def _state(self) -> Iterator[None]:
        """One operation: under the thread lock and the file lock, on the file's latest state."""
        with self._lock:
            if self._file is None or self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._file.with_suffix(".lock"), os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._load()
                before = self._version
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                    if self._version != before:
                        self._save()
            finally:
                os.close(fd)

    def _load(self) -> None:
        assert self._file is not None
        try:
            stat = self._file.stat()
        except FileNotFoundError:
            return
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if stamp == self._stamp:
            return  # unchanged since this process last read or wrote it
        data = json.loads(self._file.read_text())
        self._stamp = stamp
        if data["version"] == self._version:
            return
        self._svm = LiteSVM().with_blockhash_check(False)
        for address, encoded in data["accounts"].items():
            self._svm.set_account(Pubkey.from_string(address), Account.from_bytes(base64.b64decode(encoded)))
        self._accounts = set(data["accounts"])
        self._signatures = data["signatures"]
        self._blockhash = Hash.from_string(data["blockhash"])
        self._blockhash_at = data["blockhash_at"]
        self._version = data["version"]

    def _save(self) -> None:
        assert self._file is not None
        accounts = {}
        for address in self._accounts:
            account = self._svm.get_account(Pubkey.from_string(address))
            if account is not None:
                accounts[address] = base64.b64encode(bytes(account)).decode()
        data = {
            "version": self._version,
            "accounts": accounts,
            "signatures": self._signatures,
            "blockhash": str(self._blockhash),
            "blockhash_at": self._blockhash_at,
        }
        temporary = self._file.with_suffix(".tmp")
        temporary.write_text(json.dumps(data))
        os.chmod(temporary, 0o600)
        temporary.replace(self._file)  # atomic: a crash leaves the old state or the new, never half
        stat = self._file.stat()
        self._stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _changed(self) -> None:
        self._version = max(self._version, 0) + 1

    def _rotate_if_old(self) -> None:
        if time.time() - self._blockhash_at >= self._ttl_s:
            self._blockhash = Hash.new_unique()
            self._blockhash_at = time.time()
            self._changed()

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """Several operations as one, with no other process in between."""
        return self._state()

    def expire_blockhash(self) -> None:
        """Move to a new blockhash now, as a real chain does after ~150 blocks (tests)."""
        with self._state():
            self._blockhash_at = 0.0
            self._rotate_if_old()

    def latest_blockhash(self) -> Hash:
        with self._state():
            self._rotate_if_old()
            return self._blockhash

    def blockhash_valid(self, blockhash: Hash) -> bool:
        with self._state():
            self._rotate_if_old()
            return blockhash == self._blockhash

    def send(self, transaction: VersionedTransaction) -> None:
        with self._state():
            signature = str(transaction.signatures[0])
            if signature in self._signatures:
                return  # a resend of a known transaction changes nothing, as on a real chain
            self._rotate_if_old()
            if transaction.message.recent_blockhash != self._blockhash:
                raise ChainError("BlockhashNotFound: the transaction's blockhash has expired")
            result = self._svm.send_transaction(transaction)
            error: str | None = None
            if isinstance(result, FailedTransactionMetadata):
                error = str(result.err())
                if any(name in error for name in self._NOT_EXECUTED):
                    raise ChainError(error)
                error = describe_error(error)
            self._signatures[signature] = error
            self._accounts.update(str(key) for key in transaction.message.account_keys)
            self._changed()

    def status(self, signature: Signature) -> Status:
        with self._state():
            key = str(signature)
            if key not in self._signatures:
                return Status(Outcome.UNKNOWN)
            error = self._signatures[key]
            return Status(Outcome.LANDED) if error is None else Status(Outcome.FAILED, error)

    def get_account(self, address: Pubkey) -> Account | None:
        with self._state():
            return self._svm.get_account(address)

    def token_balance(self, token_account: Pubkey) -> int | None:
        return _token_amount(self.get_account(token_account))

    def account_exists(self, address: Pubkey) -> bool:
        return self.get_account(address) is not None

    def airdrop(self, address: Pubkey, lamports: int) -> None:
        with self._state():
            result = self._svm.airdrop(address, lamports)
            if isinstance(result, FailedTransactionMetadata):
                raise ChainError(str(result.err()))
            self._accounts.add(str(address))
            self._changed()


class RpcChain:
    """A Solana cluster through its JSON-RPC endpoint (solana-py's async client, driven from a loop of its
    own so that any thread, with or without an event loop, can call it)."""

    def __init__(self, url: str, *, timeout_s: float = 30.0) -> None:
        from solana.rpc.async_api import AsyncClient
        from solana.rpc.commitment import Confirmed

        self._timeout_s = timeout_s
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="solana-rpc", daemon=True).start()

        async def connect() -> AsyncClient:
            return AsyncClient(url, commitment=Confirmed, timeout=timeout_s)

        self._client = self._run(connect())

    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(call, self._loop).result(self._timeout_s + 5)

    def latest_blockhash(self) -> Hash:
        return self._run(self._client.get_latest_blockhash()).value.blockhash

    def blockhash_valid(self, blockhash: Hash) -> bool:
        from solders.rpc.requests import IsBlockhashValid
        from solders.rpc.responses import IsBlockhashValidResp

        # solana-py's client has no method for it; its provider sends any solders request.
        request = IsBlockhashValid(blockhash)
        return bool(self._run(self._client._provider.make_request(request, IsBlockhashValidResp)).value)

    def send(self, transaction: VersionedTransaction) -> None:
        from solana.exceptions import SolanaRpcException
        from solana.rpc.core import RPCException, RPCNoResultException

        try:
            self._run(self._client.send_transaction(transaction))
        except (RPCException, RPCNoResultException, SolanaRpcException) as error:
            raise ChainError(str(error)) from error

    def status(self, signature: Signature) -> Status:
        found = self._run(self._client.get_signature_statuses([signature], search_transaction_history=True))
        value = found.value[0]
        if value is None:
            return Status(Outcome.UNKNOWN)
        if value.err is not None:
            return Status(Outcome.FAILED, describe_error(str(value.err)))
        return Status(Outcome.LANDED)

    def token_balance(self, token_account: Pubkey) -> int | None:
        return _token_amount(self._run(self._client.get_account_info(token_account)).value)

    def account_exists(self, address: Pubkey) -> bool:
        return self._run(self._client.get_account_info(address)).value is not None

    def airdrop(self, address: Pubkey, lamports: int) -> None:
        self._run(self._client.request_airdrop(address, lamports))
