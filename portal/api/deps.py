"""The dependencies routes declare as typed aliases, over the parts a request works with.

The app factory fixes the parts (``portal.parts.AppParts``) on ``app.state``; routes and middleware take
them from there, so a test can build an app over its own database and cache. The small
getters are ``async`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, one hop each.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlmodel import Session

from portal.config import Settings
from portal.infra.cache import Cache
from portal.infra.db import session_scope
from portal.infra.wakeups import Wakeups
from portal.parts import AppParts
from portal.services.followups import FollowUps


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


async def _followups(parts: PartsDep) -> FollowUps:
    return parts.followups


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
FollowUpsDep = Annotated[FollowUps, Depends(_followups)]
