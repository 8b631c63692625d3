"""The `portal` command line: admins and demo accounts."""

import os
import subprocess

from sqlmodel import select

from portal.infra import migrations
from portal.infra.db import build_engine, session_scope
from portal.models import AuditLog, Role
from portal.security.passwords import verify_password
from portal.services.accounts import users
from tests.conftest import VENV_BIN


def portal(*args: str, data_dir, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "portal"), *args],
        env={**os.environ, "PORTAL_DATA_DIR": str(data_dir), **env},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def test_portal_admin_create_makes_a_new_admin_or_promotes_an_account(tmp_path):
    url = f"sqlite:///{tmp_path / 'portal.db'}"
    migrations.upgrade(url)
    engine = build_engine(url)
    with session_scope(engine) as session:
        users.create_user(session, email="ops@example.com", password=None, roles=[Role.CUSTOMER])

    created = portal(
        "admin", "create", "root@example.com", data_dir=tmp_path, PORTAL_ADMIN_PASSWORD="a-long-password"
    )
    promoted = portal("admin", "create", "OPS@example.com", data_dir=tmp_path)
    refused = portal("admin", "create", "new@example.com", "--password", "short", data_dir=tmp_path)

    assert created.returncode == 0, created.stderr
    assert "root@example.com is an admin (new account)" in created.stdout
    assert promoted.returncode == 0 and "(existing account)" in promoted.stdout
    assert refused.returncode == 2 and "at least 10 characters" in refused.stderr
    with session_scope(engine) as session:
        root = users.get_user_by_email(session, "root@example.com")
        assert verify_password(root.password_hash, "a-long-password")
        assert users.roles_of(session, root.id) == {Role.ADMIN}
        ops = users.get_user_by_email(session, "ops@example.com")
        assert users.roles_of(session, ops.id) == {Role.ADMIN, Role.CUSTOMER}
        grants = session.exec(select(AuditLog).where(AuditLog.action == "user.admin_grant")).all()
        assert [g.actor_id for g in grants] == ["system:cli", "system:cli"]
        assert users.get_user_by_email(session, "new@example.com") is None
    engine.dispose()


def test_portal_ledger_check_says_whether_the_books_balance(tmp_path):
    from sqlalchemy import text

    from portal.services.money import ledger

    url = f"sqlite:///{tmp_path / 'portal.db'}"
    migrations.upgrade(url)
    engine = build_engine(url)
    with session_scope(engine) as session:
        user = users.create_user(session, email="payer@example.com", password=None, roles=[Role.CUSTOMER])
        ledger.grant_credits(
            session, user_id=user.id, amount_micro=5_000_000, reason="t", idempotency_key="g1"
        )
    balanced = portal("ledger", "check", data_dir=tmp_path)
    assert balanced.returncode == 0 and "The books balance" in balanced.stdout
    with session_scope(engine) as session:  # a cached balance that the entries do not support
        session.execute(text("UPDATE ledger_accounts SET balance_micro = balance_micro + 1"))
    broken = portal("ledger", "check", data_dir=tmp_path)
    assert broken.returncode == 1 and "entries say" in broken.stderr
    engine.dispose()


def test_portal_run_starts_a_web_worker_a_core_and_one_more_with_redis_and_one_without(monkeypatch):
    from portal.cli.main import reflex_environment
    from tests.conftest import settings_for

    monkeypatch.delenv("GRANIAN_WORKERS", raising=False)
    with_redis = settings_for(redis_url="redis://127.0.0.1:6379/0")
    assert reflex_environment(with_redis)["GRANIAN_WORKERS"] == str((os.cpu_count() or 1) + 1)
    # Without Redis, Reflex keeps state in its one process, and so does the portal's cache.
    assert "GRANIAN_WORKERS" not in reflex_environment(settings_for(redis_url=None))
    monkeypatch.setenv("GRANIAN_WORKERS", "7")  # an operator's choice stands
    assert reflex_environment(with_redis)["GRANIAN_WORKERS"] == "7"
