"""The portal as the benches at scale run it: `portal run --no-demo` on real PostgreSQL, Redis and RabbitMQ
with a task worker of its own (the periodic tasks and the clusters' steps run there, as at scale), on a
database, a Redis key prefix and a RabbitMQ virtual host of the bench's own, all removed afterwards
(bench/heartbeats.py, bench/deploys.py).

More `portal run` processes join on other ports with the same services and the same secret key: every
process serves the pages built for the first one's port (``PORTAL_PUBLIC_URL``), as processes behind one
balancer do, so a second process does not build them again.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis

from bench.serving import portal_port, wait_until_serving
from portal.config import PROJECT_ROOT
from portal.infra import migrations

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"


def postgres_down() -> str | None:
    """Why PostgreSQL does not answer, or None when it does."""
    try:
        with psycopg.connect(POSTGRES_ADMIN, connect_timeout=3):
            return None
    except psycopg.OperationalError as error:
        return str(error).strip()


def rabbitmq_vhost() -> str | None:
    """A RabbitMQ virtual host of the bench's own (the broker may be shared), or None without rabbitmqctl."""
    vhost = f"portal-bench-{uuid.uuid4().hex[:8]}"
    try:
        subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True, timeout=60)
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return vhost


def forget_cache(prefix: str) -> None:
    """The bench's keys out of the shared Redis."""
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=10_000))
    for start in range(0, len(keys), 10_000):
        client.delete(*keys[start : start + 10_000])
    client.close()


def stop(process: subprocess.Popen) -> None:
    """SIGINT to the process's group (each server here starts one of its own), SIGKILL after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@dataclass
class Stack:
    database: str
    url: str  # SQLAlchemy's
    secret_key: str
    port: int  # the first portal process's, the pages' port
    env: dict[str, str]
    data_dir: Path  # the processes' logs are kept there
    vhost: str | None
    portals: dict[int, subprocess.Popen] = field(default_factory=dict)  # port: process
    worker: subprocess.Popen | None = None

    def _start(self, command: list[str], env: dict[str, str], log: str) -> subprocess.Popen:
        return subprocess.Popen(
            [str(Path(sys.executable).with_name("portal")), *command],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=(self.data_dir / log).open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_worker(self) -> subprocess.Popen | None:
        """The task worker (one process), when RabbitMQ is there; without it the tasks run in the portal."""
        if self.vhost and self.worker is None:
            self.worker = self._start(["worker", "--processes", "1"], self.env, "worker.log")
        return self.worker

    def start_portal(self, port: int | None = None) -> subprocess.Popen:
        """`portal run --no-demo` on ``port`` (the stack's own by default), once it serves its pages too: the
        frontend build would otherwise share the cores with what the bench measures."""
        port = port or self.port
        process = self._start(
            ["run", "--no-demo"], self.env | {"PORTAL_PORT": str(port)}, f"portal-{port}.log"
        )
        self.portals[port] = process
        wait_until_serving(f"http://127.0.0.1:{port}/", process)
        return process

    @property
    def processes(self) -> list[subprocess.Popen]:
        return [*self.portals.values(), *([self.worker] if self.worker else [])]


@contextlib.contextmanager
def portal_stack(extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    """A fresh database (migrated), Redis prefix and RabbitMQ virtual host, and the environment the portal's
    processes get; ``Stack.start_portal`` and ``start_worker`` start them. Everything goes at the end."""
    database = f"portal_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=3) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
    cache_prefix = f"bench-{database}:"
    vhost = rabbitmq_vhost()
    port = portal_port()
    data_dir = Path(tempfile.mkdtemp(prefix="portal-bench-stack-"))
    secret_key = secrets.token_urlsafe(48)
    env = {name: value for name, value in os.environ.items() if not name.startswith("PORTAL_")}
    env |= {
        "PORTAL_DATABASE_URL": url,
        "PORTAL_REDIS_URL": REDIS_URL,
        "PORTAL_SECRET_KEY": secret_key,
        "PORTAL_PORT": str(port),
        # Every process serves the pages built for the first one's port.
        "PORTAL_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "PORTAL_LOG_LEVEL": "WARNING",
        "PORTAL_RATE_LIMIT_PER_MINUTE": "100000000",
        "PORTAL_DATA_DIR": str(data_dir),
        "PORTAL_CACHE_PREFIX": cache_prefix,
        # As behind a balancer in production (README, "Running on real services"): the balancer's
        # X-Forwarded-For names the agent. Straight to the portal, the header is absent.
        "PORTAL_TRUSTED_PROXIES": '["127.0.0.1"]',
    }
    if vhost:
        env["PORTAL_BROKER_URL"] = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    env |= extra_env or {}
    stack = Stack(database, url, secret_key, port, env, data_dir, vhost)
    try:
        migrations.upgrade(url)
        yield stack
    finally:
        for process in stack.processes:
            stop(process)
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        forget_cache(cache_prefix)
        if vhost:
            subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60)
