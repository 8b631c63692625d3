"""Authorization in one place: every route declares one access rule, as a dependency.

A rule authenticates the caller, checks roles, API-key scopes and credential kind, applies the
per-principal rate limit and hands the route its ``Principal``. Objects are then looked up within the
caller's ownership by the services, so another user's object is a 404, not a 403.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from portal.api.deps import CacheDep, PartsDep, SessionDep, SettingsDep
from portal.config import Settings
from portal.infra.db import session_scope
from portal.models import Role
from portal.parts import AppParts
from portal.security.authentication import authenticate_bearer, cached_device
from portal.security.firewall import check_rate
from portal.security.principal import Principal, PrincipalKind, RequestOrigin
from portal.security.secrets import DEVICE_TOKEN_PREFIX
from portal.services.errors import Forbidden, Unauthorized

bearer_scheme = HTTPBearer(
    auto_error=False, description="JWT access token, API key (gpk_…) or device token (gpd_…)"
)
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


class AccessRule:
    """Base of every rule; ``tests/test_authorization_matrix.py`` finds them on every route.

    Calling a rule authenticates the bearer credential (if any), applies the per-principal rate limit, then
    lets ``admit`` accept or refuse the caller. Rules differ only in ``admit``.
    """

    summary = "rule"

    def __call__(
        self,
        request: Request,
        credentials: BearerDep,
        session: SessionDep,
        cache: CacheDep,
        settings: SettingsDep,
    ) -> Principal | None:
        principal = None
        if credentials is not None:
            principal = authenticate_bearer(session, cache, credentials.credentials)
            check_rate(cache, "principal", principal.id, settings.rate_limit_per_minute)
        elif request.headers.get("authorization"):
            raise Unauthorized("The Authorization header must be 'Bearer <token>'.", code="invalid_token")
        return self.admit(principal, request, settings)

    def admit(self, principal: Principal | None, request: Request, settings: Settings) -> Principal | None:
        return principal


class Open(AccessRule):
    """No credentials are read at all: health, readiness and metrics, which must answer even when the
    database is down."""

    summary = "open"

    async def __call__(self) -> None:  # type: ignore[override]
        return None


class MetricsScraper(Open):
    """Open while no ``metrics_token`` is set (development); otherwise only ``Bearer <metrics_token>``.

    Still reads no database or cache, so Prometheus scrapes while they are down. The token is compared in
    constant time.
    """

    summary = "open, or the metrics token when set"

    async def __call__(self, request: Request, parts: PartsDep) -> None:  # type: ignore[override]
        expected = parts.settings.metrics_token
        if expected is None:
            return None
        scheme, _, sent = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            sent.strip().encode(), expected.get_secret_value().encode()
        ):
            raise Unauthorized(
                "/metrics needs 'Authorization: Bearer <PORTAL_METRICS_TOKEN>'.", code="invalid_token"
            )
        return None


class Public(AccessRule):
    """Anyone; a valid credential, when sent, is still identified."""

    summary = "public"


class SignedIn(AccessRule):
    """A signed-in user (or, where allowed, their API key with the right scope) holding one of the roles."""

    def __init__(
        self, roles: Iterable[Role] = (), *, scope: str | None = None, api_keys: bool = True
    ) -> None:
        self.roles = frozenset(roles)
        self.scope = scope
        self.api_keys = api_keys
        self.summary = "signed in" + (f" as {'/'.join(sorted(self.roles))}" if self.roles else "")

    def admit(self, principal: Principal | None, request: Request, settings: Settings) -> Principal:
        if principal is None:
            raise Unauthorized("Sign in first: send 'Authorization: Bearer <token>'.")
        if principal.kind is PrincipalKind.DEVICE:
            raise Forbidden("Device tokens are accepted on worker routes only.", code="wrong_credential")
        if principal.kind is PrincipalKind.API_KEY:
            if not self.api_keys:
                raise Forbidden("API keys cannot be used here; sign in instead.", code="wrong_credential")
            if self.scope and not principal.has_scope(self.scope):
                raise Forbidden(f"The API key lacks the '{self.scope}' scope.", code="missing_scope")
        if self.roles and not principal.roles & self.roles:
            raise Forbidden(f"This needs the {' or '.join(sorted(self.roles))} role.", code="missing_role")
        return principal


class Admin(SignedIn):
    """An admin, signed in (never an API key), from an allowed network when an allowlist is set."""

    def __init__(self) -> None:
        super().__init__([Role.ADMIN], api_keys=False)

    def admit(self, principal: Principal | None, request: Request, settings: Settings) -> Principal:
        admitted = super().admit(principal, request, settings)
        if not settings.admin_ip_allowlist:
            return admitted
        try:
            address = ipaddress.ip_address(request.client.host if request.client else "")
        except ValueError:
            address = None
        if address is None or not any(
            address in ipaddress.ip_network(network, strict=False) for network in settings.admin_ip_allowlist
        ):
            raise Forbidden("Admin routes are not reachable from this address.", code="ip_not_allowed")
        return admitted


class DeviceToken(AccessRule):
    """A worker agent's device token; nothing else is accepted on worker routes."""

    summary = "device token"

    def admit(self, principal: Principal | None, request: Request, settings: Settings) -> Principal:
        if principal is None:
            raise Unauthorized("Worker routes need the device token: 'Authorization: Bearer gpd_…'.")
        if principal.kind is not PrincipalKind.DEVICE:
            raise Forbidden("Worker routes accept device tokens only.", code="wrong_credential")
        return principal


class BeatingDevice(DeviceToken):
    """The device-token rule for heartbeats, answered from the cache without a database session or a
    thread: the rest (a token not cached yet, anything that is not a device token) takes the full rule,
    so callers get the same answers. The per-principal rate limit is left to the per-IP one here: a beat
    only overwrites the device's latest beat."""

    async def __call__(  # type: ignore[override]
        self, request: Request, credentials: BearerDep, parts: PartsDep
    ) -> Principal | None:
        token = credentials.credentials if credentials is not None else ""
        principal = cached_device(parts.cache, token) if token.startswith(f"{DEVICE_TOKEN_PREFIX}_") else None
        if principal is None:
            return await run_in_threadpool(self._full_rule, request, credentials, parts)
        return self.admit(principal, request, parts.settings)

    def _full_rule(
        self, request: Request, credentials: HTTPAuthorizationCredentials | None, parts: AppParts
    ) -> Principal | None:
        with session_scope(parts.engine) as session:
            return DeviceToken.__call__(self, request, credentials, session, parts.cache, parts.settings)


async def request_origin(request: Request) -> RequestOrigin:
    return RequestOrigin(
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent", "")[:300],
    )


OriginDep = Annotated[RequestOrigin, Depends(request_origin)]

# The rules routes use; one instance each, so the authorization matrix can name them.
OPEN = Open()
METRICS_SCRAPER = MetricsScraper()
PUBLIC = Public()
SIGNED_IN = SignedIn()
SIGNED_IN_BROWSER_OR_TOKEN = SignedIn(api_keys=False)
ADMIN = Admin()
DEVICE = DeviceToken()
BEATING_DEVICE = BeatingDevice()
