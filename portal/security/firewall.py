"""The firewall inside the app: rate limits, request body limits and security headers.

Rate limits are fixed one-minute windows counted in the cache (Redis when configured, so every portal
process shares them), per client IP on every API request and per principal once it is known.
"""

from __future__ import annotations

import functools
import math
import re
import time
from urllib.parse import urlsplit

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from portal.api.errors import error_response
from portal.infra.cache import Cache
from portal.services.errors import RateLimited

WINDOW_S = 60
# JSON parsers recurse once per level of arrays and objects: nesting deep enough exhausts the stack (Python's
# json module fails near 1,000 levels, as a 500). No request of the API needs more than a few levels.
MAX_JSON_DEPTH = 32
# A JSON string literal, or an unterminated one running to the end. Matching the unterminated case too keeps
# the scan linear: a pattern that must find a closing quote backtracks over the rest from every quote.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
_AS_PARENS = bytes.maketrans(b"[]{}", b"()()")


# The request's count in its IP's window, set on the scope by the heartbeat lane when it counted the
# request already (in its own round trip to the cache, with ``ip_rate_counter`` and ``counter_ttl_s``)
# before handing it on: the firewall then decides on that count.
IP_RATE_COUNT = "portal.ip_rate_count"


def rate_counter(scope: str, identity: str, now: float, window_s: int = WINDOW_S) -> str:
    """The cache key counting one identity's requests in the window that holds ``now``."""
    return f"rl:{scope}:{identity}:{int(now // window_s)}"


def ip_rate_counter(scope: Scope, now: float) -> str:
    """The key counting API requests from the client's IP: the firewall's and the heartbeat lane's."""
    return rate_counter("ip", client_ip(scope), now)


def counter_ttl_s(window_s: int = WINDOW_S) -> int:
    """How long a window's counter is kept: a second past the window, so its last request still finds it."""
    return window_s + 1


def check_rate(cache: Cache, scope: str, identity: str, limit: int, window_s: int = WINDOW_S) -> None:
    count = cache.incr(rate_counter(scope, identity, time.time(), window_s), ttl_s=counter_ttl_s(window_s))
    enforce_rate(count, limit, window_s)


def enforce_rate(count: int, limit: int, window_s: int = WINDOW_S) -> None:
    """Refuse the request counted ``count``-th in its window when that is over the limit."""
    if count > limit:
        retry_after = math.ceil(window_s - time.time() % window_s)
        raise RateLimited(f"Too many requests; try again in {retry_after} s.", retry_after_s=retry_after)


def carries_json(content_type: bytes | None) -> bool:
    """Whether the API parses a body sent with this content type as JSON (FastAPI does when it is absent)."""
    return not content_type or b"json" in content_type.lower()


def json_nesting_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text nests arrays and objects deeper than ``limit``, found without parsing it.

    Brackets inside strings do not count. Each pass removes the innermost pairs, so a balanced text needs
    as many passes as it is deep: at most ``limit`` + 1 scans at C speed, a few milliseconds each on a
    1 MiB body. A malformed text (brackets left unmatched) may be judged deeper than it is, never
    shallower; the parser would refuse it anyway.
    """
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= limit:
        return False
    nested = brackets.translate(_AS_PARENS)
    if b"(" * (limit + 1) in nested:
        return True  # that many levels opened in a row: the common attack, found in one scan
    passes = 0
    while b"()" in nested:
        if passes == limit:
            return True  # a pair still holds others after ``limit`` passes: it is deeper than that
        nested = nested.replace(b"()", b"")
        passes += 1
    # Left: unmatched brackets, ")))(((". Whatever was matched nested at most ``passes`` levels inside them.
    return passes + nested.count(b"(") > limit


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
    """Per-IP rate limit, body size limit and JSON depth limit for the API; pages and the app's websocket
    pass through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        parts = scope["app"].state.parts
        settings = parts.settings
        try:
            counted = scope.get(IP_RATE_COUNT)  # counted already when the heartbeat lane hands a beat on
            if counted is None:
                # The cache may be Redis: its blocking client must not stall the event loop.
                counted = await anyio.to_thread.run_sync(
                    parts.cache.incr, ip_rate_counter(scope, time.time()), counter_ttl_s()
                )
            enforce_rate(counted, settings.rate_limit_per_minute)
        except RateLimited as limited:
            await error_response(429, limited.code, limited.message, limited.details, limited.headers)(
                scope, receive, send
            )
            return
        limit = settings.max_body_bytes
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(scope, receive, send, limit)
            return
        # Read the body here, bounded, so an oversized or too deeply nested one is refused before any
        # handler parses it; the limit keeps the buffer small.
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
        sent = bytes(body)
        if sent and carries_json(headers.get(b"content-type")) and json_nesting_exceeds(sent):
            await self._too_deep(scope, receive, send)
            return
        await self.app(scope, replaying(sent, receive), send)

    @staticmethod
    async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = error_response(413, "payload_too_large", f"The request body is larger than {limit} bytes.")
        await response(scope, receive, send)

    @staticmethod
    async def _too_deep(scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            400,
            "too_deep",
            f"The request body nests JSON arrays and objects deeper than {MAX_JSON_DEPTH} levels.",
        )
        await response(scope, receive, send)


# Pages need inline scripts and styles from the React build and a websocket back to the portal; Reflex
# evaluates the scripts its backend sends (notices, sign-in hand-off), hence 'unsafe-eval'. Everything
# still loads from the portal itself only, and API responses keep the strict policy below.
PAGE_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self' {websocket_origin}; "
    "frame-ancestors 'none'; base-uri 'self'; form-action 'self'; object-src 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'"
# The interactive API docs: Swagger UI from the portal's own files, started by an inline script.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'"
)


@functools.lru_cache(maxsize=8)
def page_csp(base_url: str) -> str:
    """The pages' policy: they connect to the portal's own origin only. Its websocket form is named as well
    as 'self', which browsers before CSP3 do not match to ws: or wss:."""
    public = urlsplit(base_url)
    websocket_scheme = "wss" if public.scheme == "https" else "ws"
    return PAGE_CSP.format(websocket_origin=f"{websocket_scheme}://{public.netloc}")


def security_headers(scope: Scope, base_url: str) -> list[tuple[bytes, bytes]]:
    """The headers every response to this request carries, whoever answers it (the app's middleware below,
    the heartbeat lane in front of it)."""
    path = scope["path"]
    csp = DOCS_CSP if path == "/api/docs" else API_CSP if path.startswith("/api/") else page_csp(base_url)
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
