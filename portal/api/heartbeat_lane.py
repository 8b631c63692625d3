"""The heartbeat lane: ``POST /api/v1/worker/heartbeat`` answered in front of the web app.

Every agent beats every few seconds, so beats are most of the portal's requests. Through the whole app a
beat pays for Reflex's context middleware, Starlette's routing and error handling, the API's middleware and
FastAPI's dependency solving: several times the cost of the beat itself. The lane answers the beats it can
admit from the cache alone (a device token the cache knows, the caller's IP under its rate limit, a
well-formed body nested no deeper than the firewall allows) with the route's own function. Anything else (a
token not cached or revoked, a bad body, the limit reached, an error) goes on to the app with its body, so
every refusal is the API's own answer.

What the app's middleware does for every request, the lane does with the same functions: the per-IP count
with the firewall's key and expiry (in the beat's own round trip to the cache; over the limit the script
notes nothing and the firewall refuses the beat on that count, 429 with Retry-After), ``security_headers``,
and ``RequestContext`` for the request id, the access log line and the metrics.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid

from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from portal.api import worker
from portal.api.app import API_PREFIX
from portal.api.middleware import RequestContext
from portal.models.base import utcnow
from portal.parts import AppParts
from portal.schemas.devices import GpuSampleIn, HeartbeatIn, HeartbeatOut
from portal.security.authentication import REVOKED, device_of_entry, device_token_key
from portal.security.firewall import (
    IP_RATE_COUNT,
    counter_ttl_s,
    ip_rate_counter,
    json_nesting_exceeds,
    replaying,
    security_headers,
)
from portal.security.secrets import DEVICE_TOKEN_PREFIX, keyed_hash
from portal.services.providers import agents, liveness

HEARTBEAT_PATH = f"{API_PREFIX}/worker/heartbeat"
# The route the app answers beats with: a beat the lane answers is counted and logged as that route's.
_HEARTBEAT_ROUTE = next(
    route
    for route in worker.router.routes
    if isinstance(route, APIRoute) and route.endpoint is worker.heartbeat
)
_BEARER = f"Bearer {DEVICE_TOKEN_PREFIX}_".encode()
_GPUS = TypeAdapter(list[GpuSampleIn])


class _Batches:
    """Beats that reach this process in the same turn of its event loop share one round trip to the cache
    (no beat waits for others: the batch goes as soon as the loop has taken in what was ready), and the
    loop goes on with other requests while the cache answers."""

    def __init__(self, parts: AppParts) -> None:
        self.parts = parts
        self.pending: list[tuple[liveness.TokenBeat, asyncio.Future[liveness.TokenBeatNoted]]] = []
        self.sending: set[asyncio.Task[None]] = set()

    def note(self, beat: liveness.TokenBeat) -> asyncio.Future[liveness.TokenBeatNoted]:
        loop = asyncio.get_running_loop()
        if not self.pending:
            loop.call_soon(self._send)
        noted: asyncio.Future[liveness.TokenBeatNoted] = loop.create_future()
        self.pending.append((beat, noted))
        return noted

    def _send(self) -> None:
        batch, self.pending = self.pending, []
        task = asyncio.ensure_future(self._record(batch))
        self.sending.add(task)  # held until done: the loop keeps only a weak reference to a task
        task.add_done_callback(self.sending.discard)

    async def _record(
        self, batch: list[tuple[liveness.TokenBeat, asyncio.Future[liveness.TokenBeatNoted]]]
    ) -> None:
        try:
            replies: list[liveness.TokenBeatNoted] | list[Exception] = await liveness.record_by_tokens(
                self.parts.cache,
                [beat for beat, _ in batch],
                revoked=REVOKED,
                rate_limit=self.parts.settings.rate_limit_per_minute,
                rate_window_s=counter_ttl_s(),
                now=utcnow(),
                sweep_s=agents.COMMAND_SWEEP_S,
            )
        except Exception as error:  # each beat then goes on to the app, which answers the error
            replies = [error] * len(batch)
        for (_, noted), reply in zip(batch, replies, strict=True):
            if noted.done():
                continue  # the caller went away
            if isinstance(reply, Exception):
                noted.set_exception(reply)
            else:
                noted.set_result(reply)


class HeartbeatLane:
    def __init__(self, app: ASGIApp, parts: AppParts) -> None:
        self.app = app
        self.parts = parts
        self.batches = _Batches(parts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != HEARTBEAT_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"")
        token = headers.get(b"authorization", b"")
        # Chunked, oversized or not JSON bodies and other credentials take the app's way.
        if not (
            length.isdigit()
            and int(length) <= self.parts.settings.max_body_bytes
            and headers.get(b"content-type", b"").startswith(b"application/json")
            and token.startswith(_BEARER)
        ):
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the caller went away
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        if json_nesting_exceeds(body):  # the app's firewall refuses it, before anything parses it
            await self.app(scope, replaying(body, receive), send)
            return
        context = RequestContext(scope, headers, started)
        answer = None
        try:
            answer = await self._answer(scope, token[len(b"Bearer ") :].decode("latin-1"), body)
        except Exception:  # the app answers the same request, with its own error handling
            pass
        finally:
            if answer is None:
                context.leave()  # the app answers it, in a context of its own
        if answer is None:
            await self.app(scope, replaying(body, receive), send)
            return
        payload = (
            _json_of(answer.state, answer.next_heartbeat_s)
            if not answer.commands
            else answer.model_dump_json().encode()
        )
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [  # in the order the app's answer has them
                        (b"content-length", str(len(payload)).encode()),
                        (b"content-type", b"application/json"),
                        *security_headers(scope, self.parts.settings.base_url),
                        context.id_header,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": payload})
        finally:
            scope["route"] = _HEARTBEAT_ROUTE
            context.answered(200)

    async def _answer(self, scope: Scope, token: str, body: bytes) -> HeartbeatOut | None:
        """The beat's answer, or None when the app must answer it."""
        try:
            sent = HeartbeatIn.model_validate_json(body)
        except ValidationError:
            return None
        heard = await self.batches.note(
            liveness.TokenBeat(
                token_key=_token_key(token),
                rate_key=ip_rate_counter(scope, time.time()),
                gpus_json=_GPUS.dump_json(sent.gpus).decode(),
                ray_json=sent.ray.model_dump_json(),
                mesh_json=sent.mesh.model_dump_json() if sent.mesh else "",
            )
        )
        scope[IP_RATE_COUNT] = heard.rate_count
        if heard.noted is None or heard.token_entry is None:
            return None
        return await worker.answer_beat(self.parts, _device_of(heard.token_entry), heard.noted)


@functools.lru_cache(maxsize=65_536)  # an entry per device: its token hashed once, not at every beat
def _token_key(token: str) -> str:
    return device_token_key(keyed_hash(token))


@functools.lru_cache(maxsize=65_536)  # an entry per device, parsed once
def _device_of(token_entry: str) -> uuid.UUID:
    caller = device_of_entry(token_entry)
    assert caller is not None and caller.device_id is not None  # noted: an entry of a device
    return caller.device_id


@functools.lru_cache(maxsize=64)  # almost every answer is one of a handful: a state, no commands
def _json_of(state: str, next_heartbeat_s: int) -> bytes:
    return (
        HeartbeatOut(state=state, commands=[], next_heartbeat_s=next_heartbeat_s).model_dump_json().encode()
    )
