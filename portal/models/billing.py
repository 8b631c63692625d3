"""Money: a double-entry ledger in integer micro-USD, metered usage and provider payouts."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from portal.models.base import (
    UTCDateTime,
    created_at_field,
    id_field,
    money_field,
    state_field,
    timestamp_field,
)


class AccountKind(StrEnum):
    CUSTOMER_AVAILABLE = "customer_available"
    CUSTOMER_ESCROW = "customer_escrow"
    PROVIDER_EARNED = "provider_earned"
    PLATFORM_FEES = "platform_fees"
    TREASURY = "treasury"
    DEPOSITS = "deposits"
    # The source of credits granted by admins (and demo seeding): the books still balance.
    GRANTS = "grants"
    # Earnings taken out of a provider's account for a payout that has not landed on chain yet.
    PAYOUTS_IN_FLIGHT = "payouts_in_flight"


class LedgerAccount(SQLModel, table=True):
    __tablename__ = "ledger_accounts"
    __table_args__ = (sa.UniqueConstraint("kind", "owner_id", name="uq_ledger_accounts_kind_owner"),)

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(sa_type=sa.String(24))
    # Null for the platform's own accounts (fees, treasury, deposits, grants).
    owner_id: uuid.UUID | None = Field(default=None, foreign_key="users.id", index=True)
    # A cache of the sum of entries, updated in the same transaction; the entries are the truth.
    balance_micro: int = money_field()
    created_at: datetime = created_at_field()


class LedgerTransaction(SQLModel, table=True):
    __tablename__ = "ledger_transactions"

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(sa_type=sa.String(32), index=True)
    # Makes a retried posting harmless: the same key can be posted once only.
    idempotency_key: str = Field(sa_type=sa.String(200), unique=True)
    description: str = Field(default="", sa_type=sa.String(500))
    created_by: uuid.UUID | None = Field(default=None, foreign_key="users.id")
    cluster_id: uuid.UUID | None = Field(default=None, foreign_key="clusters.id", index=True)
    created_at: datetime = created_at_field()


class LedgerEntry(SQLModel, table=True):
    __tablename__ = "ledger_entries"
    __table_args__ = (sa.Index("ix_ledger_entries_account_id", "account_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    transaction_id: int = Field(foreign_key="ledger_transactions.id", index=True)
    account_id: int = Field(foreign_key="ledger_accounts.id")
    # Signed: positive adds to the account, negative takes from it; a transaction's entries sum to zero.
    amount_micro: int = money_field()
    created_at: datetime = created_at_field()


class UsageRecord(SQLModel, table=True):
    """Seconds of verified uptime of one cluster node, priced and split into earning and fee."""

    __tablename__ = "usage_records"
    __table_args__ = (
        sa.UniqueConstraint("node_id", "period_start", name="uq_usage_records_node_period"),
        sa.Index("ix_usage_records_provider_period", "provider_id", "period_start"),
    )

    id: int | None = Field(default=None, primary_key=True)
    cluster_id: uuid.UUID = Field(foreign_key="clusters.id", index=True)
    node_id: uuid.UUID = Field(foreign_key="cluster_nodes.id")
    device_id: uuid.UUID = Field(foreign_key="devices.id")
    customer_id: uuid.UUID = Field(foreign_key="users.id")
    provider_id: uuid.UUID = Field(foreign_key="users.id")
    period_start: datetime = Field(sa_type=UTCDateTime)
    period_end: datetime = Field(sa_type=UTCDateTime)
    seconds: int
    gpu_count: int
    rate_micro: int = money_field()
    amount_micro: int = money_field()
    fee_micro: int = money_field()
    ledger_transaction_id: int | None = Field(default=None, foreign_key="ledger_transactions.id")


class PayoutState(StrEnum):
    PENDING = "pending"
    SUBMITTED = "submitted"
    CONFIRMED = "confirmed"
    FAILED = "failed"


class ChainTransfer(SQLModel):
    """What a transfer the portal signs and sends keeps (payouts, deposit sweeps): its state and, persisted
    before sending, its signature and blockhash, so a restart looks it up on chain before any resend."""

    state: str = state_field(PayoutState.PENDING)
    state_reason: str = Field(default="", sa_type=sa.String(500))
    tx_signature: str | None = Field(default=None, sa_type=sa.String(100), index=True)
    blockhash: str | None = Field(default=None, sa_type=sa.String(64))
    attempts: int = Field(default=0)
    error: str = Field(default="", sa_type=sa.String(1000))
    created_at: datetime = created_at_field()
    submitted_at: datetime | None = timestamp_field()
    confirmed_at: datetime | None = timestamp_field()


class Payout(ChainTransfer, table=True):
    """One provider payment; several may share one transaction (and so one signature)."""

    __tablename__ = "payouts"
    __table_args__ = (sa.Index("ix_payouts_provider_created", "provider_id", "created_at"),)

    id: uuid.UUID = id_field()
    provider_id: uuid.UUID = Field(foreign_key="users.id")
    wallet_address: str = Field(sa_type=sa.String(64))
    amount_micro: int = money_field()
    last_valid_block_height: int | None = Field(default=None, sa_type=sa.BigInteger)


class DepositAccount(SQLModel, table=True):
    """A customer's personal deposit wallet; its key is derived from the treasury's, never stored."""

    __tablename__ = "deposit_accounts"

    user_id: uuid.UUID = Field(foreign_key="users.id", primary_key=True)
    owner_address: str = Field(sa_type=sa.String(64), unique=True)
    token_account: str = Field(sa_type=sa.String(64), unique=True)
    created_at: datetime = created_at_field()


class Deposit(ChainTransfer, table=True):
    """Tokens found on a deposit account, swept to the treasury and credited once the sweep landed."""

    __tablename__ = "deposits"
    __table_args__ = (sa.Index("ix_deposits_user_created", "user_id", "created_at"),)

    id: uuid.UUID = id_field()
    user_id: uuid.UUID = Field(foreign_key="users.id")
    token_account: str = Field(sa_type=sa.String(64))
    amount_micro: int = money_field()
