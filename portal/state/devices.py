"""The provider's devices: the list, adding one (token shown once), and one device's page."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import plotly.graph_objects as go
import reflex as rx

from portal import parts
from portal.infra.db import session_scope
from portal.models import ConnectivityTier, Device, Role
from portal.models.base import utcnow
from portal.security.principal import Principal, RequestOrigin
from portal.services.display import customer_code, overlay, usd_rate, utc_iso, words
from portal.services.errors import DomainError, InvalidInput
from portal.services.money import billing
from portal.services.providers import device_admin, devices, reliability
from portal.state.charts import earnings_figure
from portal.state.session import SessionState, for_users, principal

STATE_COLORS = {
    "ready": "green",
    "hired": "blue",
    "verifying": "amber",
    "registered": "gray",
    "offline": "red",
    "blocked": "red",
    "unsupported": "gray",
}


def _ago(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    seconds = int((utcnow() - moment).total_seconds())
    return (
        f"{seconds} s ago"
        if seconds < 120
        else f"{seconds // 60} min ago"
        if seconds < 7200
        else f"{seconds // 3600} h ago"
    )


def _row(session: Any, device: Device) -> dict[str, Any]:
    gpus = devices.gpus_of(session, device.id)
    models = sorted({gpu.model for gpu in gpus})
    return {
        "id": str(device.id),
        "name": device.name,
        "state": device.state,
        "color": STATE_COLORS.get(device.state, "gray"),
        "reason": device.state_reason,
        "gpus": f"{len(gpus)} x {', '.join(models)}" if gpus else "none reported",
        "simulated": device.simulated,
        "country": device.country,
        "heartbeat": _ago(device.last_heartbeat_at),
        "heartbeat_at": utc_iso(device.last_heartbeat_at),  # the UTC title of the time "ago"
    }


def short_uuid(gpu_uuid: str) -> str:
    """A GPU's UUID as its start and end (``GPU-1a2b…9f0e``), which tell a machine's GPUs apart: the whole
    one is 40 characters, wider than a phone's table column; the page gives it in full on hover."""
    return gpu_uuid if len(gpu_uuid) <= 14 else f"{gpu_uuid[:8]}…{gpu_uuid[-4:]}"


def _list(caller: Principal) -> list[dict[str, Any]]:
    with session_scope(parts.current().engine) as session:
        return [_row(session, device) for device in devices.list_devices(session, caller.user_id)]


def _add(caller: Principal, form: dict[str, Any], origin: RequestOrigin) -> tuple[str, dict[str, str]]:
    price = str(form.get("price", "")).strip()
    try:
        price_micro = round(float(price) * 1_000_000) if price else None
    except ValueError:
        raise InvalidInput("The price is a number of dollars per GPU-hour, e.g. 1.80.") from None
    with session_scope(parts.current().engine) as session:
        _, token = devices.add_device(
            session,
            owner_id=caller.user_id,
            name=str(form.get("name", "")),
            country=str(form.get("country", "")),
            connectivity_tier=str(form.get("tier", ConnectivityTier.MEDIUM)),
            price_per_gpu_hour_micro=price_micro,
            origin=origin,
        )
    return token, devices.launch_commands(parts.current().settings, token)


def _detail(caller: Principal, device_id: str) -> dict[str, Any]:
    with session_scope(parts.current().engine) as session:
        device = devices.get_device(session, caller.user_id, uuid.UUID(device_id))
        checks = devices.eligibility(session, device, parts.current().settings)
        recent, _ = device_admin.search_faults(session, device_id=device.id, limit=10, offset=0)
        return {
            **_row(session, device),
            "verified": f"{device.verified_tflops:.3f} TFLOPS measured"
            if device.verified_tflops
            else "not yet",
            "agent": f"{device.agent_version} on {device.hostname}"
            if device.agent_version
            else "not connected yet",
            "token_prefix": device.token_prefix,
            "connectivity": words(device.connectivity_tier),
            "customer_code": customer_code(device.isolation, device.container_engine, device.worker_image),
            "last_wipe": _ago(device.last_wipe_at) if device.isolation == "container" else "",
            "last_wipe_at": utc_iso(device.last_wipe_at) if device.isolation == "container" else "",
            "overlay": overlay(device.overlay_ip, device.mesh_state, device.mesh_relayed),
            "price": usd_rate(device.hourly_price_micro, " per GPU-hour")
            + ("" if device.price_per_gpu_hour_micro is not None else " (the model's list price)"),
            # What the price field shows: the provider's own price in dollars, empty for the list price.
            "price_usd": usd_rate(device.price_per_gpu_hour_micro, "").removeprefix("$")
            if device.price_per_gpu_hour_micro is not None
            else "",
            "reliability": reliability.assess(session, device).explained(),
            "faults": [
                {
                    "at": utc_iso(fault.at),
                    "kind": words(fault.kind),
                    "severity": fault.severity,
                    "message": fault.message,
                }
                for fault, _ in recent
            ],
            "checks": [{"ok": c.ok, "message": c.message} for c in checks],
            "earnings_by_day": billing.earnings_by_day(session, caller.user_id, device_id=device.id),
            "hireable": devices.is_hireable(checks),
            "gpu_rows": [
                {
                    "index": g.index,
                    "model": g.model,
                    "memory": f"{g.memory_mb / 1024:.0f} GiB",
                    "uuid": g.uuid,
                    "uuid_short": short_uuid(g.uuid),
                    "driver": g.driver,
                    "simulated": g.simulated,
                }
                for g in devices.gpus_of(session, device.id)
            ],
        }


