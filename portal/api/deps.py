"""Dependencies routes declare, as typed aliases so signatures read like sentences."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy import Engine
from sqlmodel import Session

from portal.cache import Cache, get_cache
from portal.config import Settings, get_settings
from portal.db import get_engine, session_scope


def _session() -> Iterator[Session]:
    with session_scope() as session:
        yield session


SessionDep = Annotated[Session, Depends(_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
CacheDep = Annotated[Cache, Depends(get_cache)]
EngineDep = Annotated[Engine, Depends(get_engine)]
