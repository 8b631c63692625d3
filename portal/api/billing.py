"""Balances, the ledger, usage lines (customers) and earnings (providers)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends

from portal.api.deps import SessionDep
from portal.models import Role
from portal.schemas.billing import BalanceOut, EarningsOut, LedgerLineOut, UsageLineOut
from portal.schemas.common import Limit, Offset, Page
from portal.security.access import SignedIn
from portal.security.principal import Principal
from portal.services import billing

router = APIRouter(tags=["billing"])
Reader = Annotated[Principal, Depends(SignedIn(scope="billing:read"))]
Provider = Annotated[Principal, Depends(SignedIn([Role.PROVIDER], scope="devices:read"))]


@router.get("/billing/balance", summary="Credit available and held in escrow")
def balance(session: SessionDep, caller: Reader) -> BalanceOut:
    available, escrow = billing.balance(session, caller.user_id)
    return BalanceOut(available_micro=available, escrow_micro=escrow)


@router.get("/billing/ledger", summary="Every movement on your accounts, newest first")
def ledger_lines(
    session: SessionDep, caller: Reader, limit: Limit = 50, offset: Offset = 0
) -> Page[LedgerLineOut]:
    rows, total = billing.ledger_lines(session, caller.user_id, limit=limit, offset=offset)
    return Page(
        items=[LedgerLineOut(**row.__dict__) for row in rows], total=total, limit=limit, offset=offset
    )


@router.get("/billing/usage", summary="Metered usage of your clusters: device, GPUs, seconds, rate, amount")
def usage(
    session: SessionDep,
    caller: Reader,
    cluster_id: uuid.UUID | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[UsageLineOut]:
    rows, total = billing.usage_lines(
        session, caller.user_id, cluster_id=cluster_id, limit=limit, offset=offset
    )
    items = [
        UsageLineOut(
            **usage.model_dump(include=set(UsageLineOut.model_fields) - {"device_name"}), device_name=name
        )
        for usage, name in rows
    ]
    return Page(items=items, total=total, limit=limit, offset=offset)


@router.get(
    "/earnings", summary="Your earnings as a provider: accrued, pending and paid, per device and cluster"
)
def earnings(session: SessionDep, caller: Provider) -> EarningsOut:
    return EarningsOut(**billing.earnings(session, caller.user_id).__dict__)
