"""The customer's billing page (balance, deposits, invoices) and the provider's earnings page (payouts)."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Any

import plotly.graph_objects as go
import reflex as rx
import segno

from portal import parts
from portal.infra.db import session_scope
from portal.models import Role
from portal.security.principal import Principal
from portal.services import dates
from portal.services.display import usd, usd_rate, utc_iso
from portal.services.errors import DomainError
from portal.services.money import billing, deposits, payouts, treasury
from portal.services.rentals import clusters
from portal.state.charts import earnings_figure
from portal.state.session import SessionState, for_users, principal

PAGE = 25
KINDS = {
    "credit_grant": "Credit",
    "deposit": "Deposit",
    "payout": "Payout",
    "escrow_hold": "Escrow held",
    "escrow_release": "Escrow returned",
    "cluster_charge": "Usage",
}
ACCOUNTS = {"customer_available": "available", "customer_escrow": "escrow", "provider_earned": "earnings"}


def _billing(caller: Principal, offset: int) -> dict[str, Any]:
    with session_scope(parts.current().engine) as session:
        available, escrow = billing.balance(session, caller.user_id)
        lines, total = billing.ledger_lines(session, caller.user_id, limit=PAGE, offset=offset)
        usage, _ = billing.usage_lines(session, caller.user_id, cluster_id=None, limit=PAGE, offset=0)
        found, _ = deposits.list_deposits(session, caller.user_id, limit=10, offset=0)
        # Each usage line names its cluster: what a customer recognises, unlike a provider's device.
        cluster_names = {
            cluster_id: clusters.get_cluster(session, caller.user_id, cluster_id).name
            for cluster_id in {u.cluster_id for u, _ in usage}
        }
    settings = parts.current().settings
    return {
        "deposits": [
            {
                "at": utc_iso(row.created_at),
                "amount": usd(row.amount_micro),
                "state": row.state,
                "signature": (row.tx_signature or "")[:16],
                "link": payouts.explorer_url(settings, row.tx_signature) or "",
            }
            for row in found
        ],
        "available": usd(available),
        "escrow": usd(escrow),
        "total": total,
        "ledger": [
            {
                "at": utc_iso(line.at),
                "what": KINDS.get(line.kind, line.kind),
                "account": ACCOUNTS.get(line.account, line.account),
                "amount": usd(line.amount_micro, signed=True),
                "description": line.description,
            }
            for line in lines
        ],
        "usage": [
            {
                "start": utc_iso(u.period_start),
                "end": utc_iso(u.period_end),
                "cluster": cluster_names.get(u.cluster_id, ""),
                "device": name,
                "gpus": u.gpu_count,
                "seconds": u.seconds,
                "rate": usd_rate(u.rate_micro, "/GPU-h"),
                "amount": usd(u.amount_micro),
            }
            for u, name in usage
        ],
    }


def _deposit_address(caller: Principal) -> dict[str, str]:
    settings = parts.current().settings
    keys = treasury.treasury_of(settings)
    with session_scope(parts.current().engine) as session:
        account = deposits.deposit_account(session, keys, caller.user_id)
    # A Solana Pay link: a wallet that scans it sends the mint's tokens to this address.
    link = f"solana:{account.owner_address}?spl-token={keys.mint}&label=GPU%20Portal%20credits"
    return {
        "address": account.owner_address,
        "token_account": account.token_account,
        "mint": str(keys.mint),
        "local": "yes" if treasury.network_name(settings) == "local" else "",
        "qr": segno.make(link, error="m").svg_data_uri(scale=4, border=2),
    }


def _invoice(caller: Principal, month: str) -> str:
    with session_scope(parts.current().engine) as session:
        return billing.invoice_csv(session, caller.user_id, dates.month_start(month))


def invoice_months(today: date | None = None, count: int = 12) -> list[str]:
    """This month and the ones before it, newest first, as YYYY-MM."""
    today = today or date.today()
    year, month = today.year, today.month
    months = []
    for _ in range(count):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return months


def _earnings(caller: Principal) -> dict[str, Any]:
    settings = parts.current().settings
    with session_scope(parts.current().engine) as session:
        found = billing.earnings(session, settings, caller.user_id)
        paid_out, paid_total = payouts.list_payouts(session, caller.user_id, limit=PAGE, offset=0)
    return {
        "accrued": usd(found.accrued_micro),
        "pending": usd(found.pending_micro),
        "in_flight": usd(found.in_flight_micro),
        "paid": usd(found.paid_micro),
        "threshold": usd(found.payout_threshold_micro),
        "wallet": found.wallet_address or "",
        "payouts_total": paid_total,
        "payouts": [
            {
                "at": utc_iso(row.created_at),
                "amount": usd(row.amount_micro),
                "state": row.state,
                "wallet": row.wallet_address[:6] + "…" + row.wallet_address[-4:],
                "signature": (row.tx_signature or "")[:16],
                "link": payouts.explorer_url(settings, row.tx_signature) or "",
                "why": row.error if row.state == "failed" else "",
            }
            for row in paid_out
        ],
        "by_day": found.by_day,
        "devices": [
            {"name": d["name"], "earned": usd(d["earned_micro"]), "hours": f"{d['seconds'] / 3600:.2f}"}
            for d in found.by_device
        ],
        "clusters": [
            {"name": c["name"], "earned": usd(c["earned_micro"]), "since": utc_iso(c["since"])}
            for c in found.by_cluster
        ],
    }


class BillingState(SessionState):
    summary: dict[str, Any] = {}
    offset: int = 0
    earnings: dict[str, Any] = {}
    earnings_chart: go.Figure = go.Figure()
    not_provider: bool = False
    deposit: dict[str, str] = {}
    months: list[str] = []
    month: str = ""

    @rx.event
    @for_users()
    async def show_deposit_address(self) -> None:
        self.deposit = await asyncio.to_thread(_deposit_address, principal())

    @rx.event
    @for_users()
    async def choose_month(self, month: str) -> None:
        self.month = month

    @rx.event
    @for_users()
    async def download_invoice(self):  # noqa: ANN201 - an event that returns a download
        month = self.month or invoice_months()[0]
        try:
            text = await asyncio.to_thread(_invoice, principal(), month)
        except DomainError as error:  # a month sent by hand, not one of those offered
            return rx.toast.error(error.message)
        return rx.download(data=text, filename=f"gpu-portal-invoice-{month}.csv")

    @rx.event
    @for_users()
    async def load(self) -> None:
        self.offset = 0
        self.months = invoice_months()
        self.month = self.months[0]
        self.summary = await asyncio.to_thread(_billing, principal(), self.offset)

    @rx.event
    @for_users()
    async def tick(self, _now: str) -> None:
        self.summary = await asyncio.to_thread(_billing, principal(), self.offset)

    @rx.var
    def has_newer(self) -> bool:
        return self.offset > 0

    @rx.var
    def has_older(self) -> bool:
        return self.offset + PAGE < int(self.summary.get("total", 0))

    @rx.event
    @for_users()
    async def page(self, step: int) -> None:
        self.offset = max(0, min(self.offset + step * PAGE, int(self.summary.get("total", 0)) - 1))
        self.summary = await asyncio.to_thread(_billing, principal(), self.offset)

    @rx.event
    @for_users()
    async def load_earnings(self) -> None:
        self.not_provider = Role.PROVIDER not in principal().roles
        if not self.not_provider:
            await self._refresh_earnings()

    @rx.event
    @for_users()
    async def tick_earnings(self, _now: str) -> None:
        if not self.not_provider:
            await self._refresh_earnings()

    async def _refresh_earnings(self) -> None:
        self.earnings = await asyncio.to_thread(_earnings, principal())
        self.earnings_chart = earnings_figure(self.earnings["by_day"])
