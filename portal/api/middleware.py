"""Request context: a request id on every log line and response, an access log line and HTTP metrics."""

from __future__ import annotations

import functools
import logging
import random
import re
import time

from prometheus_client import Counter, Histogram
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from portal.infra.logs import request_id_var
from portal.infra.metrics import HTTP_REQUEST_SECONDS, HTTP_REQUESTS

logger = logging.getLogger("portal.access")

# A caller's request id is kept only when it is short and plain, so it cannot forge log lines.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Paths of the web app's own assets and websocket; counted together to keep metric labels few.
_UNROUTED = "unrouted"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(dict(scope.get("headers") or []))
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            matched = scope.get("route")
            route = matched.path if isinstance(matched, Route) else _UNROUTED
            record_request(scope, route, status, time.perf_counter() - started)
            request_id_var.reset(token)


@functools.cache  # few: route templates, not paths
def _metrics_of(method: str, route: str, status: int) -> tuple[Counter, Histogram]:
    return HTTP_REQUESTS.labels(method, route, str(status)), HTTP_REQUEST_SECONDS.labels(method, route)


def request_id_of(headers: dict[bytes, bytes]) -> str:
    """The caller's request id when it is safe to log, else a new one."""
    incoming = headers.get(b"x-request-id", b"").decode("latin-1")
    # Not a secret, only unique: no system call for it (each beat gets one).
    return incoming if _SAFE_REQUEST_ID.match(incoming) else f"{random.getrandbits(128):032x}"


def record_request(scope: Scope, route: str, status: int, elapsed_s: float) -> None:
    """The metrics and the access log line of one answered request."""
    method = scope["method"]
    requests, seconds = _metrics_of(method, route, status)
    requests.inc()
    seconds.observe(elapsed_s)
    if route != _UNROUTED:
        logger.info(
            "%s %s %s",
            method,
            scope["path"],
            status,
            extra={
                "method": method,
                "path": scope["path"],
                "status": status,
                "ms": round(elapsed_s * 1000, 2),
            },
        )
