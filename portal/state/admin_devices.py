"""The admin's devices and faults page: every provider's devices with filters, block (with a reason the owner
sees) and unblock, and the network's latest fault events."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, ClassVar

import reflex as rx

from portal import parts
from portal.infra.db import session_scope
from portal.models import DeviceState, Role
from portal.security.principal import RequestOrigin
from portal.services.display import utc_iso
from portal.services.errors import DomainError
from portal.services.providers import device_admin
from portal.state.paging import PAGE_SIZE, PagedList
from portal.state.reasoned import ReasonedAction
from portal.state.session import SessionState, for_users, principal

STATES = [state.value for state in DeviceState]


def _search(state: str, text: str, offset: int) -> tuple[list[dict[str, Any]], int, list[dict[str, Any]]]:
    with session_scope(parts.current().engine) as session:
        found, total = device_admin.search_devices(
            session, state=state or None, text=text or None, limit=PAGE_SIZE, offset=offset
        )
        faults, _ = device_admin.search_faults(session, limit=PAGE_SIZE, offset=0)
        rows = [
            {
                "id": str(device.id),
                "name": device.name,
                "owner": email or "",
                "state": device.state,
                "reason": device.state_reason,
                "gpus": f"{device.gpu_count} x {device.gpu_model}" if device.gpu_count else "none",
                "simulated": device.simulated,
                "beat": utc_iso(device.last_heartbeat_at),
                "blocked": device.state == DeviceState.BLOCKED,
            }
            for device, email in found
        ]
        fault_rows = [
            {
                "at": utc_iso(fault.at),
                "device": name or "",
                "kind": fault.kind,
                "severity": fault.severity,
                "message": fault.message,
            }
            for fault, name in faults
        ]
    return rows, total, fault_rows


def _block(device_id: str, reason: str, origin: RequestOrigin) -> None:
    admin, p = principal(), parts.current()
    with session_scope(p.engine) as session:
        device_admin.block(
            session, p.followups, uuid.UUID(device_id), reason, admin_id=admin.user_id, origin=origin
        )


def _unblock(device_id: str, origin: RequestOrigin) -> None:
    admin, p = principal(), parts.current()
    with session_scope(p.engine) as session:
        device_admin.unblock(
            session, p.followups, uuid.UUID(device_id), admin_id=admin.user_id, origin=origin
        )


class AdminDevicesState(PagedList, ReasonedAction, SessionState):
    REASON_MAX: ClassVar[int] = 400  # room for evidence: the owner reads it beside their device
    rows: list[dict[str, Any]] = []
    faults: list[dict[str, Any]] = []
    state_filter: str = ""
    text: str = ""
    loaded: bool = False

    async def _fetch(self) -> None:
        self.rows, self.total, self.faults = await asyncio.to_thread(
            _search, self.state_filter, self.text, self.offset
        )
        self.loaded = True

    @rx.event
    @for_users(Role.ADMIN, page_says=True)
    async def load(self) -> None:
        await self._fetch()

    @rx.event
    @for_users(Role.ADMIN)
    async def apply_filters(self, form: dict[str, Any]) -> None:
        state = str(form.get("state", ""))
        self.state_filter = state if state in STATES else ""
        self.text = str(form.get("text", "")).strip()[:100]
        self.offset = 0
        await self._fetch()

    @rx.event
    @for_users(Role.ADMIN)
    async def confirm_block(self) -> Any:
        return await self._act(
            _block,
            say_why="Say why, in a few words: the owner sees it.",
            missing="No such device.",
            done="{label} is blocked.",
        )

    @rx.event
    @for_users(Role.ADMIN)
    async def unblock(self, device_id: str) -> Any:
        try:
            await asyncio.to_thread(_unblock, device_id, self._origin())
        except (DomainError, ValueError) as refused:
            return rx.toast.error(refused.message if isinstance(refused, DomainError) else "No such device.")
        await self._fetch()
        return rx.toast.success("Unblocked: the device proves its compute again before it is hired.")
