"""The admin's audit log viewer: filters and pages over the audit log."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import reflex as rx

from portal import parts
from portal.infra.db import session_scope
from portal.models import Role
from portal.services import audit
from portal.services.accounts import users
from portal.services.display import utc_iso
from portal.services.errors import DomainError
from portal.state.paging import PAGE_SIZE, PagedList
from portal.state.session import SessionState, for_users


def _search(action: str, actor_id: str, outcome: str, offset: int) -> tuple[list[dict[str, Any]], int]:
    with session_scope(parts.current().engine) as session:
        entries, total = audit.search(
            session,
            action=action or None,
            actor_id=actor_id or None,
            outcome=outcome or None,
            limit=PAGE_SIZE,
            offset=offset,
        )
        emails: dict[str, str] = {}

        def who(kind: str | None, ident: str | None) -> str:
            """A user as their email (people read emails, not ids); anything else as kind:id."""
            if not kind:
                return ""
            if kind != "user" or not ident:
                return f"{kind}:{ident}" if ident else kind
            if ident not in emails:
                try:
                    user = users.get_user(session, uuid.UUID(ident))
                    emails[ident] = user.email or user.display_name or f"user:{ident}"
                except (DomainError, ValueError):
                    emails[ident] = f"user:{ident}"
            return emails[ident]

        rows = [
            {
                "at": utc_iso(e.at),
                "action": e.action,
                "outcome": e.outcome,
                "actor": who(*(e.actor_id or "").partition(":")[::2]) if e.actor_id else e.actor_kind,
                "target": who(e.target_type, e.target_id),
                "ip": e.ip or "",
                "details": ", ".join(
                    f"{k}: {v if isinstance(v, str) else json.dumps(v)}" for k, v in e.details.items()
                ),
            }
            for e in entries
        ]
        return rows, total


class AuditState(PagedList, SessionState):
    rows: list[dict[str, Any]] = []
    action: str = ""
    actor: str = ""
    outcome: str = ""
    loaded: bool = False

    async def _fetch(self) -> None:
        self.rows, self.total = await asyncio.to_thread(
            _search, self.action, self.actor, self.outcome, self.offset
        )
        self.loaded = True

    @rx.event
    @for_users(Role.ADMIN, page_says=True)
    async def load(self) -> None:
        await self._fetch()

    @rx.event
    @for_users(Role.ADMIN)
    async def apply_filters(self, form: dict[str, Any]) -> None:
        self.action = str(form.get("action", "")).strip()[:64]
        self.actor = str(form.get("actor", "")).strip()[:64]
        outcome = str(form.get("outcome", ""))
        self.outcome = outcome if outcome in {"success", "failure"} else ""
        self.offset = 0
        await self._fetch()
