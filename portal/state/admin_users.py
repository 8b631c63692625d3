"""The admin's people page: search accounts, set their roles, lock and unlock them, grant credits."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

import reflex as rx

from portal import parts
from portal.infra.db import session_scope
from portal.models import Role
from portal.security.principal import RequestOrigin
from portal.services.accounts import admin_users, users
from portal.services.display import MICRO_PER_USD, usd, utc_iso, words
from portal.services.errors import DomainError, InvalidInput
from portal.services.money import billing
from portal.state.paging import PAGE_SIZE, PagedList
from portal.state.session import SessionState, for_users, principal

ROLES = [role.value for role in Role]


def _search(text: str, offset: int) -> tuple[list[dict[str, Any]], int]:
    with session_scope(parts.current().engine) as session:
        found, total = users.search_users(session, email=text or None, limit=PAGE_SIZE, offset=offset)
        rows = []
        for user in found:
            roles = sorted(users.roles_of(session, user.id))
            available, escrow = billing.balance(session, user.id)
            rows.append(
                {
                    "id": str(user.id),
                    "email": user.email or user.wallet_address or "",
                    "name": user.display_name,
                    "roles": ", ".join(words(role) for role in roles) or "none",
                    **{f"is_{role}": role in roles for role in ROLES},
                    "locked": not user.is_active,
                    "balance": usd(available),
                    "escrow": usd(escrow),
                    "joined": utc_iso(user.created_at),
                }
            )
    return rows, total


def _amount_micro(text: str) -> int:
    """Dollars typed by the admin as micro-USD, exactly (no float)."""
    try:
        amount = Decimal(text.strip().lstrip("$").replace(",", ""))
    except InvalidOperation:
        raise InvalidInput("The amount is dollars, e.g. 25 or 12.50.") from None
    if not amount.is_finite() or amount <= 0 or amount > 100_000:
        raise InvalidInput("The amount is more than $0 and at most $100,000.")
    return int(amount * MICRO_PER_USD)


def _set_roles(user_id: str, roles: list[str], origin: RequestOrigin) -> None:
    p = parts.current()
    with session_scope(p.engine) as session:
        admin_users.set_roles(
            session, p.cache, uuid.UUID(user_id), roles, admin_id=principal().user_id, origin=origin
        )


def _set_locked(user_id: str, locked: bool, origin: RequestOrigin) -> None:
    p = parts.current()
    with session_scope(p.engine) as session:
        admin_users.set_locked(
            session, p.cache, uuid.UUID(user_id), locked, admin_id=principal().user_id, origin=origin
        )


def _grant(user_id: str, amount_micro: int, reason: str, origin: RequestOrigin) -> None:
    with session_scope(parts.current().engine) as session:
        billing.grant_credits(
            session,
            user_id=uuid.UUID(user_id),
            amount_micro=amount_micro,
            reason=reason,
            admin_id=principal().user_id,
            origin=origin,
        )


class AdminUsersState(PagedList, SessionState):
    rows: list[dict[str, Any]] = []
    text: str = ""
    loaded: bool = False
    # The account a dialog is open for ("" when none), and what the dialog says.
    editing_id: str = ""
    editing_email: str = ""
    dialog: str = ""  # "roles" or "credits"
    editing_roles: list[str] = []
    error: str = ""

    async def _fetch(self) -> None:
        self.rows, self.total = await asyncio.to_thread(_search, self.text, self.offset)
        self.loaded = True

    @rx.event
    @for_users(Role.ADMIN, page_says=True)
    async def load(self) -> None:
        await self._fetch()

    @rx.event
    @for_users(Role.ADMIN)
    async def search(self, form: dict[str, Any]) -> None:
        self.text, self.offset = str(form.get("text", "")).strip()[:100], 0
        await self._fetch()

    @rx.event
    @for_users(Role.ADMIN)
    async def open_dialog(self, dialog: str, user_id: str, email: str) -> None:
        self.dialog, self.editing_id, self.editing_email, self.error = dialog, user_id, email, ""
        row = next((row for row in self.rows if row["id"] == user_id), {})
        self.editing_roles = [role for role in ROLES if row.get(f"is_{role}")]

    @rx.event
    @for_users(Role.ADMIN)
    async def close_dialog(self) -> None:
        self.editing_id, self.dialog, self.error = "", "", ""

    @rx.event
    @for_users(Role.ADMIN)
    async def save_roles(self, form: dict[str, Any]) -> Any:
        chosen = [role for role in ROLES if form.get(role)]
        try:
            await asyncio.to_thread(_set_roles, self.editing_id, chosen, self._origin())
        except (DomainError, ValueError) as refused:
            self.error = refused.message if isinstance(refused, DomainError) else "No such account."
            return None
        email, self.editing_id, self.dialog = self.editing_email, "", ""
        await self._fetch()
        return rx.toast.success(f"Roles of {email} saved.")

    @rx.event
    @for_users(Role.ADMIN)
    async def grant(self, form: dict[str, Any]) -> Any:
        reason = str(form.get("reason", "")).strip()[:200]
        try:
            if len(reason) < 3:
                raise InvalidInput("Say why, in a few words: it goes to the audit log and the ledger.")
            amount = _amount_micro(str(form.get("amount", "")))
            await asyncio.to_thread(_grant, self.editing_id, amount, reason, self._origin())
        except (DomainError, ValueError) as refused:
            self.error = refused.message if isinstance(refused, DomainError) else "No such account."
            return None
        email, self.editing_id, self.dialog = self.editing_email, "", ""
        await self._fetch()
        return rx.toast.success(f"{usd(amount)} granted to {email}.")

    @rx.event
    @for_users(Role.ADMIN)
    async def set_locked(self, user_id: str, locked: bool) -> Any:
        try:
            await asyncio.to_thread(_set_locked, user_id, locked, self._origin())
        except (DomainError, ValueError) as refused:
            return rx.toast.error(refused.message if isinstance(refused, DomainError) else "No such account.")
        await self._fetch()
        return rx.toast.success("Locked: it cannot sign in or call the API." if locked else "Unlocked.")
