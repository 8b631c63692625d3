"""The cache: Redis in production, a thread-safe in-process store when embedded.

Callers see one small interface and never branch on the back end. Keys are prefixed with
``PORTAL_CACHE_PREFIX`` so several portals (or test runs) can share one Redis.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Protocol

import redis

from portal.config import Settings, get_settings


class Cache(Protocol):
    def get(self, key: str) -> str | None: ...

    def set(self, key: str, value: str, ttl_s: float | None = None) -> None: ...

    def delete(self, key: str) -> None: ...

    def take(self, key: str) -> str | None:
        """Get and delete in one atomic step: a one-time value can be taken once only."""
        ...

    def incr(self, key: str, ttl_s: float) -> int:
        """Add one to a counter that starts its ``ttl_s`` window on first use; returns the new count."""
        ...

    def ping(self) -> None:
        """Raise if the cache cannot be reached."""
        ...


class MemoryCache:
    def __init__(self, prefix: str = "") -> None:
        self._prefix = prefix
        self._values: dict[str, tuple[str, float | None]] = {}
        self._lock = threading.Lock()

    def _live(self, key: str) -> tuple[str, float | None] | None:
        item = self._values.get(key)
        if item is not None and item[1] is not None and item[1] <= time.monotonic():
            del self._values[key]
            return None
        return item

    def get(self, key: str) -> str | None:
        with self._lock:
            item = self._live(self._prefix + key)
            return None if item is None else item[0]

    def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        expires = None if ttl_s is None else time.monotonic() + ttl_s
        with self._lock:
            self._values[self._prefix + key] = (value, expires)

    def delete(self, key: str) -> None:
        with self._lock:
            self._values.pop(self._prefix + key, None)

    def take(self, key: str) -> str | None:
        with self._lock:
            item = self._live(self._prefix + key)
            self._values.pop(self._prefix + key, None)
            return None if item is None else item[0]

    def incr(self, key: str, ttl_s: float) -> int:
        full_key = self._prefix + key
        with self._lock:
            item = self._live(full_key)
            if item is None:
                self._values[full_key] = ("1", time.monotonic() + ttl_s)
                return 1
            count = int(item[0]) + 1
            self._values[full_key] = (str(count), item[1])
            return count

    def ping(self) -> None:
        return None


class RedisCache:
    def __init__(self, url: str, prefix: str = "", timeout_s: float = 2.0) -> None:
        self._prefix = prefix
        self._redis = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )

    def get(self, key: str) -> str | None:
        return self._redis.get(self._prefix + key)  # type: ignore[return-value]

    def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        px = None if ttl_s is None else max(1, int(ttl_s * 1000))
        self._redis.set(self._prefix + key, value, px=px)

    def delete(self, key: str) -> None:
        self._redis.delete(self._prefix + key)

    def take(self, key: str) -> str | None:
        return self._redis.getdel(self._prefix + key)  # type: ignore[return-value]

    def incr(self, key: str, ttl_s: float) -> int:
        full_key = self._prefix + key
        with self._redis.pipeline() as pipe:
            pipe.incr(full_key)
            # NX: only the first increment of a window sets its expiry.
            pipe.pexpire(full_key, max(1, int(ttl_s * 1000)), nx=True)
            count, _ = pipe.execute()
        return int(count)

    def ping(self) -> None:
        self._redis.ping()

    def close(self) -> None:
        self._redis.close()


def build_cache(settings: Settings) -> Cache:
    if settings.redis_url:
        return RedisCache(settings.redis_url, settings.cache_prefix, settings.readiness_timeout_s)
    return MemoryCache(settings.cache_prefix)


@functools.cache
def get_cache() -> Cache:
    return build_cache(get_settings())
