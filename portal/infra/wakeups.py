"""Wake-ups for long-polling agents: a command queued for a device ends that device's wait at once.

In-process when embedded (asyncio events, woken thread-safely); Redis pub/sub when ``PORTAL_REDIS_URL``
is set, so a command queued by any portal or task-worker process reaches the process holding the poll.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

import redis
import redis.asyncio as aioredis

from portal.config import Settings, get_settings


class Listener(Protocol):
    async def wait(self, timeout_s: float) -> bool:
        """True when woken before the timeout."""
        ...


class Wakeups(Protocol):
    def notify(self, key: str) -> None: ...

    def listen(self, key: str) -> AsyncIterator[Listener]:
        """An async context manager; subscribe first, then look for work, then wait: nothing is missed."""
        ...


class _EventListener:
    def __init__(self, event: asyncio.Event) -> None:
        self.event = event

    async def wait(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self.event.wait(), timeout_s)
            return True
        except TimeoutError:
            return False


class MemoryWakeups:
    def __init__(self) -> None:
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = defaultdict(set)
        self._lock = threading.Lock()

    def notify(self, key: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(key, ()))
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    @asynccontextmanager
    async def listen(self, key: str) -> AsyncIterator[Listener]:
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters[key].add(entry)
        try:
            yield _EventListener(entry[1])
        finally:
            with self._lock:
                self._waiters[key].discard(entry)
                if not self._waiters[key]:
                    del self._waiters[key]


class RedisWakeups:
    """Wake-ups through Redis pub/sub: one subscription per process (a pattern over every device) feeds the
    in-process listeners, so ten thousand long-polls hold one Redis connection, not ten thousand."""

    def __init__(self, url: str, prefix: str) -> None:
        self._url, self._channel = url, f"{prefix}wake:"
        self._publisher = redis.Redis.from_url(url)
        self._local = MemoryWakeups()
        self._dispatchers: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}

    def notify(self, key: str) -> None:
        self._publisher.publish(self._channel + key, b"1")

    @asynccontextmanager
    async def listen(self, key: str) -> AsyncIterator[Listener]:
        await self._ensure_dispatcher()
        async with self._local.listen(key) as listener:
            yield listener

    async def _ensure_dispatcher(self) -> None:
        loop = asyncio.get_running_loop()
        task = self._dispatchers.get(loop)
        if task is not None and not task.done():
            return
        subscribed = asyncio.Event()
        self._dispatchers[loop] = loop.create_task(self._dispatch(subscribed), name="wakeup-dispatcher")
        # Subscribed before anyone looks for work: a command queued from now on is never missed.
        await subscribed.wait()

    async def _dispatch(self, subscribed: asyncio.Event) -> None:
        client = aioredis.Redis.from_url(self._url)
        pubsub = client.pubsub()
        try:
            await pubsub.psubscribe(self._channel + "*")
            subscribed.set()
            async for message in pubsub.listen():
                if message["type"] == "pmessage":
                    self._local.notify(message["channel"].decode().removeprefix(self._channel))
        finally:
            subscribed.set()  # a failed subscription must not leave a listener waiting for it
            await pubsub.aclose()
            await client.aclose()


def build_wakeups(settings: Settings) -> Wakeups:
    if settings.redis_url:
        return RedisWakeups(settings.redis_url, settings.cache_prefix)
    return MemoryWakeups()


@functools.cache
def get_wakeups() -> Wakeups:
    return build_wakeups(get_settings())
