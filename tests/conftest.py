"""Shared fixtures: isolated settings, databases on SQLite and PostgreSQL, Redis, RabbitMQ, a running portal.

The real services are the ones on 127.0.0.1 (see RECIPES.md). A test that needs one is skipped when it
does not answer, except under ``CI=true``, where a missing service is a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

# Settings are read once per process: isolate them before any portal module is imported.
for _name in [name for name in os.environ if name.startswith("PORTAL_")]:
    del os.environ[_name]
TEST_DATA_DIR = Path(tempfile.mkdtemp(prefix="portal-tests-"))
os.environ["PORTAL_DATA_DIR"] = str(TEST_DATA_DIR)
os.environ["PORTAL_LOG_FORMAT"] = "text"

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import Engine  # noqa: E402

from portal.api.app import create_api  # noqa: E402
from portal.config import PROJECT_ROOT, Settings  # noqa: E402
from portal.infra import migrations  # noqa: E402
from portal.infra.cache import MemoryCache  # noqa: E402
from portal.infra.db import build_engine  # noqa: E402
from portal.infra.wakeups import MemoryWakeups  # noqa: E402
from portal.parts import AppParts  # noqa: E402
from tasks.followups import TaskFollowUps  # noqa: E402
from tests.containers import podman, worker_image  # noqa: E402, F401 (the isolation tests' fixtures)
from tests.servers import ServerThread, free_port, portal_app  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() == "true"
VENV_BIN = Path(sys.executable).parent
POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
RABBITMQ_HOST = "127.0.0.1"
CHROMIUM = "/usr/bin/chromium"
T = TypeVar("T")


def require_service(name: str, probe: Callable[[], object]) -> None:
    try:
        probe()
    except Exception as error:
        message = f"{name} is not reachable on 127.0.0.1 ({type(error).__name__}: {error})"
        if IN_CI:
            pytest.fail(f"{message}; under CI=true every service must run")
        pytest.skip(message)


def require_program(program: str, debian_package: str) -> str:
    """The path of a program from Debian; skipped when missing, failed under CI=true (make test installs
    it)."""
    found = shutil.which(program)
    if found is None:
        message = f"{program} is not installed (Debian package {debian_package}; make test installs it)"
        if IN_CI:
            pytest.fail(f"{message}; under CI=true every program the tests use must be there")
        pytest.skip(message)
    return found


def run_coroutine(coroutine: object) -> object:
    """Run a coroutine to its end in a thread of its own: the browser tests leave an event loop running in
    this one, where ``asyncio.run`` refuses to start."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def closed_port() -> int:
    """A loopback port nothing listens on (bound and released, so nothing else took it a moment ago)."""
    return free_port()


def wait_until(
    observe: Callable[[], T],
    until: Callable[[T], object] = bool,
    *,
    timeout_s: float = 30,
    every_s: float = 0.1,
    what: str | None = None,
) -> T:
    """Call ``observe`` every ``every_s`` until ``until`` holds for what it returns, and return that; after
    ``timeout_s``, fail saying what was awaited (``what``, else ``observe``'s docstring) and the last value.

    ``wait_until(lambda: row().state == READY)`` waits for a condition;
    ``cluster = wait_until(read_cluster, lambda c: c["state"] == "running")`` waits for a value and keeps it.
    An exception from ``observe`` ends the wait at once: catch inside it what may fail while waiting.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = observe()
        if until(value):
            return value
        if time.monotonic() >= deadline:
            awaited = what or (observe.__doc__ or "").strip() or repr(observe)
            raise AssertionError(f"not within {timeout_s} s: {awaited}; last seen: {value!r:.2000}")
        time.sleep(every_s)


# --- databases -------------------------------------------------------------------------------------


def _postgres_admin() -> object:
    import psycopg

    return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)


@pytest.fixture(scope="session")
def postgres_available() -> None:
    require_service("PostgreSQL", lambda: _postgres_admin().close())


@contextlib.contextmanager
def private_database() -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped when the block ends (for fixtures of any scope)."""
    name = f"portal_test_{uuid.uuid4().hex[:12]}"
    with _postgres_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with _postgres_admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_available: None) -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    with private_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'portal.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")


