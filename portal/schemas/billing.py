"""Money on the wire: integer micro-USD everywhere."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class BalanceOut(BaseModel):
    available_micro: int
    escrow_micro: int


class LedgerLineOut(BaseModel):
    id: int
    at: datetime
    account: str
    amount_micro: int
    kind: str
    description: str
    cluster_id: uuid.UUID | None


class UsageLineOut(BaseModel):
    id: int
    cluster_id: uuid.UUID
    node_id: uuid.UUID
    device_name: str
    period_start: datetime
    period_end: datetime
    seconds: int
    gpu_count: int
    rate_micro: int
    amount_micro: int


class EarningsOut(BaseModel):
    accrued_micro: int
    pending_micro: int
    in_flight_micro: int
    paid_micro: int
    payout_threshold_micro: int
    wallet_address: str | None
    by_device: list[dict]
    by_cluster: list[dict]
    by_day: list[dict]


class DepositAddressOut(BaseModel):
    deposit_address: str  # the wallet to send tokens to (wallets derive its token account)
    token_account: str  # the associated token account itself, for raw transfers
    memo: str
    mint: str
    decimals: int
    network: str  # "local" is a development chain (LiteSVM): its tokens are not real


class DepositOut(BaseModel):
    id: uuid.UUID
    amount_micro: int
    state: str
    state_reason: str
    tx_signature: str | None
    explorer_url: str | None
    created_at: datetime
    confirmed_at: datetime | None


class PayoutOut(BaseModel):
    id: uuid.UUID
    provider_id: uuid.UUID
    wallet_address: str
    amount_micro: int
    state: str
    state_reason: str
    tx_signature: str | None
    explorer_url: str | None
    attempts: int
    error: str
    created_at: datetime
    submitted_at: datetime | None
    confirmed_at: datetime | None


class PayoutRetryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, Field(min_length=1, max_length=500)]


class CreditGrantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: uuid.UUID
    amount_micro: Annotated[int, Field(gt=0, le=1_000_000_000_000)]
    reason: Annotated[str, Field(min_length=1, max_length=500)]


class AdminPayoutOut(PayoutOut):
    """A payout as admins see it: whose it is."""

    provider_email: str | None


class AnalyticsDayOut(BaseModel):
    day: date
    revenue_micro: int
    fees_micro: int
    provider_earnings_micro: int
    gpu_hours: float
    active_customers: int
    active_providers: int


class AnalyticsTotalsOut(BaseModel):
    revenue_micro: int
    fees_micro: int
    provider_earnings_micro: int
    gpu_hours: float
    customers: int
    providers: int


class DailyAnalyticsOut(BaseModel):
    """The admin's figures per day over a period (both ends included), and the period's totals."""

    since: date
    until: date
    days: list[AnalyticsDayOut]
    gpu_hours_by_model: dict[str, list[float]]
    totals: AnalyticsTotalsOut
