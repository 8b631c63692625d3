"""Alembic environment: the portal's tables, on SQLite (batch mode) or PostgreSQL."""

from typing import Any

import sqlalchemy as sa

from alembic import context
from portal.config import get_settings
from portal.infra.db import build_engine
from portal.models import metadata
from portal.models.base import UTCDateTime

config = context.config
MIGRATION_LOCK = 0x706F7274616C  # "portal": the advisory lock that serializes migrations on PostgreSQL


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    # Migrations must not depend on app code that may change later: write the plain column type.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def database_url() -> str:
    return config.get_main_option("sqlalchemy.url") or get_settings().sqlalchemy_url


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(), target_metadata=metadata, literal_binds=True, render_item=render_item
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = build_engine(database_url(), poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            render_item=render_item,
            compare_type=True,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Portal processes and the migration Job may start together: one migrates, the others wait
                # and then find the schema at head. A transaction's lock, so it holds through PgBouncer.
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
