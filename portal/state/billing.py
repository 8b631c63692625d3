"""The customer's billing page and the provider's earnings page."""

from __future__ import annotations

import asyncio
from typing import Any

import reflex as rx

from portal.db import session_scope
from portal.models import Role
from portal.security.principal import Principal
from portal.services import billing
from portal.state.market import usd
from portal.state.session import SessionState, for_users, principal

PAGE = 25
KINDS = {
    "credit_grant": "Credit",
    "escrow_hold": "Escrow held",
    "escrow_release": "Escrow returned",
    "cluster_charge": "Usage",
}
ACCOUNTS = {"customer_available": "available", "customer_escrow": "escrow", "provider_earned": "earnings"}


def _billing(caller: Principal, offset: int) -> dict[str, Any]:
    with session_scope() as session:
        available, escrow = billing.balance(session, caller.user_id)
        lines, total = billing.ledger_lines(session, caller.user_id, limit=PAGE, offset=offset)
        usage, _ = billing.usage_lines(session, caller.user_id, cluster_id=None, limit=PAGE, offset=0)
    return {
        "available": usd(available),
        "escrow": usd(escrow),
        "total": total,
        "ledger": [
            {
                "at": line.at.strftime("%Y-%m-%d %H:%M:%S"),
                "what": KINDS.get(line.kind, line.kind),
                "account": ACCOUNTS.get(line.account, line.account),
                "amount": ("+" if line.amount_micro > 0 else "") + usd(line.amount_micro),
                "description": line.description,
            }
            for line in lines
        ],
        "usage": [
            {
                "period": f"{u.period_start:%H:%M:%S} to {u.period_end:%H:%M:%S}",
                "device": name,
                "gpus": u.gpu_count,
                "seconds": u.seconds,
                "rate": usd(u.rate_micro) + " / GPU-hour",
                "amount": usd(u.amount_micro),
            }
            for u, name in usage
        ],
    }


def _earnings(caller: Principal) -> dict[str, Any]:
    with session_scope() as session:
        found = billing.earnings(session, caller.user_id)
    return {
        "accrued": usd(found.accrued_micro),
        "pending": usd(found.pending_micro),
        "paid": usd(found.paid_micro),
        "devices": [
            {"name": d["name"], "earned": usd(d["earned_micro"]), "hours": f"{d['seconds'] / 3600:.2f}"}
            for d in found.by_device
        ],
        "clusters": [
            {"name": c["name"], "earned": usd(c["earned_micro"]), "since": f"{c['since']:%Y-%m-%d %H:%M}"}
            for c in found.by_cluster
        ],
    }


class BillingState(SessionState):
    summary: dict[str, Any] = {}
    offset: int = 0
    earnings: dict[str, Any] = {}
    not_provider: bool = False

    @rx.event
    @for_users()
    async def load(self) -> None:
        self.offset = 0
        self.summary = await asyncio.to_thread(_billing, principal(), self.offset)

    @rx.event
    @for_users()
    async def tick(self, _now: str) -> None:
        self.summary = await asyncio.to_thread(_billing, principal(), self.offset)

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
            self.earnings = await asyncio.to_thread(_earnings, principal())