def _migrated_engine(url: str) -> Iterator[Engine]:
    migrations.upgrade(url)
    engine = build_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on a database migrated to the newest schema, on SQLite and on PostgreSQL."""
    yield from _migrated_engine(database_url)


@pytest.fixture
def postgres_engine(postgres_url: str) -> Iterator[Engine]:
    """The same on PostgreSQL only: for what SQLite does not have (row locks, ``SKIP LOCKED``)."""
    yield from _migrated_engine(postgres_url)


@pytest.fixture
def parts(sqlite_url: str) -> Iterator[AppParts]:
    """The API's parts over a fresh migrated SQLite database and an in-process cache."""
    migrations.upgrade(sqlite_url)
    engine = build_engine(sqlite_url)
    wakeups = MemoryWakeups()
    # Follow-ups go to the task actors as in the portal (the stub broker, unless a test runs a worker).
    yield AppParts(
        settings_for(rate_limit_per_minute=100_000), engine, MemoryCache(), wakeups, TaskFollowUps(wakeups)
    )
    engine.dispose()


@pytest.fixture
def api_client(parts: AppParts) -> Iterator[TestClient]:
    with TestClient(create_api(parts), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def portal_api(parts: AppParts) -> Iterator[tuple[ServerThread, AppParts]]:
    """The API served over loopback, with agents heartbeating every second."""
    fast = AppParts(
        parts.settings.model_copy(update={"heartbeat_interval_s": 1}),
        parts.engine,
        parts.cache,
        parts.wakeups,
    )
    server = ServerThread(portal_app(fast))
    with server:
        yield server, fast


# --- Redis and RabbitMQ ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    require_service("Redis", lambda: redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping())
    return REDIS_URL


@pytest.fixture
def cache_prefix() -> str:
    return f"portal-test:{uuid.uuid4().hex[:10]}:"


@pytest.fixture(scope="session")
def rabbitmq_available() -> None:
    import pika

    def probe() -> None:
        pika.BlockingConnection(
            pika.ConnectionParameters(RABBITMQ_HOST, connection_attempts=1, socket_timeout=3)
        ).close()

    require_service("RabbitMQ", probe)


@contextlib.contextmanager
def private_vhost() -> Iterator[str]:
    """A RabbitMQ virtual host of its own, deleted when the block ends: its queues are nobody else's."""
    vhost = f"portal-test-{uuid.uuid4().hex[:10]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    try:
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
        )
        yield f"amqp://guest:guest@{RABBITMQ_HOST}:5672/{vhost}"
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)


@pytest.fixture(scope="session")
def rabbitmq_url(rabbitmq_available: None) -> Iterator[str]:
    """A RabbitMQ virtual host of its own for this test run, so parallel runs never share queues."""
    with private_vhost() as url:
        yield url


# --- processes -------------------------------------------------------------------------------------


def settings_for(**values: object) -> Settings:
    return Settings(**{"data_dir": TEST_DATA_DIR, **values})  # type: ignore[arg-type]


def stop_process_group(process: subprocess.Popen, sig: int = signal.SIGINT, timeout_s: float = 20) -> None:
    """Stop a process started with ``start_new_session=True`` and everything it started."""
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with contextlib.suppress(ProcessLookupError):  # anything left behind in the group
        os.killpg(process.pid, signal.SIGKILL)


@dataclass
class RunningPortal:
    url: str
    database_url: str
    data_dir: Path
    process: subprocess.Popen
    log: Path


# The port of every ``portal run`` in this session (they run one at a time): the pages built for it at the
# first start are served as they are by the next ones, as after a restart (``portal.frontend_build``).
PORTAL_RUN_PORT = free_port()


def start_portal(
    data_dir: Path, *extra_args: str, env: dict[str, str] | None = None, port: int | None = None
) -> RunningPortal:
    """``portal run`` as a user starts it, on loopback (``PORTAL_RUN_PORT`` unless told ``port``) with its
    own SQLite database."""
    port = port or PORTAL_RUN_PORT
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "portal.log"
    process_env = {
        **os.environ,
        "PORTAL_DATA_DIR": str(data_dir),
        "PORTAL_PORT": str(port),
        **(env or {}),
    }
    process = subprocess.Popen(
        [str(VENV_BIN / "portal"), "run", *extra_args],
        cwd=PROJECT_ROOT,
        env=process_env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def serving() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"portal run exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(url + "/", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(serving, timeout_s=240, every_s=0.5, what=f"portal run serving {url}")
    except AssertionError as error:
        stop_process_group(process)
        raise RuntimeError(f"{error}:\n{log.read_text()[-3000:]}") from None
    return RunningPortal(url, f"sqlite:///{data_dir / 'portal.db'}", data_dir, process, log)


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPortal]:
    running = start_portal(tmp_path_factory.mktemp("portal"), "--no-demo")
    yield running
    stop_process_group(running.process)


# --- browser ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    if not Path(CHROMIUM).exists():
        message = f"Debian's Chromium is not installed at {CHROMIUM} (make browser installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    }
