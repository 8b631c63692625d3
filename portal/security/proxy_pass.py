"""Who is asking for a cluster's dashboard through the portal's proxy (``/clusters/{id}/ray/…``).

The proxied dashboard is served sandboxed (``Content-Security-Policy: sandbox``): it is a page the
provider's machine made, so it runs in an opaque origin and can touch neither the portal's pages, nor its
storage, nor its session cookie. A sandboxed page's own requests carry no SameSite cookie of the portal, so
the first request (a bearer credential or the browser's session cookie) gets a pass of its own: an HttpOnly
cookie for that cluster's dashboard path alone, naming the user, their browser session and an expiry,
signed with a key derived for this purpose. Every request re-checks the session (revoked, expired) and the
cluster (owner, state).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import time
import uuid
from collections.abc import Mapping
from http.cookies import CookieError, SimpleCookie

from sqlmodel import Session

from portal import parts
from portal.infra.cache import Cache
from portal.models import AuthSession, User
from portal.models.base import utcnow
from portal.security.authentication import authenticate_bearer
from portal.security.cookies import SESSION_COOKIE
from portal.security.principal import Principal, PrincipalKind
from portal.services.accounts import auth
from portal.services.accounts.users import roles_of
from portal.services.errors import DomainError

PASS_COOKIE = "portal_dashboard"
PASS_TTL_S = 3600


def path_of(cluster_id: uuid.UUID) -> str:
    return f"/clusters/{cluster_id}/ray/"


@functools.lru_cache(maxsize=8)
def _key(signing_key: str) -> bytes:
    return hmac.new(signing_key.encode(), b"portal dashboard pass v1", hashlib.sha256).digest()


def _mac(message: str) -> str:
    return hmac.new(_key(parts.current().settings.signing_key()), message.encode(), "sha256").hexdigest()


def issue(cluster_id: uuid.UUID, session_id: uuid.UUID, now: float | None = None) -> str:
    """A pass to ``cluster_id``'s dashboard for the browser session ``session_id``."""
    message = f"{cluster_id}.{session_id}.{int((now or time.time()) + PASS_TTL_S)}"
    return f"{message}.{_mac(message)}"


def _session_of_pass(value: str, cluster_id: uuid.UUID) -> uuid.UUID | None:
    message, _, mac = value.rpartition(".")
    if not hmac.compare_digest(_mac(message), mac):
        return None
    try:
        cluster, session_id, expires = message.split(".")
        if uuid.UUID(cluster) != cluster_id or int(expires) < time.time():
            return None
        return uuid.UUID(session_id)
    except ValueError:
        return None


def _cookies(headers: Mapping[str, str]) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    with contextlib.suppress(CookieError):
        jar.load(headers.get("cookie", ""))
    return jar


def _user_of_session(session: Session, session_id: uuid.UUID) -> Principal | None:
    found = session.get(AuthSession, session_id)
    if found is None or found.revoked_at is not None or found.expires_at <= utcnow():
        return None
    user = session.get(User, found.user_id)
    if user is None or not user.is_active:
        return None
    roles = frozenset(roles_of(session, user.id))
    return Principal(PrincipalKind.USER, user.id, roles=roles, session_id=found.id)


def principal(
    session: Session, cache: Cache, headers: Mapping[str, str], cluster_id: uuid.UUID
) -> Principal | None:
    """The caller: a bearer credential, else this dashboard's pass, else the browser's session cookie;
    None when none of them holds."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        try:
            return authenticate_bearer(session, cache, token.strip())
        except DomainError:
            return None
    jar = _cookies(headers)
    if PASS_COOKIE in jar:
        session_id = _session_of_pass(jar[PASS_COOKIE].value, cluster_id)
        if session_id is not None:
            return _user_of_session(session, session_id)
    if SESSION_COOKIE in jar:
        browser = auth.browser_session(session, cache, jar[SESSION_COOKIE].value)
        if browser is not None:
            return _user_of_session(session, browser.id)
    return None
