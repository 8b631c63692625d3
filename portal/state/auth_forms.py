"""Sign-up and sign-in forms."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import reflex as rx

from portal import parts
from portal.infra.db import session_scope
from portal.models import Role
from portal.security.principal import RequestOrigin
from portal.services.accounts import auth, oauth
from portal.services.errors import DomainError
from portal.state.session import SessionState, for_anyone, sign_in_script
from portal.state.wallet import CONNECT_WALLET_JS, sign_message_js, signature_from_bytes


def _sign_up(email: str, password: str, roles: list[Role], origin: RequestOrigin) -> str:
    with session_scope(parts.current().engine) as session:
        signed_up = auth.signup(
            session, parts.current().cache, email=email, password=password, roles=roles, origin=origin
        )
        if not signed_up.created:
            # A taken email: the page goes on as for a new account, and signing in is then refused.
            return auth.decoy_browser_code()
        return auth.start_browser_session(
            session, parts.current().cache, user=signed_up.user, method="password", origin=origin
        )


def _sign_in(email: str, password: str, origin: RequestOrigin) -> str:
    with session_scope(parts.current().engine) as session:
        user = auth.check_password(
            session, parts.current().cache, email=email, password=password, origin=origin
        )
        return auth.start_browser_session(
            session, parts.current().cache, user=user, method="password", origin=origin
        )


def _unlock(token: str, origin: RequestOrigin) -> None:
    with session_scope(parts.current().engine) as session:
        auth.unlock(session, parts.current().cache, token=token, origin=origin)


def _wallet_challenge(address: str) -> tuple[str, str]:
    return auth.wallet_challenge(parts.current().cache, address=address)


def _wallet_sign_in(address: str, nonce: str, signature: str, origin: RequestOrigin) -> str:
    with session_scope(parts.current().engine) as session:
        user = auth.wallet_user(
            session, parts.current().cache, address=address, nonce=nonce, signature=signature, origin=origin
        )
        return auth.start_browser_session(
            session, parts.current().cache, user=user, method="wallet", origin=origin
        )


class AuthFormState(SessionState):
    error: str = ""
    notice: str = ""
    busy: bool = False
    # Backend-only: the wallet sign-in under way in this tab.
    _wallet_address: str = ""
    _wallet_nonce: str = ""

    @rx.var
    def oauth_providers(self) -> list[dict[str, str]]:
        return [
            {"name": p.name, "label": p.label} for p in oauth.configured_providers(parts.current().settings)
        ]

    @rx.event
    @for_anyone
    async def open_form(self) -> Any:
        """On load: a signed-in visitor goes straight on; otherwise show any error the URL carries."""
        self.busy = False
        self.error = {
            "session": "Signing in did not complete; please try again.",
            "oauth": "Signing in with that provider did not complete; please try again.",
        }.get(self.router.url.query_parameters.get("error", ""), "")
        if await self._resolve_principal() is not None:
            return rx.redirect("/account")
        return None

    @rx.event
    @for_anyone
    async def sign_up(self, form: dict[str, Any]) -> AsyncIterator[Any]:
        password = str(form.get("password", ""))
        if password != str(form.get("confirm", "")):
            self.error = "The two passwords differ."
            return
        roles = [role for role in (Role.CUSTOMER, Role.PROVIDER) if form.get(role.value)]
        if not roles:
            self.error = "Choose at least one: rent GPUs, provide GPUs, or both."
            return
        self.busy, self.error = True, ""
        yield
        try:
            code = await asyncio.to_thread(
                _sign_up, str(form.get("email", "")), password, roles, self._origin()
            )
        except DomainError as error:
            self.busy, self.error = False, error.message
            return
        yield sign_in_script(code, "/account")

    @rx.event
    @for_anyone
    async def sign_in(self, form: dict[str, Any]) -> AsyncIterator[Any]:
        self.busy, self.error = True, ""
        yield
        try:
            code = await asyncio.to_thread(
                _sign_in, str(form.get("email", "")), str(form.get("password", "")), self._origin()
            )
        except DomainError as error:
            self.busy, self.error = False, error.message
            return
        yield sign_in_script(code, self.router.url.query_parameters.get("next"))

    @rx.event
    @for_anyone
    async def open_unlock(self) -> None:
        self.busy, self.error, self.notice = False, "", ""

    @rx.event
    @for_anyone
    async def unlock(self) -> AsyncIterator[Any]:
        """Unlock the account with the token of the emailed link (a button press: mail scanners that
        open links do not use it up)."""
        self.busy, self.error, self.notice = True, "", ""
        yield
        token = self.router.url.query_parameters.get("token", "")
        try:
            await asyncio.to_thread(_unlock, token, self._origin())
        except DomainError as error:
            self.busy, self.error = False, error.message
            return
        self.busy, self.notice = False, "Your account is unlocked: sign in as usual."

    @rx.event
    @for_anyone
    async def start_wallet(self) -> Any:
        self.error, self.busy = "", True
        return rx.call_script(CONNECT_WALLET_JS, callback=AuthFormState.wallet_connected)

    @rx.event
    @for_anyone
    async def wallet_connected(self, result: dict[str, Any]) -> Any:
        if not isinstance(result, dict) or "address" not in result:
            self.busy = False
            self.error = (
                "No Solana wallet was found in this browser; install Phantom, Solflare or Backpack."
                if isinstance(result, dict) and result.get("error") == "no-wallet"
                else "The wallet did not connect."
            )
            return None
        try:
            nonce, message = await asyncio.to_thread(_wallet_challenge, str(result["address"]))
        except DomainError as error:
            self.busy, self.error = False, error.message
            return None
        self._wallet_address, self._wallet_nonce = str(result["address"]), nonce
        return rx.call_script(sign_message_js(message), callback=AuthFormState.wallet_signed)

    @rx.event
    @for_anyone
    async def wallet_signed(self, result: dict[str, Any]) -> AsyncIterator[Any]:
        address, nonce = self._wallet_address, self._wallet_nonce
        self._wallet_address = self._wallet_nonce = ""
        raw = result.get("signature") if isinstance(result, dict) else None
        if not address or not isinstance(raw, list) or len(raw) != 64:
            self.busy, self.error = False, "The wallet did not sign the message."
            return
        try:
            signature = signature_from_bytes(raw)
            code = await asyncio.to_thread(_wallet_sign_in, address, nonce, signature, self._origin())
        except (DomainError, ValueError) as error:
            self.busy = False
            self.error = (
                error.message if isinstance(error, DomainError) else "The wallet's signature is malformed."
            )
            return
        yield sign_in_script(code, self.router.url.query_parameters.get("next"))
