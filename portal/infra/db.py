"""Database engine and sessions: SQLite embedded, PostgreSQL (psycopg 3) in production."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlmodel import Session, create_engine

from portal.config import Settings, get_settings


def build_engine(url: str, *, settings: Settings | None = None, **kwargs: Any) -> Engine:
    """An engine for ``url``, pooled as ``settings`` say (by default the process's own)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)
        event.listen(engine, "connect", _tune_sqlite)
        return engine
    settings = settings or get_settings()
    if "poolclass" not in kwargs:
        # Per process: with Redis, Reflex runs several backend workers, and all of them together must stay
        # below PostgreSQL's max_connections (100 by default).
        kwargs = {"pool_size": settings.db_pool_size, "max_overflow": settings.db_pool_overflow} | kwargs
    if settings.db_transaction_pooler:
        # psycopg prepares a statement run 5 times on one connection (prepare_threshold); behind PgBouncer in
        # transaction mode the next run may reach a server connection that never saw it, or one that has it.
        kwargs["connect_args"] = {"prepare_threshold": None} | kwargs.get("connect_args", {})
    return create_engine(url, pool_pre_ping=True, **kwargs)


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the page renders read while a worker thread writes; foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


@functools.cache
def get_engine() -> Engine:
    return build_engine(get_settings().sqlalchemy_url)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error (on the engine of the caller's parts)."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
