"""The cache: Redis in production, a thread-safe in-process store when embedded.

Callers see one small interface and never branch on the back end. Keys are prefixed with
``PORTAL_CACHE_PREFIX`` so several portals (or test runs) can share one Redis.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import hiredis
import redis

from portal.config import Settings, get_settings
from portal.infra.redis_pipe import RedisPipes


class Cache(Protocol):
    def get(self, key: str) -> str | None: ...

    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        """The values of many keys in one step, in order (None where there is none)."""
        ...

    def set(self, key: str, value: str, ttl_s: float | None = None) -> None: ...

    def set_many(self, values: Mapping[str, str], ttl_s: float) -> None:
        """Set many keys, each expiring after ``ttl_s``, in one step."""
        ...

    def add(self, key: str, value: str, ttl_s: float) -> bool:
        """Set the value only if the key has none; True when it was set."""
        ...

    def delete(self, *keys: str) -> None: ...

    def take(self, key: str) -> str | None:
        """Get and delete in one atomic step: a one-time value can be taken once only."""
        ...

    def incr(self, key: str, ttl_s: float) -> int:
        """Add one to a counter that starts its ``ttl_s`` window on first use; returns the new count."""
        ...

    def hset(self, key: str, field: str, value: str) -> None:
        """Set one field of a hash (the newest value of a field wins)."""
        ...

    def hdrain(self, key: str) -> dict[str, str]:
        """Every field of a hash, removed in the same atomic step: each value is drained once."""
        ...

    def batch(self, operations: Sequence[Operation]) -> list[Any]:
        """Several operations in one round trip (not atomic together); their results, in order."""
        ...

    def run_script(self, script: Script, calls: Sequence[ScriptCall]) -> list[Any]:
        """Run a script once per call (each atomic on Redis), all in one round trip; the replies, in order."""
        ...

    async def run_script_async(self, script: Script, calls: Sequence[ScriptCall]) -> list[Any]:
        """``run_script`` from an event loop, which goes on meanwhile."""
        ...

    def ping(self) -> None:
        """Raise if the cache cannot be reached."""
        ...


# ("get", key) | ("set", key, value, ttl_s) | ("incr", key, ttl_s) | ("hset", key, field, value)
Operation = tuple[Any, ...]


@dataclass(frozen=True)
class Script:
    """Work that must take one round trip: Lua for Redis, and the same steps in Python for the embedded
    cache. The Lua gets the keys prefixed, and the cache's prefix as ``ARGV[1]`` before the other
    arguments (for keys it builds itself); ``local`` gets the cache and the arguments as given."""

    lua: str
    local: Callable[[Cache, Sequence[str], Sequence[Any]], Any]


# A script's keys and arguments (strings and numbers).
ScriptCall = tuple[Sequence[str], Sequence[Any]]

# ARGV: the prefix (unused), the expiry (ms), then a value for each key.
_SET_MANY = Script(
    "for i, key in ipairs(KEYS) do redis.call('SET', key, ARGV[i + 2], 'PX', ARGV[2]) end",
    lambda cache, keys, args: cache.set_many(dict(zip(keys, args[1:], strict=True)), args[0] / 1000),
)


class MemoryCache:
    def __init__(self, prefix: str = "") -> None:
        self._prefix = prefix
        self._values: dict[str, tuple[str, float | None]] = {}
        self._hashes: dict[str, dict[str, str]] = {}
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

    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        return [self.get(key) for key in keys]

    def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        expires = None if ttl_s is None else time.monotonic() + ttl_s
        with self._lock:
            self._values[self._prefix + key] = (value, expires)

    def set_many(self, values: Mapping[str, str], ttl_s: float) -> None:
        for key, value in values.items():
            self.set(key, value, ttl_s)

    def add(self, key: str, value: str, ttl_s: float) -> bool:
        with self._lock:
            if self._live(self._prefix + key) is not None:
                return False
            self._values[self._prefix + key] = (value, time.monotonic() + ttl_s)
            return True

    def delete(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
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

    def hset(self, key: str, field: str, value: str) -> None:
        with self._lock:
            self._hashes.setdefault(self._prefix + key, {})[field] = value

    def hdrain(self, key: str) -> dict[str, str]:
        with self._lock:
            return self._hashes.pop(self._prefix + key, {})

    def batch(self, operations: Sequence[Operation]) -> list[Any]:
        return [getattr(self, name)(*args) for name, *args in operations]

    def run_script(self, script: Script, calls: Sequence[ScriptCall]) -> list[Any]:
        return [script.local(self, keys, args) for keys, args in calls]

    async def run_script_async(self, script: Script, calls: Sequence[ScriptCall]) -> list[Any]:
        return self.run_script(script, calls)  # in process: nothing to wait for

    def ping(self) -> None:
        return None


class RedisCache:
    def __init__(self, url: str, prefix: str = "", timeout_s: float = 2.0) -> None:
        self._prefix = prefix
        self._redis = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._pipes = RedisPipes(self._redis, timeout_s)

    def get(self, key: str) -> str | None:
        return self._redis.get(self._prefix + key)  # type: ignore[return-value]

    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        if not keys:
            return []
        return self._redis.mget([self._prefix + key for key in keys])  # type: ignore[return-value]

    def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        px = None if ttl_s is None else max(1, int(ttl_s * 1000))
        self._redis.set(self._prefix + key, value, px=px)

    def set_many(self, values: Mapping[str, str], ttl_s: float) -> None:
        # One command for thousands of keys: a pipeline's per-command cost in the client is the flush's
        # largest cost at swarm scale.
        if values:
            self.run_script(_SET_MANY, [(list(values), [max(1, int(ttl_s * 1000)), *values.values()])])

    def add(self, key: str, value: str, ttl_s: float) -> bool:
        return bool(self._redis.set(self._prefix + key, value, px=max(1, int(ttl_s * 1000)), nx=True))

    def delete(self, *keys: str) -> None:
        if keys:
            self._redis.delete(*(self._prefix + key for key in keys))

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

    def hset(self, key: str, field: str, value: str) -> None:
        self._redis.hset(self._prefix + key, field, value)

    def hdrain(self, key: str) -> dict[str, str]:
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self._prefix + key)
            pipe.delete(self._prefix + key)
            drained, _ = pipe.execute()
        return drained

    def batch(self, operations: Sequence[Operation]) -> list[Any]:
        with self._redis.pipeline(transaction=False) as pipe:
            for name, key, *args in operations:
                full_key = self._prefix + key
                if name == "get":
                    pipe.get(full_key)
                elif name == "set":
                    value, ttl_s = args
                    pipe.set(full_key, value, px=None if ttl_s is None else max(1, int(ttl_s * 1000)))
                elif name == "incr":
                    pipe.incr(full_key)
                    pipe.pexpire(full_key, max(1, int(args[0] * 1000)), nx=True)
                elif name == "hset":
                    pipe.hset(full_key, *args)
                else:
                    raise ValueError(f"unknown cache operation {name}")
            replies = iter(pipe.execute())
        results = []
        for name, *_ in operations:
            reply = next(replies)
            if name == "incr":
                next(replies)  # the expiry's answer
                reply = int(reply)
            results.append(reply)
        return results

    def run_script(self, script: Script, calls: Sequence[ScriptCall]) -> list[Any]:
        arguments = [self._script_arguments(call) for call in calls]
        try:
            return self._evalsha(script, arguments)
        except redis.exceptions.NoScriptError:  # Redis restarted and forgot it
            self._redis.script_load(script.lua)
            return self._evalsha(script, arguments)

    async def run_script_async(self, script: Script, calls: Sequence[ScriptCall]) -> list[Any]:
        arguments = [self._script_arguments(call) for call in calls]
        replies = await self._pipes.run([("EVALSHA", _sha_of(script.lua), *each) for each in arguments])
        forgotten = [n for n, reply in enumerate(replies) if _is_error(reply, "NOSCRIPT")]
        if forgotten:  # Redis restarted and forgot the script: EVAL gives it again
            again = await self._pipes.run([("EVAL", script.lua, *arguments[n]) for n in forgotten])
            for n, reply in zip(forgotten, again, strict=True):
                replies[n] = reply
        for reply in replies:
            if _is_error(reply):
                raise redis.exceptions.ResponseError(str(reply))
        return replies

    def _script_arguments(self, call: ScriptCall) -> tuple[Any, ...]:
        """EVALSHA's arguments after the script: the key count, the keys prefixed, the prefix, the rest."""
        keys, args = call
        return (len(keys), *(self._prefix + key for key in keys), self._prefix, *args)

    def _evalsha(self, script: Script, arguments: list[tuple[Any, ...]]) -> list[Any]:
        sha = _sha_of(script.lua)
        with self._redis.pipeline(transaction=False) as pipe:
            for each in arguments:
                pipe.evalsha(sha, *each)
            return pipe.execute()

    def ping(self) -> None:
        self._redis.ping()

    def close(self) -> None:
        self._redis.close()


@functools.cache
def _sha_of(lua: str) -> str:
    return hashlib.sha1(lua.encode()).hexdigest()  # the name Redis knows a script by


def _is_error(reply: Any, code: str = "") -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith(code)


def build_cache(settings: Settings) -> Cache:
    if settings.redis_url:
        return RedisCache(settings.redis_url, settings.cache_prefix, settings.readiness_timeout_s)
    return MemoryCache(settings.cache_prefix)


@functools.cache
def get_cache() -> Cache:
    return build_cache(get_settings())
