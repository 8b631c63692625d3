"""The printable invoice of one month (customers): number, period, a line per cluster, totals."""

from __future__ import annotations

import asyncio
from typing import Any

import reflex as rx

from portal import parts
from portal.infra.db import session_scope
from portal.models.base import utcnow
from portal.security.principal import Principal
from portal.services import dates
from portal.services.display import usd
from portal.services.errors import DomainError
from portal.services.money import billing
from portal.state.session import SessionState, for_users, principal


def _invoice(caller: Principal, month: str) -> dict[str, Any]:
    first = dates.month_start(month)
    with session_scope(parts.current().engine) as session:
        found = billing.invoice(session, caller.user_id, first)
    return {
        "month": month,
        "number": found.number,
        "customer": found.customer_email,
        "period": f"{found.period_start:%d %B %Y} to {found.period_end:%d %B %Y}",
        # A month not over yet is invoiced as far as it went: issued today, not on a day to come.
        "issued": f"{found.period_end:%d %B %Y}"
        if found.period_end < utcnow().date()
        else f"{utcnow():%d %B %Y} (the month is not over: usage so far)",
        "lines": [
            {
                "cluster": line.cluster,
                "cluster_id": str(line.cluster_id),
                "gpu_model": line.gpu_model,
                "gpu_hours": f"{line.gpu_seconds / 3600:,.2f}",
                "amount": usd(line.amount_micro),
            }
            for line in found.lines
        ],
        "total": usd(found.total_micro),
        "fee": usd(found.fee_micro),
        "providers": usd(found.total_micro - found.fee_micro),
    }


def _csv(caller: Principal, month: str) -> str:
    with session_scope(parts.current().engine) as session:
        return billing.invoice_csv(session, caller.user_id, dates.month_start(month))


class InvoiceState(SessionState):
    invoice: dict[str, Any] = {}
    error: str = ""

    @rx.event
    @for_users()
    async def load(self) -> None:
        month = self.router.url.path.rstrip("/").rsplit("/", 1)[-1]
        try:
            self.invoice, self.error = await asyncio.to_thread(_invoice, principal(), month), ""
        except DomainError as error:
            self.invoice, self.error = {}, error.message

    @rx.event
    @for_users()
    async def download_csv(self):  # noqa: ANN201 - an event that returns a download
        month = str(self.invoice.get("month", ""))
        try:
            text = await asyncio.to_thread(_csv, principal(), month)
        except DomainError as error:
            return rx.toast.error(error.message)
        return rx.download(data=text, filename=f"gpu-portal-invoice-{month}.csv")
