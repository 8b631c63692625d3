"""The browser session cookie: HttpOnly, SameSite=Lax, Secure whenever the portal is reached over TLS."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from portal.config import Settings

SESSION_COOKIE = "portal_session"
SESSION_COOKIE_MAX_AGE_S = 14 * 24 * 3600


def set_session_cookie(response: Response, secret: str, *, secure: bool) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        secret,
        max_age=SESSION_COOKIE_MAX_AGE_S,
        path="/",
        httponly=True,
        secure=secure,
        samesite="lax",
    )


def clear_session_cookie(response: Response, *, secure: bool) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, secure=secure, samesite="lax")


def served_over_tls(request: Request, settings: Settings) -> bool:
    """True when the browser reached the portal over HTTPS, directly or through a TLS-terminating proxy
    (then PORTAL_PUBLIC_URL says https)."""
    return request.url.scheme == "https" or settings.base_url.startswith("https://")
