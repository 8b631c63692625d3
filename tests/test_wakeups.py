"""Wake-ups end a device's long-poll at once, in process and through Redis, and only that device's."""

import asyncio
import threading

import pytest

from portal.infra.wakeups import MemoryWakeups, RedisWakeups
from tests.conftest import run_coroutine


@pytest.fixture(params=["memory", "redis"])
def wakeups(request, cache_prefix):
    if request.param == "memory":
        return MemoryWakeups()
    return RedisWakeups(request.getfixturevalue("redis_url"), cache_prefix)


def test_a_notification_wakes_the_listener_of_that_key_only(wakeups):
    async def scenario() -> tuple[bool, bool, float]:
        async with wakeups.listen("device-1") as mine, wakeups.listen("device-2") as other:
            # Notified from another thread, as a task worker or a request handler would.
            threading.Timer(0.2, wakeups.notify, args=["device-1"]).start()
            loop = asyncio.get_running_loop()
            started = loop.time()
            woke = await mine.wait(5)
            elapsed = loop.time() - started
            other_woke = await other.wait(0.3)
        return woke, other_woke, elapsed

    woke, other_woke, elapsed = run_coroutine(scenario())
    assert woke and elapsed < 1.5
    assert not other_woke


def test_without_a_notification_the_wait_times_out(wakeups):
    async def scenario() -> bool:
        async with wakeups.listen("quiet") as listener:
            return await listener.wait(0.3)

    assert run_coroutine(scenario()) is False
