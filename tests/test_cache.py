"""The cache behaves the same on Redis and in process."""

import asyncio
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import uvloop

from portal.infra.cache import Cache, MemoryCache, RedisCache, Script


@pytest.fixture(params=["memory", "redis"])
def cache(request, cache_prefix) -> Cache:
    if request.param == "memory":
        return MemoryCache(cache_prefix)
    return RedisCache(request.getfixturevalue("redis_url"), cache_prefix)


def test_values_are_stored_and_deleted(cache):
    assert cache.get("greeting") is None
    cache.set("greeting", "hello")
    assert cache.get("greeting") == "hello"
    cache.delete("greeting")
    assert cache.get("greeting") is None


def test_many_values_are_set_read_and_deleted_in_one_step(cache):
    assert cache.get_many([]) == []
    cache.set_many({f"gpu:{n}": str(n * n) for n in range(2000)}, ttl_s=0.3)
    cache.set("other", "kept")
    assert cache.get_many(["gpu:3", "missing", "gpu:1999"]) == ["9", None, str(1999 * 1999)]
    cache.delete("gpu:3", "gpu:4", "missing")
    assert cache.get_many(["gpu:3", "gpu:4", "gpu:5", "other"]) == [None, None, "25", "kept"]
    cache.delete()  # nothing to delete is no error
    time.sleep(0.45)  # expiry on the store's clock: every key set together expires together; the others stay
    assert cache.get_many(["gpu:5", "gpu:1999", "other"]) == [None, None, "kept"]


def test_a_one_time_value_can_be_taken_once(cache):
    cache.set("nonce", "abc", ttl_s=5)
    assert cache.take("nonce") == "abc"
    assert cache.take("nonce") is None
    assert cache.get("nonce") is None


def test_values_expire_after_their_ttl(cache):
    cache.set("short", "lived", ttl_s=0.2)
    assert cache.get("short") == "lived"
    time.sleep(0.35)  # expiry is the point: the TTL runs on the store's clock (Redis's too), not the test's
    assert cache.get("short") is None


def test_counters_count_within_a_window_and_restart_after_it(cache):
    assert [cache.incr("hits", ttl_s=0.3) for _ in range(3)] == [1, 2, 3]
    time.sleep(0.45)  # the window must pass on the store's clock, which the test cannot move
    assert cache.incr("hits", ttl_s=0.3) == 1


def test_a_hash_keeps_the_newest_value_per_field_and_drains_once(cache):
    assert cache.hdrain("beats") == {}
    cache.hset("beats", "a", "1")
    cache.hset("beats", "b", "2")
    cache.hset("beats", "a", "3")
    assert cache.hdrain("beats") == {"a": "3", "b": "2"}
    assert cache.hdrain("beats") == {}


def test_a_batch_runs_every_operation_and_answers_in_order(cache):
    cache.set("seen", "yes")
    results = cache.batch(
        [
            ("get", "seen"),
            ("set", "new", "1", 5),
            ("incr", "count", 5),
            ("incr", "count", 5),
            ("hset", "h", "f", "v"),
        ]
    )
    assert results[0] == "yes" and results[2:4] == [1, 2]
    assert cache.get("new") == "1" and cache.hdrain("h") == {"f": "v"}


def test_prefixes_keep_two_portals_apart(cache_prefix):
    first, second = MemoryCache(cache_prefix + "a:"), MemoryCache(cache_prefix + "b:")
    first.set("key", "first")
    assert second.get("key") is None


def test_redis_prefixes_keep_two_portals_apart(redis_url, cache_prefix):
    first, second = RedisCache(redis_url, cache_prefix + "a:"), RedisCache(redis_url, cache_prefix + "b:")
    first.set("key", "first", ttl_s=5)
    assert second.get("key") is None
    assert first.get("key") == "first"


def test_an_unreachable_redis_fails_its_ping(cache_prefix):
    from tests.conftest import closed_port

    with pytest.raises(Exception, match=r"[Cc]onnect"):
        RedisCache(f"redis://127.0.0.1:{closed_port()}/0", cache_prefix, timeout_s=0.5).ping()


