"""The account page: profile, signed-in browsers and clients, and API keys."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

import reflex as rx

from portal import parts
from portal.infra.db import session_scope
from portal.models import Role, User
from portal.security.principal import Principal, RequestOrigin
from portal.services.accounts import api_keys, auth, provider_role
from portal.services.display import utc_iso
from portal.services.errors import DomainError
from portal.state.session import SessionState, for_users, principal
from portal.state.wallet import CONNECT_WALLET_JS, sign_message_js, signature_from_bytes


def _when(value: datetime | None) -> str:
    return utc_iso(value)  # shown in the visitor's zone (components.times.local_time), "never" if empty


def _load(caller: Principal) -> dict[str, Any]:
    with session_scope(parts.current().engine) as session:
        user = session.get(User, caller.user_id)
        assert user is not None
        return {
            "wallet": user.wallet_address or "",
            "sessions": [
                {
                    "id": str(s.id),
                    "kind": s.kind,
                    "method": s.method,
                    "ip": s.ip or "unknown",
                    "agent": s.user_agent[:80] or "unknown",
                    "last_used": _when(s.last_used_at),
                    "current": s.id == caller.session_id,
                }
                for s in auth.active_sessions(session, caller.user_id)
            ],
            "keys": [
                {
                    "id": str(k.id),
                    "name": k.name,
                    "prefix": f"{k.prefix}…",
                    "scopes": ", ".join(k.scopes),
                    "created": _when(k.created_at),
                    "last_used": _when(k.last_used_at),
                }
                for k in api_keys.list_keys(session, caller.user_id)
            ],
        }


def _end_session(caller: Principal, session_id: str, origin: RequestOrigin) -> None:
    with session_scope(parts.current().engine) as session:
        auth.end_session(
            session,
            parts.current().cache,
            user_id=caller.user_id,
            session_id=uuid.UUID(session_id),
            origin=origin,
        )


def _create_key(caller: Principal, name: str, scopes: list[str], origin: RequestOrigin) -> str:
    with session_scope(parts.current().engine) as session:
        _, key = api_keys.create_key(session, user_id=caller.user_id, name=name, scopes=scopes, origin=origin)
        return key


def _link_wallet(caller: Principal, address: str, nonce: str, signature: str, origin: RequestOrigin) -> None:
    with session_scope(parts.current().engine) as session:
        auth.link_wallet(
            session,
            parts.current().cache,
            user_id=caller.user_id,
            address=address,
            nonce=nonce,
            signature=signature,
            origin=origin,
        )


def _revoke_key(caller: Principal, key_id: str, origin: RequestOrigin) -> None:
    with session_scope(parts.current().engine) as session:
        api_keys.revoke_key(session, user_id=caller.user_id, key_id=uuid.UUID(key_id), origin=origin)


def _set_providing(caller: Principal, providing: bool, origin: RequestOrigin) -> None:
    p = parts.current()
    with session_scope(p.engine) as session:
        if providing:
            provider_role.become_provider(session, p.cache, caller.user_id, origin=origin)
        else:
            provider_role.stop_providing(session, p.cache, p.settings, caller.user_id, origin=origin)


class AccountState(SessionState):
    loaded: bool = False
    wallet: str = ""
    sessions: list[dict[str, Any]] = []
    keys: list[dict[str, Any]] = []
    new_key: str = ""
    key_error: str = ""
    wallet_error: str = ""
    provider_error: str = ""
    _wallet_address: str = ""
    _wallet_nonce: str = ""

    @rx.var
    def is_provider(self) -> bool:
        return Role.PROVIDER in self.roles

    @rx.var
    def scope_choices(self) -> list[list[str]]:
        return [[scope, description] for scope, description in api_keys.SCOPES.items()]

    async def _refresh(self) -> None:
        data = await asyncio.to_thread(_load, principal())
        self.wallet, self.sessions, self.keys = data["wallet"], data["sessions"], data["keys"]
        self.loaded = True

    @rx.event
    @for_users()
    async def load(self) -> None:
        self.new_key, self.key_error, self.provider_error = "", "", ""
        await self._refresh()

    async def _set_providing(self, providing: bool) -> Any:
        try:
            await asyncio.to_thread(_set_providing, principal(), providing, self._origin())
        except DomainError as error:
            self.provider_error = error.message
            return None
        self.provider_error = ""
        # The roles come from the database again: the navigation shows or hides the provider area at once.
        await self._resolve_principal()
        return rx.toast.success(
            "You are a provider: add a device to offer its GPUs."
            if providing
            else "You no longer offer GPUs; your customer account is unchanged."
        )

    @rx.event
    @for_users()
    async def become_provider(self) -> Any:
        return await self._set_providing(True)

    @rx.event
    @for_users()
    async def stop_providing(self) -> Any:
        return await self._set_providing(False)

    @rx.event
    @for_users()
    async def end_session(self, session_id: str) -> Any:
        try:
            await asyncio.to_thread(_end_session, principal(), session_id, self._origin())
        except (DomainError, ValueError):
            return rx.toast.error("That session is already gone.")
        await self._refresh()
        return rx.toast.success("Signed that browser out.")

    @rx.event
    @for_users()
    async def create_key(self, form: dict[str, Any]) -> None:
        scopes = [scope for scope in api_keys.SCOPES if form.get(scope)]
        try:
            self.new_key = await asyncio.to_thread(
                _create_key, principal(), str(form.get("name", "")), scopes, self._origin()
            )
            self.key_error = ""
        except DomainError as error:
            self.key_error, self.new_key = error.message, ""
            return
        await self._refresh()

    @rx.event
    @for_users()
    async def dismiss_new_key(self) -> None:
        self.new_key = ""

    @rx.event
    @for_users()
    async def revoke_key(self, key_id: str) -> Any:
        try:
            await asyncio.to_thread(_revoke_key, principal(), key_id, self._origin())
        except (DomainError, ValueError):
            return rx.toast.error("That key is already revoked.")
        await self._refresh()
        return rx.toast.success("Key revoked.")

    @rx.event
    @for_users()
    async def start_link_wallet(self) -> Any:
        self.wallet_error = ""
        return rx.call_script(CONNECT_WALLET_JS, callback=AccountState.wallet_connected)

    @rx.event
    @for_users()
    async def wallet_connected(self, result: dict[str, Any]) -> Any:
        if not isinstance(result, dict) or "address" not in result:
            self.wallet_error = "No Solana wallet answered; install Phantom, Solflare or Backpack."
            return None
        try:
            nonce, message = await asyncio.to_thread(
                auth.wallet_challenge, parts.current().cache, address=str(result["address"])
            )
        except DomainError as error:
            self.wallet_error = error.message
            return None
        self._wallet_address, self._wallet_nonce = str(result["address"]), nonce
        return rx.call_script(sign_message_js(message), callback=AccountState.wallet_signed)

    @rx.event
    @for_users()
    async def wallet_signed(self, result: dict[str, Any]) -> Any:
        address, nonce = self._wallet_address, self._wallet_nonce
        self._wallet_address = self._wallet_nonce = ""
        try:
            signature = signature_from_bytes(result.get("signature") if isinstance(result, dict) else None)
            await asyncio.to_thread(_link_wallet, principal(), address, nonce, signature, self._origin())
        except (DomainError, ValueError) as error:
            self.wallet_error = (
                error.message if isinstance(error, DomainError) else "The wallet did not sign."
            )
            return None
        await self._refresh()
        return rx.toast.success("Payout wallet linked.")
