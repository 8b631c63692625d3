"""Schema migrations, run by ``portal db`` and at start-up; the schema is never made with create_all."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from portal.config import PROJECT_ROOT, get_settings
from portal.infra.db import build_engine

if TYPE_CHECKING:
    from alembic.config import Config

VERSIONS = PROJECT_ROOT / "alembic" / "versions"


# Alembic is imported where used: a start whose database is already current (``upgrade_unless_current``)
# needs none of it.
def alembic_config(url: str | None = None) -> Config:
    from alembic.config import Config

    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "alembic"))
    # ConfigParser treats % as interpolation; URLs may carry %-escaped passwords.
    config.set_main_option("sqlalchemy.url", (url or get_settings().sqlalchemy_url).replace("%", "%%"))
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | None = None, revision: str = "-1") -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def current_revision(url: str | None = None) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = build_engine(url or get_settings().sqlalchemy_url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _scripts_digest(versions: Path = VERSIONS) -> str:
    digest = hashlib.sha256()
    for script in sorted(versions.glob("*.py")):
        digest.update(script.name.encode() + b"\0" + script.read_bytes() + b"\0")
    return digest.hexdigest()


def _revisions_in(url: str) -> str | None:
    engine = build_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars()
            return ",".join(sorted(rows))
    except sa.exc.SQLAlchemyError:  # no schema yet
        return None
    finally:
        engine.dispose()


def upgrade_unless_current(url: str, stamp: Path, versions: Path = VERSIONS) -> bool:
    """Upgrade to head unless the database is at the head that ``stamp`` recorded for these very migration
    scripts (a second start then skips Alembic, about a second); True when it ran the migrations."""
    scripts = _scripts_digest(versions)
    try:
        recorded_scripts, recorded_head = stamp.read_text().split()
    except (OSError, ValueError):
        recorded_scripts = recorded_head = None
    if recorded_scripts == scripts and _revisions_in(url) == recorded_head:
        return False
    upgrade(url)
    head = _revisions_in(url)
    # A read-only data dir keeps no stamp: the next start migrates (a no-op) again.
    if head:
        with contextlib.suppress(OSError):
            stamp.write_text(f"{scripts} {head}\n")
    return True
