"""The parts a request works with, and the dependencies routes declare as typed aliases.

The app factory fixes the parts (settings, database engine, cache) on ``app.state``; routes and
middleware take them from there, so a test can build an app over its own database and cache. The small
getters are ``async`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, one hop each.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlmodel import Session

from portal.config import Settings, get_settings
from portal.infra.cache import Cache, get_cache
from portal.infra.db import get_engine, session_scope
from portal.infra.wakeups import MemoryWakeups, Wakeups, get_wakeups


@dataclass(frozen=True)
class AppParts:
    settings: Settings
    engine: Engine
    cache: Cache
    wakeups: Wakeups = field(default_factory=MemoryWakeups)

    @classmethod
    def from_settings(cls) -> AppParts:
        return cls(settings=get_settings(), engine=get_engine(), cache=get_cache(), wakeups=get_wakeups())


async def app_parts(request: Request) -> AppParts:
    return request.app.state.parts


PartsDep = Annotated[AppParts, Depends(app_parts)]


async def _settings(parts: PartsDep) -> Settings:
    return parts.settings


async def _engine(parts: PartsDep) -> Engine:
    return parts.engine


async def _cache(parts: PartsDep) -> Cache:
    return parts.cache


async def _wakeups(parts: PartsDep) -> Wakeups:
    return parts.wakeups


def _session(parts: PartsDep) -> Iterator[Session]:
    with session_scope(parts.engine) as session:
        yield session


# scope="function": the transaction commits before the response is sent, so a client that was told
# "done" reads what was done (the default scope commits only after the response has gone).
SessionDep = Annotated[Session, Depends(_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(_settings)]
CacheDep = Annotated[Cache, Depends(_cache)]
EngineDep = Annotated[Engine, Depends(_engine)]
WakeupsDep = Annotated[Wakeups, Depends(_wakeups)]
