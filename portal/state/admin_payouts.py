"""The admin's payouts page: every provider's payouts filtered by state, provider and date, and a failed one
sent again through the settlement service (which sends each payout once), with a reason that is audited."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, time, timedelta
from typing import Any

import reflex as rx

from portal import parts
from portal.infra.db import session_scope
from portal.models import PayoutState, Role
from portal.security.principal import RequestOrigin
from portal.services import dates
from portal.services.display import usd, utc_iso, words
from portal.services.errors import DomainError, InvalidInput
from portal.services.money import payouts
from portal.state.paging import PAGE_SIZE, PagedList
from portal.state.reasoned import ReasonedAction
from portal.state.session import SessionState, for_users, principal

ANY = "any"
STATE_CHOICES = [
    {"value": ANY, "label": "Any state"},
    *({"value": s.value, "label": words(s)} for s in PayoutState),
]
STATE_COLORS = {
    PayoutState.PENDING: "gray",
    PayoutState.SUBMITTED: "blue",
    PayoutState.CONFIRMED: "green",
    PayoutState.FAILED: "red",
}


def _moments(since: str, until: str) -> tuple[datetime | None, datetime | None]:
    """The days as moments: from the start of ``since`` to the end of ``until`` (both days included)."""
    first, last = dates.day_of(since, field="From"), dates.day_of(until, field="To")
    if first and last and last < first:
        raise InvalidInput("To is before From: the period ends after it starts.")
    return (
        datetime.combine(first, time.min, tzinfo=UTC) if first else None,
        datetime.combine(last + timedelta(days=1), time.min, tzinfo=UTC) if last else None,
    )


def _search(filters: dict[str, str], offset: int) -> tuple[list[dict[str, Any]], int]:
    p = parts.current()
    since, until = _moments(filters["since"], filters["until"])
    with session_scope(p.engine) as session:
        found, total = payouts.search_payouts(
            session,
            state=None if filters["state"] == ANY else filters["state"],
            provider_email=filters["provider"] or None,
            since=since,
            until=until,
            limit=PAGE_SIZE,
            offset=offset,
        )
        rows = [
            {
                "id": str(payout.id),
                "provider": email or str(payout.provider_id),
                "wallet": payout.wallet_address[:6] + "…" + payout.wallet_address[-4:],
                "amount": usd(payout.amount_micro),
                "state": words(payout.state),
                "color": STATE_COLORS.get(PayoutState(payout.state), "gray"),
                "why": payout.error if payout.state == PayoutState.FAILED else "",
                "attempts": str(payout.attempts),
                "created": utc_iso(payout.created_at),
                "link": payouts.explorer_url(p.settings, payout.tx_signature) or "",
                "failed": payout.state == PayoutState.FAILED,
                "label": f"{usd(payout.amount_micro)} to {email or 'its provider'}",
            }
            for payout, email in found
        ]
    return rows, total


def _retry(payout_id: str, reason: str, origin: RequestOrigin) -> None:
    p = parts.current()
    with session_scope(p.engine) as session:
        payouts.retry(
            session,
            p.followups,
            uuid.UUID(payout_id),
            reason=reason,
            admin_id=principal().user_id,
            origin=origin,
        )


class AdminPayoutsState(PagedList, ReasonedAction, SessionState):
    rows: list[dict[str, Any]] = []
    filters: dict[str, str] = {"state": ANY, "provider": "", "since": "", "until": ""}
    filter_error: str = ""
    loaded: bool = False

    async def _fetch(self) -> None:
        try:
            self.rows, self.total = await asyncio.to_thread(_search, dict(self.filters), self.offset)
            self.filter_error = ""
        except DomainError as refused:
            self.filter_error = refused.message
        self.loaded = True

    @rx.var
    def states(self) -> list[dict[str, str]]:
        return STATE_CHOICES

    @rx.event
    @for_users(Role.ADMIN, page_says=True)
    async def load(self) -> None:
        await self._fetch()

    @rx.event
    @for_users(Role.ADMIN)
    async def pick_state(self, value: str) -> None:
        state = value if value in {c["value"] for c in STATE_CHOICES} else ANY
        self.filters = {**self.filters, "state": state}
        self.offset = 0
        await self._fetch()

    @rx.event
    @for_users(Role.ADMIN)
    async def apply_filters(self, form: dict[str, Any]) -> None:
        self.filters = {
            **self.filters,
            "provider": str(form.get("provider", "")).strip()[:100],
            "since": str(form.get("since", ""))[:10],
            "until": str(form.get("until", ""))[:10],
        }
        self.offset = 0
        await self._fetch()

    @rx.event
    @for_users(Role.ADMIN)
    async def confirm_retry(self) -> Any:
        return await self._act(
            _retry,
            say_why="Say why it should work now, in a few words: it goes to the audit log.",
            missing="No such payout.",
            done="The payout of {label} is queued: the next settlement sends it.",
        )
