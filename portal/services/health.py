"""Readiness of the parts the portal depends on: database, cache and task broker."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import pika
from sqlalchemy import Engine, text

from portal.config import Settings
from portal.infra.cache import Cache


def check_database(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def check_broker(settings: Settings) -> None:
    if settings.broker_url is None:
        return  # the embedded broker lives in this process
    parameters = pika.URLParameters(settings.broker_url)
    parameters.socket_timeout = settings.readiness_timeout_s
    parameters.blocked_connection_timeout = settings.readiness_timeout_s
    parameters.connection_attempts = 1
    pika.BlockingConnection(parameters).close()


def check_readiness(settings: Settings, engine: Engine, cache: Cache) -> dict[str, str]:
    """``{"database": "ok", "cache": "down: ...", ...}``; every check runs at once, each bounded in time."""
    checks: dict[str, Callable[[], None]] = {
        "database": lambda: check_database(engine),
        "cache": cache.ping,
        "broker": lambda: check_broker(settings),
    }
    deadline = time.monotonic() + settings.readiness_timeout_s
    results: dict[str, str] = {}
    pool = ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="readyz")
    futures = {name: pool.submit(check) for name, check in checks.items()}
    for name, future in futures.items():
        try:
            future.result(timeout=max(0.0, deadline - time.monotonic()))
            results[name] = "ok"
        except FutureTimeout:
            results[name] = f"down: no answer within {settings.readiness_timeout_s:g} s"
        except Exception as error:  # any failure of a dependency means "down", with its reason
            results[name] = f"down: {type(error).__name__}: {str(error)[:200]}"
    # A hung check must not hold the request: its thread is left to finish on its own.
    pool.shutdown(wait=False, cancel_futures=True)
    return results


def record_pong(cache: Cache, token: str) -> None:
    """The task-broker round trip: a worker that ran the ping actor leaves this mark."""
    cache.set(f"ping:{token}", "pong", ttl_s=300)


def wait_for_pong(cache: Cache, token: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    pause = 0.001
    while time.monotonic() < deadline:
        if cache.get(f"ping:{token}") == "pong":
            return True
        time.sleep(pause)
        pause = min(pause * 2, 0.05)  # quick for a fast answer, gentle on the cache for a slow one
    return False
