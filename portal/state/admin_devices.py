"""The admin's devices and faults page: every provider's devices with filters, block (with a reason the owner
sees) and unblock, and the network's latest fault events."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import reflex as rx

from portal import parts
from portal.infra.db import session_scope
from portal.models import DeviceState, Role
from portal.security.principal import RequestOrigin
from portal.services.display import utc_iso
from portal.services.errors import DomainError
from portal.services.providers import device_admin
from portal.state.session import SessionState, for_users, principal

PAGE_SIZE = 25
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


class AdminDevicesState(SessionState):
    rows: list[dict[str, Any]] = []
    faults: list[dict[str, Any]] = []
    total: int = 0
    offset: int = 0
    state_filter: str = ""
    text: str = ""
    loaded: bool = False
    blocking_id: str = ""
    blocking_name: str = ""
    reason: str = ""

    @rx.var
    def page_label(self) -> str:
        if not self.total:
            return "no devices"
        return f"{self.offset + 1}-{min(self.offset + PAGE_SIZE, self.total)} of {self.total}"

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
    async def page(self, step: int) -> None:
        self.offset = max(0, min(self.offset + step * PAGE_SIZE, max(self.total - 1, 0)))
        await self._fetch()

    @rx.event
    @for_users(Role.ADMIN)
    async def start_block(self, device_id: str, name: str) -> None:
        self.blocking_id, self.blocking_name, self.reason = device_id, name, ""

    @rx.event
    @for_users(Role.ADMIN)
    async def set_reason(self, reason: str) -> None:
        self.reason = reason[:400]

    @rx.event
    @for_users(Role.ADMIN)
    async def cancel_block(self) -> None:
        self.blocking_id = ""

    @rx.event
    @for_users(Role.ADMIN)
    async def confirm_block(self):  # noqa: ANN201 - returns a notice
        reason = self.reason.strip()
        if len(reason) < 3:
            return rx.toast.error("Say why, in a few words: the owner sees it.")
        try:
            await asyncio.to_thread(_block, self.blocking_id, reason, self._origin())
        except DomainError as refused:
            return rx.toast.error(refused.message)
        name, self.blocking_id = self.blocking_name, ""
        await self._fetch()
        return rx.toast.success(f"{name} is blocked.")

    @rx.event
    @for_users(Role.ADMIN)
    async def unblock(self, device_id: str):  # noqa: ANN201 - returns a notice
        try:
            await asyncio.to_thread(_unblock, device_id, self._origin())
        except DomainError as refused:
            return rx.toast.error(refused.message)
        await self._fetch()
        return rx.toast.success("Unblocked: the device proves its compute again before it is hired.")
