"""The firewall inside the app: rate limits, request body limits and security headers.

Rate limits are fixed one-minute windows counted in the cache (Redis when configured, so every portal
process shares them), per client IP on every API request and per principal once it is known.
"""

from __future__ import annotations

import math
import time

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from portal.api.errors import error_response
from portal.cache import Cache
from portal.services.errors import RateLimited

WINDOW_S = 60


# The request's count in its IP's window, set on the scope by the heartbeat lane when it counted the
# request already before handing it on.
IP_RATE_COUNT = "portal.ip_rate_count"


def rate_counter(scope: str, identity: str, now: float, window_s: int = WINDOW_S) -> str:
    """The cache key counting one identity's requests in the window that holds ``now``."""
    return f"rl:{scope}:{identity}:{int(now // window_s)}"


def check_rate(cache: Cache, scope: str, identity: str, limit: int, window_s: int = WINDOW_S) -> None:
    count = cache.incr(rate_counter(scope, identity, time.time(), window_s), ttl_s=window_s + 1)
    enforce_rate(count, limit, window_s)


def enforce_rate(count: int, limit: int, window_s: int = WINDOW_S) -> None:
    """Refuse the request counted ``count``-th in its window when that is over the limit."""
    if count > limit:
        retry_after = math.ceil(window_s - time.time() % window_s)
        raise RateLimited(f"Too many requests; try again in {retry_after} s.", retry_after_s=retry_after)


def client_ip(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app a body already read, whole, then whatever comes next."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class FirewallMiddleware:
    """Per-IP rate limit and body size limit for the API; pages and the app's websocket pass through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        parts = scope["app"].state.parts
        settings = parts.settings
        try:
            counted = scope.get(IP_RATE_COUNT)
            if counted is not None:
                enforce_rate(counted, settings.rate_limit_per_minute)
            else:
                # The cache may be Redis: its blocking client must not stall the event loop.
                await anyio.to_thread.run_sync(
                    check_rate, parts.cache, "ip", client_ip(scope), settings.rate_limit_per_minute
                )
        except RateLimited as limited:
            await error_response(429, limited.code, limited.message, limited.details, limited.headers)(
                scope, receive, send
            )
            return
        limit = settings.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(scope, receive, send, limit)
            return
        # Read the body here, bounded, so an oversized one is refused before any handler parses it;
        # the limit keeps the buffer small.
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away; let the app see it
            body += message.get("body", b"")
            if len(body) > limit:
                await self._too_large(scope, receive, send, limit)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, replaying(bytes(body), receive), send)

    @staticmethod
    async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = error_response(413, "payload_too_large", f"The request body is larger than {limit} bytes.")
        await response(scope, receive, send)


# Pages need inline scripts and styles from the React build and a websocket back to the portal; Reflex
# evaluates the scripts its backend sends (notices, sign-in hand-off), hence 'unsafe-eval'. Everything
# still loads from the portal itself only, and API responses keep the strict policy below.
PAGE_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self' ws: wss:; "
    "frame-ancestors 'none'; base-uri 'self'; form-action 'self'; object-src 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'"
# The interactive API docs: Swagger UI from the portal's own files, started by an inline script.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'"
)


def security_headers(scope: Scope, base_url: str) -> list[tuple[bytes, bytes]]:
    """The headers every response to this request carries, whoever answers it."""
    path = scope["path"]
    csp = DOCS_CSP if path == "/api/docs" else API_CSP if path.startswith("/api/") else PAGE_CSP
    headers = [
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"strict-origin-when-cross-origin"),
        (b"cross-origin-opener-policy", b"same-origin"),
        (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
        (b"content-security-policy", csp.encode()),
    ]
    if scope.get("scheme") == "https" or base_url.startswith("https://"):
        headers.append((b"strict-transport-security", b"max-age=63072000; includeSubDomains"))
    return headers


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = security_headers(scope, scope["app"].state.parts.settings.base_url)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *(h for h in headers if h[0] not in present),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)
