"""``/clusters/{id}/ray/…``: the Ray dashboard of a customer's cluster, served under the portal's origin, HTTP
and websockets, so the customer opens it from their own machine with no VPN and no open port.

Outside ``/api`` and the OpenAPI document (API.md). Who may see it is the service's to say
(``rentals.dashboard``), on every request and every websocket; anyone else gets the same 404. The caller's
credentials (Authorization, cookies) never travel upstream, and the upstream's cookies never come back:
the page is the provider machine's, so it is served sandboxed (``proxy_pass``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Mapping

import httpx
import websockets
from fastapi import APIRouter, Request, WebSocket
from fastapi.concurrency import run_in_threadpool
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse
from starlette.websockets import WebSocketDisconnect

from portal.api.errors import error_response
from portal.infra.db import session_scope
from portal.parts import AppParts
from portal.security import proxy_pass
from portal.services.errors import NotFound
from portal.services.rentals import dashboard

logger = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
UPSTREAM_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
# Never forwarded: the caller's credentials, what names the portal's host, and hop-by-hop headers.
DROPPED_UP = {
    "authorization", "cookie", "host", "connection", "keep-alive", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto",
    "x-real-ip", "origin", "referer", "content-length",
}  # fmt: skip
DROPPED_DOWN = {
    "set-cookie", "connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding",
    "proxy-authenticate", "trailer", "upgrade", "content-security-policy", "strict-transport-security",
    "access-control-allow-origin", "access-control-allow-credentials",
}  # fmt: skip
# An opaque origin: scripts run (the dashboard is a web app), but never as the portal.
SANDBOX = "sandbox allow-scripts allow-forms allow-popups allow-downloads allow-modals"
WS_DROPPED_UP = DROPPED_UP | {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions"}


def _target(
    parts: AppParts, headers: Mapping[str, str], cluster_id: uuid.UUID
) -> tuple[str, uuid.UUID | None]:
    """The head's dashboard for this caller, and the browser session to renew the pass of (None for a bearer
    credential); NotFound for anyone but the owner of a running cluster."""
    with session_scope(parts.engine) as session:
        caller = proxy_pass.principal(session, parts.cache, headers, cluster_id)
        base = dashboard.upstream(session, caller, cluster_id)
    bearer = headers.get("authorization", "").lower().startswith("bearer ")
    return base, None if bearer or caller is None else caller.session_id


def _client(request: Request) -> httpx.AsyncClient:
    """One pooled client per event loop (a server has one; a test client starts one per request)."""
    state, loop = request.app.state, asyncio.get_running_loop()
    held = getattr(state, "dashboard_client", None)
    if held is None or held[0] is not loop:
        # No redirects followed (the page's own Location goes back to the browser, relative to the proxy),
        # no proxies from the environment, and never the caller's cookies.
        client = httpx.AsyncClient(timeout=UPSTREAM_TIMEOUT, follow_redirects=False, trust_env=False)
        state.dashboard_client = held = (loop, client)
    return held[1]


def _upstream_url(base: str, path: str, query: str, *, scheme: str = "http") -> httpx.URL:
    # Built from parts: the request's path can neither leave the head's host nor its port.
    root = httpx.URL(base)
    return httpx.URL(scheme=scheme, host=root.host, port=root.port, path="/" + path, query=query.encode())


def _not_found() -> Response:
    return error_response(404, "not_found", "No such cluster dashboard.")


@router.api_route("/clusters/{cluster_id}/ray", methods=METHODS)
async def dashboard_root(cluster_id: str) -> Response:
    # Relative links of the dashboard resolve under the trailing slash.
    return Response(status_code=307, headers={"Location": f"/clusters/{cluster_id}/ray/"})


@router.api_route("/clusters/{cluster_id}/ray/{path:path}", methods=METHODS)
async def dashboard_http(request: Request, cluster_id: str, path: str) -> Response:
    parts: AppParts = request.app.state.parts
    try:
        cluster = uuid.UUID(cluster_id)
        base, browser_session = await run_in_threadpool(_target, parts, request.headers, cluster)
    except (ValueError, NotFound):
        return _not_found()
    headers = {name: value for name, value in request.headers.items() if name.lower() not in DROPPED_UP}
    client = _client(request)
    upstream = client.build_request(
        request.method,
        _upstream_url(base, path, request.url.query),
        headers=headers,
        content=request.stream() if request.method not in ("GET", "HEAD") else None,
    )
    try:
        answer = await client.send(upstream, stream=True)
    except httpx.HTTPError as error:
        logger.info("cluster %s dashboard did not answer: %s", cluster, type(error).__name__)
        return error_response(
            502, "dashboard_unreachable", "The cluster's Ray dashboard did not answer; try again shortly."
        )
    kept = {name: value for name, value in answer.headers.items() if name.lower() not in DROPPED_DOWN}
    response = StreamingResponse(
        _body(answer), status_code=answer.status_code, headers=kept, background=BackgroundTask(answer.aclose)
    )
    response.headers["Content-Security-Policy"] = SANDBOX
    response.headers["Cache-Control"] = "private, no-store"
    if browser_session is not None:
        _set_pass(response, cluster, browser_session)
    return response


async def _body(answer: httpx.Response) -> AsyncIterator[bytes]:
    async for chunk in answer.aiter_bytes():
        yield chunk


def _set_pass(response: Response, cluster: uuid.UUID, session_id: uuid.UUID) -> None:
    # SameSite=None: the sandboxed page's own requests are cross-site to the browser. Browsers take a Secure
    # cookie from loopback over plain HTTP (a potentially trustworthy origin), so it is Secure everywhere.
    response.set_cookie(
        proxy_pass.PASS_COOKIE,
        proxy_pass.issue(cluster, session_id),
        max_age=proxy_pass.PASS_TTL_S,
        path=proxy_pass.path_of(cluster),
        httponly=True,
        secure=True,
        samesite="none",
    )


@router.websocket("/clusters/{cluster_id}/ray/{path:path}")
async def dashboard_websocket(websocket: WebSocket, cluster_id: str, path: str) -> None:
    parts: AppParts = websocket.app.state.parts
    try:
        cluster = uuid.UUID(cluster_id)
        base, _ = await run_in_threadpool(_target, parts, websocket.headers, cluster)
    except (ValueError, NotFound):
        await websocket.close(code=4404)
        return
    url = str(_upstream_url(base, path, websocket.url.query, scheme="ws"))
    offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    headers = {
        name: value
        for name, value in websocket.headers.items()
        if name.lower() not in WS_DROPPED_UP and name.lower() != "sec-websocket-protocol"
    }
    try:
        upstream = await websockets.connect(
            url, additional_headers=headers, subprotocols=offered or None, open_timeout=5, max_size=2**22
        )
    except (OSError, websockets.WebSocketException, TimeoutError):
        await websocket.close(code=1011)
        return
    async with upstream:
        await websocket.accept(subprotocol=upstream.subprotocol)
        await _pump(websocket, upstream)


async def _pump(browser: WebSocket, upstream: websockets.ClientConnection) -> None:
    async def down() -> None:
        async for message in upstream:
            if isinstance(message, bytes):
                await browser.send_bytes(message)
            else:
                await browser.send_text(message)

    async def up() -> None:
        while True:
            message = await browser.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await upstream.send(message["bytes"])
            elif message.get("text") is not None:
                await upstream.send(message["text"])

    tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except (WebSocketDisconnect, websockets.WebSocketException):
        pass
    finally:
        for task in tasks:
            task.cancel()
        ended = (asyncio.CancelledError, WebSocketDisconnect, websockets.WebSocketException)
        for task in tasks:
            with contextlib.suppress(*ended):
                await task
        with contextlib.suppress(RuntimeError):
            await browser.close()
