"""Redis from an event loop without blocking it, for the portal's hottest path (``heartbeat_lane``).

redis-py's pipelines block the loop for each round trip and spend more CPU per command in Python than
Redis spends running it; its asyncio client spends more still. A pipe is one connection per event loop:
a batch of commands goes out in one write, hiredis parses the replies (in C), and Redis answers in order,
so each reply belongs to the oldest batch still waiting.
"""

from __future__ import annotations

import asyncio
import ssl
import weakref
from collections import deque
from typing import Any, cast

import hiredis
import redis


class _Batch:
    __slots__ = ("answered", "expected", "replies")

    def __init__(self, answered: asyncio.Future[list[Any]], expected: int) -> None:
        self.answered = answered
        self.expected = expected
        self.replies: list[Any] = []


class _Pipe(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(encoding="utf-8")
        self.waiting: deque[_Batch] = deque()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are no subclass of asyncio's

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            batch = self.waiting[0]
            batch.replies.append(reply)
            if len(batch.replies) == batch.expected:
                self.waiting.popleft()
                if not batch.answered.done():  # else its caller gave up waiting
                    batch.answered.set_result(batch.replies)

    def connection_lost(self, error: Exception | None) -> None:
        self.transport = None
        while self.waiting:
            answered = self.waiting.popleft().answered
            if not answered.done():
                answered.set_exception(redis.exceptions.ConnectionError("the connection to Redis was lost"))

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def send(self, commands: list[bytes]) -> asyncio.Future[list[Any]]:
        """Write the commands at once; the future answers their replies, in order (errors as values)."""
        assert self.transport is not None
        answered: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.waiting.append(_Batch(answered, len(commands)))
        self.transport.write(b"".join(commands))
        return answered


class RedisPipes:
    """A pipe per event loop to the Redis that ``client`` connects to (its address, credentials and
    database), made on first use and again after a connection is lost."""

    def __init__(self, client: redis.Redis, timeout_s: float) -> None:
        self._pool = client.connection_pool
        self._timeout_s = timeout_s
        self._pipes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[_Pipe]] = (
            weakref.WeakKeyDictionary()
        )

    async def run(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Each command's reply, in order; a Redis error is a ``hiredis.ReplyError`` among them."""
        pipe = await self._pipe()
        answered = pipe.send([hiredis.pack_command(command) for command in commands])
        try:
            return await asyncio.wait_for(answered, self._timeout_s)
        except TimeoutError:
            if pipe.transport is not None:
                pipe.transport.close()  # the replies still owed would answer the wrong batches
            raise redis.exceptions.TimeoutError("Redis did not answer in time") from None

    async def _pipe(self) -> _Pipe:
        loop = asyncio.get_running_loop()
        connecting = self._pipes.get(loop)
        if connecting is None or (
            connecting.done() and (connecting.exception() is not None or not connecting.result().open)
        ):
            connecting = self._pipes[loop] = loop.create_task(self._connect())
        return await connecting

    async def _connect(self) -> _Pipe:
        options = self._pool.connection_kwargs
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout_s):
                if "path" in options:
                    _, pipe = await loop.create_unix_connection(_Pipe, options["path"])
                else:
                    secure = issubclass(self._pool.connection_class, redis.SSLConnection)
                    _, pipe = await loop.create_connection(
                        _Pipe,
                        options.get("host", "localhost"),
                        options.get("port", 6379),
                        ssl=ssl.create_default_context() if secure else None,
                    )
                hello = []
                if options.get("password"):
                    hello.append(("AUTH", *filter(None, (options.get("username"), options["password"]))))
                if options.get("db"):
                    hello.append(("SELECT", options["db"]))
                for reply in (
                    await pipe.send([hiredis.pack_command(command) for command in hello]) if hello else []
                ):
                    if isinstance(reply, hiredis.ReplyError):
                        assert pipe.transport is not None
                        pipe.transport.close()
                        raise redis.exceptions.ConnectionError(f"Redis refused the connection: {reply}")
        except (OSError, TimeoutError) as error:
            raise redis.exceptions.ConnectionError(f"Redis is unreachable: {error}") from error
        return pipe
