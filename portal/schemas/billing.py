"""Money on the wire: integer micro-USD everywhere."""

from __future__ import annotations

import uuid
from datetime import datetime
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
    paid_micro: int
    by_device: list[dict]
    by_cluster: list[dict]


class CreditGrantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: uuid.UUID
    amount_micro: Annotated[int, Field(gt=0, le=1_000_000_000_000)]
    reason: Annotated[str, Field(min_length=1, max_length=500)]
