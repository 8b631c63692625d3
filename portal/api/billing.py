"""Balances, the ledger, usage lines, deposits and invoices (customers); earnings and payouts (providers)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from portal.api.deps import SessionDep, SettingsDep
from portal.config import Settings
from portal.models import Deposit, Payout, Role
from portal.schemas.billing import (
    BalanceOut,
    DepositAddressOut,
    DepositOut,
    EarningsOut,
    LedgerLineOut,
    PayoutOut,
    UsageLineOut,
)
from portal.schemas.common import Limit, Offset, Page
from portal.security.access import SignedIn
from portal.security.principal import Principal
from portal.services import dates
from portal.services.money import billing, deposits, payouts, treasury

router = APIRouter(tags=["billing"])
Reader = Annotated[Principal, Depends(SignedIn(scope="billing:read"))]
Writer = Annotated[Principal, Depends(SignedIn(scope="billing:write"))]
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
def earnings(session: SessionDep, settings: SettingsDep, caller: Provider) -> EarningsOut:
    return EarningsOut(**billing.earnings(session, settings, caller.user_id).__dict__)


def payout_out(settings: Settings, payout: Payout) -> PayoutOut:
    return PayoutOut(
        **payout.model_dump(exclude={"blockhash", "last_valid_block_height"}),
        explorer_url=payouts.explorer_url(settings, payout.tx_signature),
    )


@router.get("/payouts", summary="Your payouts: state, amount, wallet and transaction signature")
def list_payouts(
    session: SessionDep, settings: SettingsDep, caller: Provider, limit: Limit = 50, offset: Offset = 0
) -> Page[PayoutOut]:
    rows, total = payouts.list_payouts(session, caller.user_id, limit=limit, offset=offset)
    return Page(items=[payout_out(settings, row) for row in rows], total=total, limit=limit, offset=offset)


@router.post(
    "/billing/deposits", summary="Your personal deposit address; deposits are credited once confirmed"
)
def deposit_address(session: SessionDep, settings: SettingsDep, caller: Writer) -> DepositAddressOut:
    keys = treasury.treasury_of(settings)
    account = deposits.deposit_account(session, keys, caller.user_id)
    return DepositAddressOut(
        deposit_address=account.owner_address,
        token_account=account.token_account,
        memo="",  # the address is yours alone: no memo needed
        mint=str(keys.mint),
        decimals=keys.decimals,
        network=treasury.network_name(settings),
    )


def deposit_out(settings: Settings, deposit: Deposit) -> DepositOut:
    return DepositOut(
        **deposit.model_dump(include=set(DepositOut.model_fields) - {"explorer_url"}),
        explorer_url=payouts.explorer_url(settings, deposit.tx_signature),
    )


@router.get("/billing/deposits", summary="Your deposits and their state, newest first")
def list_deposits(
    session: SessionDep, settings: SettingsDep, caller: Reader, limit: Limit = 50, offset: Offset = 0
) -> Page[DepositOut]:
    rows, total = deposits.list_deposits(session, caller.user_id, limit=limit, offset=offset)
    return Page(items=[deposit_out(settings, row) for row in rows], total=total, limit=limit, offset=offset)


@router.get(
    "/billing/invoice.csv",
    summary="A month's usage lines as CSV, with the total",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}}},
)
def invoice(
    session: SessionDep,
    caller: Reader,
    month: Annotated[str, Query(pattern=r"^\d{4}-\d{2}$", examples=["2026-11"])],
) -> Response:
    return Response(
        billing.invoice_csv(session, caller.user_id, dates.month_start(month)),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="gpu-portal-invoice-{month}.csv"'},
    )
