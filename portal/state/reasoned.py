"""What every admin action taken with a reason shares (block a device, terminate a cluster, retry a payout):
a dialog open for one row, the reason typed into it, a refusal shown inside the dialog, and the action run
only once the reason says something (``components.tables.reason_dialog`` draws it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar

import reflex as rx

from portal.models import Role
from portal.security.principal import RequestOrigin
from portal.services.errors import DomainError
from portal.state.session import for_users

# The action on one row: its id, the admin's reason, where the request came from (for the audit log).
Action = Callable[[str, str, RequestOrigin], None]


class ReasonedAction(rx.State, mixin=True):
    """One admin action that needs a reason. The state using it is a ``SessionState`` (``_origin``), fetches
    its list again in ``_fetch`` and runs the action from its confirm handler through ``_act``."""

    # How much of a reason is kept: what the service stores and the person affected reads.
    REASON_MAX: ClassVar[int] = 300

    acting_id: str = ""  # the row the dialog is open for; "" when it is closed
    acting_label: str = ""  # that row as the dialog names it
    reason: str = ""
    error: str = ""

    async def _fetch(self) -> None:
        raise NotImplementedError

    @rx.event
    @for_users(Role.ADMIN)
    async def ask_reason(self, row_id: str, label: str) -> None:
        self.acting_id, self.acting_label, self.reason, self.error = row_id, label, "", ""

    @rx.event
    @for_users(Role.ADMIN)
    async def set_reason(self, reason: str) -> None:
        self.reason = reason[: self.REASON_MAX]

    @rx.event
    @for_users(Role.ADMIN)
    async def cancel(self) -> None:
        self.acting_id, self.error = "", ""

    async def _act(self, action: Action, *, say_why: str, missing: str, done: str) -> Any:
        """Runs ``action`` on the row with the reason: a reason under three characters or a refusal stays in
        the open dialog as ``error`` (``say_why``, the refusal's message, or ``missing`` for a row that is
        gone); done, the dialog closes, the list is fetched again and ``done`` (with ``{label}``) is the
        notice."""
        reason = self.reason.strip()
        if len(reason) < 3:
            self.error = say_why
            return None
        try:
            await asyncio.to_thread(action, self.acting_id, reason, self._origin())
        except (DomainError, ValueError) as refused:
            self.error = refused.message if isinstance(refused, DomainError) else missing
            return None
        label, self.acting_id = self.acting_label, ""
        await self._fetch()
        return rx.toast.success(done.format(label=label))