def price_micro(text: str) -> int | None:
    """Dollars per GPU-hour as typed (``1.80``, ``$2``) in micro-USD, without floats; None when empty."""
    text = text.strip().removeprefix("$").strip()
    if not text:
        return None
    try:
        dollars = Decimal(text)
    except InvalidOperation:
        raise InvalidInput("The price is a number of dollars per GPU-hour, e.g. 1.80.") from None
    micro = dollars * 1_000_000
    if not dollars.is_finite() or micro != micro.to_integral_value():
        raise InvalidInput("The price is a number of dollars per GPU-hour, to at most six decimals.")
    return int(micro)


def _set_price(caller: Principal, device_id: str, text: str, origin: RequestOrigin) -> None:
    price = price_micro(text)
    with session_scope(parts.current().engine) as session:
        devices.set_price(
            session,
            owner_id=caller.user_id,
            device_id=uuid.UUID(device_id),
            price_per_gpu_hour_micro=price,
            origin=origin,
        )


def _remove(caller: Principal, device_id: str, origin: RequestOrigin) -> None:
    with session_scope(parts.current().engine) as session:
        devices.remove_device(
            session,
            parts.current().cache,
            owner_id=caller.user_id,
            device_id=uuid.UUID(device_id),
            origin=origin,
        )


class DevicesState(SessionState):
    rows: list[dict[str, Any]] = []
    loaded: bool = False
    forbidden: bool = False
    error: str = ""
    new_token: str = ""
    new_commands: dict[str, str] = {}
    detail: dict[str, Any] = {}
    detail_error: str = ""
    earnings_chart: go.Figure = go.Figure()
    has_earnings: bool = False
    price_error: str = ""

    @rx.var
    def tiers(self) -> list[dict[str, str]]:
        return [{"value": tier.value, "label": words(tier)} for tier in ConnectivityTier]

    @rx.event
    @for_users()
    async def load(self) -> None:
        # Any signed-in user may open the page; only providers get the list (and the live refresh).
        self.forbidden = Role.PROVIDER not in principal().roles
        if self.forbidden:
            # One who stopped being a provider in this browser keeps no list (nor form) from before.
            self.rows, self.loaded = [], False
        else:
            self.rows = await asyncio.to_thread(_list, principal())
            self.loaded = True

    @rx.event
    @for_users(Role.PROVIDER)
    async def tick(self, _now: str) -> None:
        self.rows = await asyncio.to_thread(_list, principal())

    @rx.event
    @for_users(Role.PROVIDER)
    async def add(self, form: dict[str, Any]) -> None:
        try:
            self.new_token, self.new_commands = await asyncio.to_thread(
                _add, principal(), form, self._origin()
            )
            self.error = ""
        except DomainError as error:
            self.error, self.new_token = error.message, ""
            return
        self.rows = await asyncio.to_thread(_list, principal())

    @rx.event
    @for_users(Role.PROVIDER)
    async def dismiss_token(self) -> None:
        self.new_token, self.new_commands = "", {}

    @rx.event
    @for_users(Role.PROVIDER, page_says=True)
    async def load_detail(self) -> None:
        self.price_error = ""
        await self._refresh_detail()

    @rx.event
    @for_users(Role.PROVIDER)
    async def save_price(self, form: dict[str, Any]) -> Any:
        text = str(form.get("price", ""))
        try:
            await asyncio.to_thread(_set_price, principal(), self.detail.get("id", ""), text, self._origin())
        except DomainError as error:
            self.price_error = error.message
            return None
        except ValueError:
            self.price_error = "No such device."
            return None
        self.price_error = ""
        await self._refresh_detail()
        saved = "Price saved: the marketplace shows it now."
        return rx.toast.success(saved if text.strip() else "Back to the model's list price.")

    @rx.event
    @for_users(Role.PROVIDER)
    async def tick_detail(self, _now: str) -> None:
        await self._refresh_detail()

    async def _refresh_detail(self) -> None:
        try:
            found = await asyncio.to_thread(
                _detail, principal(), self.router.url.path.rstrip("/").rsplit("/", 1)[-1]
            )
        except (DomainError, ValueError):
            self.detail, self.detail_error, self.has_earnings = {}, "No such device.", False
            return
        by_day = found.pop("earnings_by_day")
        self.detail, self.detail_error = found, ""
        self.has_earnings = any(d["earned_micro"] for d in by_day)
        self.earnings_chart = earnings_figure(by_day, "Earned per UTC day, last 30 days (USD)")

    @rx.event
    @for_users(Role.PROVIDER)
    async def remove(self) -> Any:
        try:
            await asyncio.to_thread(_remove, principal(), self.detail.get("id", ""), self._origin())
        except (DomainError, ValueError) as error:
            return rx.toast.error(error.message if isinstance(error, DomainError) else "No such device.")
        return rx.redirect("/devices")