def test_add_sets_only_a_missing_value(cache):
    assert cache.add("once", "first", ttl_s=5) is True
    assert cache.add("once", "second", ttl_s=5) is False
    assert cache.get("once") == "first"


COUNT_AND_ECHO = Script(
    "return {redis.call('INCR', KEYS[1]), ARGV[2]}",
    lambda cache, keys, args: [cache.incr(keys[0], 60), args[0]],
)


def in_a_loop_of_its_own(work: Callable[[], Coroutine[Any, Any, Any]], run: Callable = asyncio.run) -> Any:
    """A fresh event loop in a thread of its own: the browser tests' loop may be running in this one."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(run, work()).result()


def test_scripts_run_from_an_event_loop_answer_each_batch_in_order(cache):
    async def three_batches_at_once() -> list[list[Any]]:
        return await asyncio.gather(
            *(
                cache.run_script_async(COUNT_AND_ECHO, [(["hits"], [f"{batch}.{n}"]) for n in range(size)])
                for batch, size in enumerate((3, 1, 50))
            )
        )

    first, second, third = in_a_loop_of_its_own(three_batches_at_once)
    assert first == [[1, "0.0"], [2, "0.1"], [3, "0.2"]] and second == [[4, "1.0"]]
    assert third == [[5 + n, f"2.{n}"] for n in range(50)]
    assert cache.run_script(COUNT_AND_ECHO, [(["hits"], ["sync"])]) == [[55, "sync"]]


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])  # uvloop: the server's
def test_a_lost_redis_connection_fails_its_waiters_and_the_next_call_connects_again(
    redis_url, cache_prefix, run
):
    cache = RedisCache(redis_url, cache_prefix)
    admin = redis.Redis.from_url(redis_url)

    async def lose_the_connection() -> tuple[list[Any], list[Any]]:
        (client_id,) = await cache._pipes.run([("CLIENT", "ID")])
        before = await cache.run_script_async(COUNT_AND_ECHO, [(["hits"], ["before"])])
        admin.client_kill_filter(_id=client_id)
        await asyncio.sleep(0.1)  # the pipe learns that the connection is gone
        return before, await cache.run_script_async(COUNT_AND_ECHO, [(["hits"], ["after"])])

    assert in_a_loop_of_its_own(lose_the_connection, run) == ([[1, "before"]], [[2, "after"]])


def test_an_unreachable_redis_fails_a_script_run_from_an_event_loop(cache_prefix):
    from tests.conftest import closed_port

    cache = RedisCache(f"redis://127.0.0.1:{closed_port()}/0", cache_prefix, timeout_s=0.5)
    with pytest.raises(redis.exceptions.ConnectionError, match="unreachable"):
        in_a_loop_of_its_own(lambda: cache.run_script_async(COUNT_AND_ECHO, [(["hits"], ["x"])]))


def test_scripts_run_from_an_event_loop_use_the_urls_database(redis_url, cache_prefix):
    other_database = redis_url.rsplit("/", 1)[0] + "/1"
    cache = RedisCache(other_database, cache_prefix)
    in_a_loop_of_its_own(lambda: cache.run_script_async(COUNT_AND_ECHO, [(["hits"], ["x"])]))
    assert cache.get("hits") == "1"  # the sync client reads database 1 too
    assert RedisCache(redis_url, cache_prefix).get("hits") is None
    cache.delete("hits")


def test_a_script_runs_again_once_redis_has_forgotten_it(redis_url, cache_prefix):
    cache = RedisCache(redis_url, cache_prefix)
    assert cache.run_script(COUNT_AND_ECHO, [(["hits"], ["first"])]) == [[1, "first"]]
    redis.Redis.from_url(redis_url).script_flush()  # as a Redis restart does
    assert cache.run_script(COUNT_AND_ECHO, [(["hits"], ["sync"])]) == [[2, "sync"]]
    redis.Redis.from_url(redis_url).script_flush()
    replies = in_a_loop_of_its_own(lambda: cache.run_script_async(COUNT_AND_ECHO, [(["hits"], ["async"])]))
    assert replies == [[3, "async"]]
