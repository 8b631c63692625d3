"""Who is using this browser tab, and who may call each page event handler.

The browser holds only an HttpOnly session cookie. Pages talk to the portal over a websocket whose
opening request carries that cookie, so the backend reads it here, server side, and checks it against
the database on every guarded event; vars such as ``roles`` only drive what the page shows.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import re
from collections.abc import Callable
from contextvars import ContextVar
from http.cookies import CookieError, SimpleCookie
from typing import Any, TypeVar
from urllib.parse import quote

import reflex as rx

from portal import parts
from portal.infra.db import session_scope
from portal.models import Role, User
from portal.security.cookies import SESSION_COOKIE
from portal.security.principal import Principal, PrincipalKind, RequestOrigin
from portal.services.accounts import auth, users

HandlerT = TypeVar("HandlerT", bound=Callable[..., Any])
# The principal a guarded handler runs for; set by ``for_users`` around the handler's call.
current_principal: ContextVar[Principal | None] = ContextVar("current_principal", default=None)

ACCESS_ATTRIBUTE = "__portal_access__"


def for_anyone(handler: HandlerT) -> HandlerT:
    """Declares a handler anyone may call."""
    setattr(handler, ACCESS_ATTRIBUTE, "public")
    return handler


def for_users(*roles: Role, page_says: bool = False) -> Callable[[HandlerT], HandlerT]:
    """Declares a handler for a signed-in user holding one of ``roles`` (any user when none are given).

    The check runs on every call against the session cookie; a caller without a live session is sent to
    the sign-in page, one without the role gets an error notice, unless ``page_says``: an on-load handler
    of a page that shows the refusal itself (``components.layout.role_gate``) stays quiet.
    """

    def decorate(handler: HandlerT) -> HandlerT:
        if inspect.isasyncgenfunction(handler):
            return _guard_generator(handler, roles)

        @functools.wraps(handler)
        async def guarded(self: SessionState, *args: Any, **kwargs: Any) -> Any:
            principal = await self._resolve_principal()
            if principal is None:
                return rx.redirect(sign_in_first(self.router.url))
            if roles and not principal.roles & set(roles):
                return None if page_says else rx.toast.error(refusal(roles))
            token = current_principal.set(principal)
            try:
                result = handler(self, *args, **kwargs)
                return await result if inspect.isawaitable(result) else result
            finally:
                current_principal.reset(token)

        setattr(guarded, ACCESS_ATTRIBUTE, ("signed_in", frozenset(roles)))
        return guarded  # type: ignore[return-value]

    return decorate


def refusal(roles: tuple[Role, ...] | list[str]) -> str:
    return f"This needs the {' or '.join(sorted(roles))} role."


def _guard_generator(handler: HandlerT, roles: tuple[Role, ...]) -> HandlerT:
    """``for_users`` for a handler that yields (to show progress before it finishes)."""

    @functools.wraps(handler)
    async def guarded(self: SessionState, *args: Any, **kwargs: Any) -> Any:
        principal = await self._resolve_principal()
        if principal is None:
            yield rx.redirect(sign_in_first(self.router.url))
            return
        if roles and not principal.roles & set(roles):
            yield rx.toast.error(refusal(roles))
            return
        token = current_principal.set(principal)
        try:
            async for update in handler(self, *args, **kwargs):
                yield update
        finally:
            current_principal.reset(token)

    setattr(guarded, ACCESS_ATTRIBUTE, ("signed_in", frozenset(roles)))
    return guarded  # type: ignore[return-value]


def principal() -> Principal:
    """The principal of the guarded handler running now."""
    found = current_principal.get()
    if found is None:
        raise RuntimeError("principal() used outside a @for_users handler")
    return found


def _lookup(cookie_secret: str) -> tuple[Principal, User] | None:
    with session_scope(parts.current().engine) as session:
        auth_session = auth.browser_session(session, parts.current().cache, cookie_secret)
        if auth_session is None:
            return None
        user = session.get(User, auth_session.user_id)
        assert user is not None
        roles = frozenset(users.roles_of(session, user.id))
        return Principal(PrincipalKind.USER, user.id, roles=roles, session_id=auth_session.id), user


class SessionState(rx.State):
    """Base of every page state that needs to know who is signed in."""

    signed_in: bool = False
    email: str = ""
    display_name: str = ""
    roles: list[str] = []

    @rx.var
    def is_admin(self) -> bool:
        return Role.ADMIN in self.roles

    @rx.var
    def shows_customer_area(self) -> bool:
        """Whether the navigation offers renting: to the signed out (to learn about it) and customers."""
        return not self.signed_in or Role.CUSTOMER in self.roles

    @rx.var
    def shows_provider_area(self) -> bool:
        return not self.signed_in or Role.PROVIDER in self.roles

    def _cookie_secret(self) -> str | None:
        cookies: SimpleCookie = SimpleCookie()
        try:
            cookies.load(self.router.headers.cookie or "")
        except CookieError:
            return None
        morsel = cookies.get(SESSION_COOKIE)
        return morsel.value if morsel else None

    def _origin(self) -> RequestOrigin:
        return RequestOrigin(
            ip=self.router.session.client_ip or None, user_agent=self.router.headers.user_agent[:300]
        )

    async def _resolve_principal(self) -> Principal | None:
        secret = self._cookie_secret()
        found = await asyncio.to_thread(_lookup, secret) if secret else None
        if found is None:
            self.signed_in, self.email, self.display_name, self.roles = False, "", "", []
            return None
        resolved, user = found
        self.signed_in = True
        self.email = user.email or ""
        self.display_name = user.display_name
        self.roles = sorted(resolved.roles)
        return resolved

    @rx.event
    @for_anyone
    async def load_session(self) -> None:
        await self._resolve_principal()

    @rx.event
    @for_anyone
    async def require_session(self) -> Any:
        """On-load check of pages that only signed-in users see."""
        if await self._resolve_principal() is None:
            return rx.redirect(sign_in_first(self.router.url))
        return None

    @rx.event
    @for_users()
    async def sign_out(self) -> Any:
        # The API route ends the session and clears the HttpOnly cookie; a full load then starts clean.
        return rx.call_script(
            "fetch('/api/v1/auth/browser/logout', {method: 'POST', credentials: 'same-origin'})"
            ".finally(() => window.location.assign('/'))"
        )


# A path on this portal, with an optional query of plain words (a deep link such as /deploy?gpu_model=X).
_LOCAL_PATH = re.compile(r"^/[A-Za-z0-9/_-]*(\?[A-Za-z0-9_.=&%-]*)?$")


def sign_in_first(url: Any) -> str:
    """The sign-in page, returning afterwards to ``url``'s path and query (the deep link is kept)."""
    target = url.path + (f"?{url.query}" if url.query else "")
    return "/login?next=" + quote(target, safe="/")


def safe_next(next_path: str | None, default: str = "/account") -> str:
    """Only a path on this portal: an open redirect would hand a phishing site our sign-in."""
    return (
        next_path
        if next_path and _LOCAL_PATH.match(next_path) and not next_path.startswith("//")
        else default
    )


def sign_in_script(code: str, next_path: str | None) -> Any:
    """Swap a one-time code for the session cookie, then load the next page with it."""
    body, target = json.dumps(json.dumps({"code": code})), json.dumps(safe_next(next_path))
    return rx.call_script(
        "fetch('/api/v1/auth/browser/session', {method: 'POST', credentials: 'same-origin', "
        f"headers: {{'content-type': 'application/json'}}, body: {body}}})"
        f".then((r) => window.location.assign(r.ok ? {target} : '/login?error=session'))"
    )
