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


class RequestContext:
    """One request, from its arrival to its answer: its id, on every log line written meanwhile and sent back
    in ``X-Request-Id``, then its access log line and metrics. The middleware below and the heartbeat lane
    both answer through it, so their log lines, metrics and request ids are the same.

    Enter and leave it in the same task: the id is a context variable, reset where it was set.
    """

    __slots__ = ("_context", "_started", "id_header", "scope")

    def __init__(self, scope: Scope, headers: dict[bytes, bytes], started: float | None = None) -> None:
        self.scope = scope
        self._started = time.perf_counter() if started is None else started
        request_id = request_id_of(headers)
        self.id_header = (b"x-request-id", request_id.encode())
        self._context = request_id_var.set(request_id)

    def answered(self, status: int) -> None:
        """Write the access log line and the metrics, the line still carrying the request's id; then leave.

        Counted by the route that answered (``scope["route"]``, set by FastAPI's routing: the route's
        template in its own router), else together with the web app's assets and websocket."""
        matched = self.scope.get("route")
        route = matched.path if isinstance(matched, Route) else _UNROUTED
        try:
            record_request(self.scope, route, status, time.perf_counter() - self._started)
        finally:
            self.leave()

    def leave(self) -> None:
        """Leave without a line: someone else answers the request."""
        request_id_var.reset(self._context)


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context = RequestContext(scope, dict(scope.get("headers") or []))
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), context.id_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            context.answered(status)


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
    if route != _UNROUTED and logger.isEnabledFor(logging.INFO):  # not even its fields when off
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
