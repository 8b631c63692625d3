"""The parts every adapter works with: settings, database engine, cache, wake-ups, and the follow-ups a
command hands on after its commit.

A process builds them once (``current``), from the settings, or is handed them (``use``: the composition
root, a test, an embedding process), and routes, Reflex state, actors and security all take them from here,
so they share one database and cache. Nothing else reads the global settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Engine

from portal.config import Settings, get_settings
from portal.infra.cache import Cache, get_cache
from portal.infra.db import get_engine
from portal.infra.wakeups import MemoryWakeups, Wakeups, get_wakeups
from portal.services.followups import FollowUps, LeftToPeriodicPasses


@dataclass(frozen=True)
class AppParts:
    settings: Settings
    engine: Engine
    cache: Cache
    wakeups: Wakeups = field(default_factory=MemoryWakeups)
    followups: FollowUps = field(default_factory=LeftToPeriodicPasses)

    @classmethod
    def from_settings(cls) -> AppParts:
        return cls(settings=get_settings(), engine=get_engine(), cache=get_cache(), wakeups=get_wakeups())


_current: AppParts | None = None


def current() -> AppParts:
    """This process's parts: those handed over with ``use``, else built once from the settings."""
    global _current
    if _current is None:
        _current = AppParts.from_settings()
    return _current


def use(chosen: AppParts | None) -> None:
    """Hand this process its parts (None: build them from the settings at the next ``current``)."""
    global _current
    _current = chosen


@contextmanager
def in_use(chosen: AppParts) -> Iterator[AppParts]:
    """``chosen`` are this process's parts for the block (a test's or a bench's), then the previous ones."""
    global _current
    previous, _current = _current, chosen
    try:
        yield chosen
    finally:
        _current = previous
