"""The portal through PgBouncer in transaction mode (Debian's pgbouncer, started here on a free port in front
of 127.0.0.1's PostgreSQL), as the production manifests run it.

Many client connections share a few server connections: each transaction may run on another one, so
nothing may outlive a transaction on a server connection. psycopg's prepared statements do
(``PORTAL_DB_TRANSACTION_POOLER`` turns them off); the migrations' advisory lock is a transaction's own.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlmodel import select

from portal.infra import migrations
from portal.infra.db import build_engine, session_scope
from portal.models import Cluster
from portal.services.errors import Conflict
from portal.services.money import ledger
from portal.services.rentals import clusters
from tests.conftest import (
    POSTGRES_ADMIN_URL,
    PROJECT_ROOT,
    VENV_BIN,
    require_program,
    settings_for,
    wait_until,
)
from tests.servers import free_port
from tests.test_clusters import customer_with, market_with, spec

pytestmark = pytest.mark.integration

SERVER_CONNECTIONS = 4  # PgBouncer's default_pool_size: what PostgreSQL sees, however many clients
PROCESSES = 3  # engines, as portal processes would hold them
POOL_SIZE = 8  # each engine's connections: 24 clients in all


@dataclass
class Bouncer:
    url: str  # postgresql+psycopg:// through PgBouncer
    direct_url: str  # the same database, straight to PostgreSQL
    database: str
    log: Path

    def server_connections(self) -> int:
        """PostgreSQL's backends for this database: PgBouncer's server connections."""
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.database,)
            ).fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture
def bouncer(postgres_url: str) -> Iterator[Bouncer]:
    pgbouncer = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    pgbouncer = pgbouncer or require_program("pgbouncer", "pgbouncer")
    database = postgres_url.rsplit("/", 1)[1]
    port = free_port()
    home = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    (home / "users.txt").write_text('"postgres" ""\n')
    (home / "pgbouncer.ini").write_text(
        f"""[databases]
{database} = host=127.0.0.1 port=5432 dbname={database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {home / "users.txt"}
pool_mode = transaction
default_pool_size = {SERVER_CONNECTIONS}
max_client_conn = 500
ignore_startup_parameters = extra_float_digits
logfile = {home / "pgbouncer.log"}
"""
    )
    command = [pgbouncer, str(home / "pgbouncer.ini")]
    if os.geteuid() == 0:
        # PgBouncer refuses to run as root: it drops to nobody, which must read its files and write its log.
        nobody = pwd.getpwnam("nobody")
        for path in [home, *home.iterdir()]:
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        command[1:1] = ["-u", "nobody"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/{database}"

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(
                f"pgbouncer exited: {process.stdout.read().decode() if process.stdout else ''}"
            )
        try:
            psycopg.connect(url.replace("+psycopg", ""), connect_timeout=1).close()
            return True
        except psycopg.OperationalError:
            return False

    try:
        wait_until(answers, timeout_s=15, what="pgbouncer accepting connections")
        yield Bouncer(url, postgres_url, database, home / "pgbouncer.log")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(home, ignore_errors=True)


def peak_while(observe: Callable[[], int], work: Callable[[], None]) -> int:
    """The most ``observe`` saw, sampled every 20 ms, while ``work`` ran."""
    seen = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            seen.append(observe())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        work()
    finally:
        done.set()
        sampler.join()
    return max(seen)


def run_threads(target: Callable[[int], None], count: int) -> None:
    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            target(index)
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def test_portal_processes_started_together_migrate_once_through_pgbouncer(bouncer):
    """Three `portal db upgrade`s at once, as the Job and two portal pods at a rollout: each waits for the
    transaction-level lock, the first migrates, the others find the schema at head."""
    env = {
        **os.environ,
        "PORTAL_DATABASE_URL": bouncer.url,
        "PORTAL_DB_TRANSACTION_POOLER": "true",
    }
    started = time.monotonic()
    upgrades = [
        subprocess.Popen(
            [str(VENV_BIN / "portal"), "db", "upgrade"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=120)[0] for process in upgrades]
    assert [process.returncode for process in upgrades] == [0, 0, 0], outputs
    head = migrations.head_revision()
    assert all(f"database at revision {head}" in output for output in outputs), outputs
    print(f"3 concurrent upgrades through PgBouncer: {time.monotonic() - started:.1f} s")


def test_deploys_and_ledger_writes_from_many_connections_share_a_few_server_connections(bouncer):
    migrations.upgrade(bouncer.direct_url)
    settings = settings_for(db_transaction_pooler=True, db_pool_size=POOL_SIZE, db_pool_overflow=0)
    engines = [build_engine(bouncer.url, settings=settings) for _ in range(PROCESSES)]
    try:
        with session_scope(engines[0]) as session:
            market_with(session, [1] * 12)
            customers = [customer_with(session, 100_000_000) for _ in range(20)]
        outcomes: list[str] = []
        writes_per_client = 15  # past psycopg's prepare_threshold (5) on every connection

        def deploy_and_write(index: int) -> None:
            engine = engines[index % PROCESSES]
            customer = customers[index % len(customers)]
            try:
                with session_scope(engine) as session:
                    clusters.create(session, settings, customer, spec(1))
                outcomes.append("deployed")
            except Conflict as refused:
                outcomes.append(refused.code)
            for write in range(writes_per_client):
                with session_scope(engine) as session:
                    ledger.grant_credits(
                        session,
                        user_id=customer,
                        amount_micro=1,
                        reason="pgbouncer test",
                        idempotency_key=f"pgbouncer:{index}:{write}",
                    )

        clients = PROCESSES * POOL_SIZE
        started = time.monotonic()
        peak = peak_while(bouncer.server_connections, lambda: run_threads(deploy_and_write, clients))
        elapsed = time.monotonic() - started
        assert sorted(outcomes) == ["capacity_short"] * (clients - 12) + ["deployed"] * 12
        assert 1 <= peak <= SERVER_CONNECTIONS, f"{peak} server connections for {clients} clients"
        with session_scope(engines[0]) as session:
            booked = [
                node.device_id
                for cluster in session.exec(select(Cluster)).all()
                for node in clusters.nodes_of(session, cluster.id)
            ]
            assert len(booked) == len(set(booked)) == 12
            assert ledger.verify_books(session) == []
        print(
            f"{clients} clients, {clients} deploys and {clients * writes_per_client} ledger writes through "
            f"PgBouncer in {elapsed:.1f} s on at most {peak} server connections"
        )
    finally:
        for engine in engines:
            engine.dispose()


def test_without_the_setting_prepared_statements_break_behind_transaction_pooling(bouncer):
    """Why PORTAL_DB_TRANSACTION_POOLER exists: with psycopg's default, a statement run five times on a
    connection is prepared on whichever server connection ran it, and is then missing or doubled on others."""
    migrations.upgrade(bouncer.direct_url)
    engine = build_engine(bouncer.url, settings=settings_for(db_pool_size=POOL_SIZE, db_pool_overflow=0))
    failures: list[str] = []

    def query(_: int) -> None:
        deadline = time.monotonic() + 10
        while not failures and time.monotonic() < deadline:
            try:
                with engine.connect() as connection:
                    connection.execute(
                        text("SELECT count(*) FROM users WHERE id = :id"), {"id": uuid.uuid4()}
                    )
                    connection.commit()
            except DBAPIError as error:
                failures.append(type(error.orig).__name__)

    try:
        run_threads(query, POOL_SIZE)
    finally:
        engine.dispose()
    assert failures and set(failures) <= {"InvalidSqlStatementName", "DuplicatePreparedStatement"}, failures
