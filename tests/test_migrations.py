"""Migrations upgrade and downgrade on SQLite and PostgreSQL, and match the models exactly."""

import os
import shutil
import subprocess

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from portal.infra import migrations
from portal.infra.db import build_engine
from portal.models import metadata
from tests.conftest import VENV_BIN

pytestmark = pytest.mark.integration


def table_names(url: str) -> set[str]:
    engine = build_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_creates_every_table_and_downgrade_removes_them(database_url):
    migrations.upgrade(database_url)
    assert table_names(database_url) == set(metadata.tables)
    assert migrations.current_revision(database_url) == migrations.head_revision()

    migrations.downgrade(database_url, "base")
    assert table_names(database_url) == set()
    assert migrations.current_revision(database_url) is None

    migrations.upgrade(database_url)
    assert table_names(database_url) == set(metadata.tables)


def test_the_migrated_schema_matches_the_models(database_url):
    migrations.upgrade(database_url)
    engine = build_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, metadata)
    finally:
        engine.dispose()
    assert differences == [], "the models changed without a migration: run alembic revision --autogenerate"


def test_portal_db_upgrade_command_migrates_postgresql(postgres_url):
    env = {**os.environ, "PORTAL_DATABASE_URL": postgres_url}
    result = subprocess.run(
        [str(VENV_BIN / "portal"), "db", "upgrade"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert f"database at revision {migrations.head_revision()}" in result.stdout
    assert table_names(postgres_url) == set(metadata.tables)

    result = subprocess.run(
        [str(VENV_BIN / "portal"), "db", "downgrade", "base"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert table_names(postgres_url) == set()


def test_a_start_runs_alembic_only_when_the_database_or_the_migration_scripts_moved(tmp_path):
    url = f"sqlite:///{tmp_path / 'portal.db'}"
    stamp = tmp_path / "schema-head"
    assert migrations.upgrade_unless_current(url, stamp)  # a new database
    assert migrations.current_revision(url) == migrations.head_revision()
    assert not migrations.upgrade_unless_current(url, stamp)  # at the recorded head: nothing to run
    migrations.downgrade(url, "-1")
    assert migrations.upgrade_unless_current(url, stamp)
    assert migrations.current_revision(url) == migrations.head_revision()
    versions = tmp_path / "versions"
    shutil.copytree(migrations.VERSIONS, versions)
    assert not migrations.upgrade_unless_current(url, stamp, versions)
    (versions / "0099_next.py").write_text('"""A migration added since."""\n')
    assert migrations.upgrade_unless_current(url, stamp, versions)
