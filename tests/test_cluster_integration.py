"""Clusters on the real services: PostgreSQL, Redis (cache and agent wake-ups) and Dramatiq on RabbitMQ
with `portal worker` processes, two `gpu-pool worker` agents running real Ray nodes.

A task worker killed with SIGKILL while the cluster is provisioning loses nothing: RabbitMQ hands its
unacknowledged messages to the next worker and the reconciler finishes the cluster, booking no device twice.
RabbitMQ closing every connection of the portal's virtual host meanwhile loses no message either.
The portal process restarted while the cluster runs loses no cluster: the agents keep their Ray nodes and
reconnect, and the task workers (which run on) declare no node lost for the portal's own silence. A worker's
machine dying then degrades the cluster, and the task worker killed while healing it leaves the healing to
the next one.
"""

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from solders.keypair import Keypair
from sqlmodel import select

from portal.config import get_settings
from portal.infra import migrations
from portal.infra.cache import RedisCache
from portal.infra.db import build_engine, session_scope
from portal.infra.metrics import actor_runs_key
from portal.models import ClusterNode, CommandState, Device, DeviceCommand, Role
from portal.models.base import utcnow
from portal.security.principal import RequestOrigin
from portal.services.accounts import users
from portal.services.money import ledger
from portal.services.providers import devices
from tests.conftest import PROJECT_ROOT, VENV_BIN, start_portal, stop_process_group, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.integration]
PASSWORD = "integration pass 1"


def start_task_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(VENV_BIN / "portal"), "worker", "--processes", "1", "--threads", "2"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.fixture
def services_env(postgres_url, redis_url, rabbitmq_url, cache_prefix, tmp_path) -> Iterator[dict[str, str]]:
    yield {
        **os.environ,
        "PORTAL_DATABASE_URL": postgres_url,
        "PORTAL_REDIS_URL": redis_url,
        "PORTAL_BROKER_URL": rabbitmq_url,
        "PORTAL_CACHE_PREFIX": cache_prefix,
        "PORTAL_DATA_DIR": str(tmp_path / "data"),
        # The tokens this test makes must hash the same in the portal and worker processes.
        "PORTAL_SECRET_KEY": get_settings().signing_key(),
    }


def drop_broker_connections(vhost: str) -> int:
    """Close every RabbitMQ connection to ``vhost`` from the broker's side (its clients are told at once:
    CONNECTION_FORCED); returns how many."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid", "vhost"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # close_connection takes the connection's process id; its name ("host:port -> host:port") is refused.
    pids = [line.split("\t")[0] for line in listed.splitlines() if line.rstrip().endswith("\t" + vhost)]
    for pid in pids:
        subprocess.run(
            ["rabbitmqctl", "-q", "close_connection", pid, "chaos test"], check=True, capture_output=True
        )
    return len(pids)


def seed(database_url: str) -> tuple[str, list[str]]:
    """A customer with credit, and a provider (with a payout wallet) with three devices; their tokens."""
    migrations.upgrade(database_url)
    engine = build_engine(database_url)
    with session_scope(engine) as session:
        customer = users.create_user(
            session, email="renter@example.com", password=PASSWORD, roles=[Role.CUSTOMER]
        )
        ledger.grant_credits(
            session,
            user_id=customer.id,
            amount_micro=50_000_000,
            reason="test",
            idempotency_key="test-credit",
        )
        provider = users.create_user(session, email="owner@example.com", password=None, roles=[Role.PROVIDER])
        provider.wallet_address = str(Keypair().pubkey())
        tokens = [
            devices.add_device(
                session,
                owner_id=provider.id,
                name=f"rig-{n}",
                country="DE",
                connectivity_tier="high",
                price_per_gpu_hour_micro=None,
                origin=RequestOrigin(),
            )[1]
            for n in range(3)
        ]
    engine.dispose()
    return "renter@example.com", tokens


def test_a_task_worker_killed_mid_provisioning_loses_nothing(services_env, postgres_url, tmp_path):
    email, tokens = seed(postgres_url)
    portal = start_portal(tmp_path / "portal", "--no-demo", env=services_env)
    workers: list[subprocess.Popen] = []
    agents: list[subprocess.Popen] = []
    engine = build_engine(postgres_url)
    cache = RedisCache(services_env["PORTAL_REDIS_URL"], services_env["PORTAL_CACHE_PREFIX"])
    try:
        workers.append(start_task_worker(services_env, tmp_path / "worker-1.log"))
        agents = [
            subprocess.Popen(
                [str(VENV_BIN / "gpu-pool"), "worker", "--portal", portal.url, "--simulate", "1xH100-80GB"],
                env={**os.environ, "GPU_POOL_TOKEN": token},
                stdout=(tmp_path / f"agent-{n}.log").open("wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            for n, token in enumerate(tokens)
        ]

        def ready_devices() -> int:
            with session_scope(engine) as session:
                return sum(d.state == "ready" for d in session.exec(select(Device)).all())

        def ready_or_hired() -> int:
            """Devices whose agent is heard (heartbeating within the last 10 s) and not offline."""
            with session_scope(engine) as session:
                found = session.exec(select(Device)).all()
            fresh = utcnow() - timedelta(seconds=10)
            return sum(d.state in ("ready", "hired") and d.last_heartbeat_at > fresh for d in found)

        def answered_commands() -> bool:
            """Every command sent to an agent so far answered (at least one)."""
            with session_scope(engine) as session:
                states = [c.state for c in session.exec(select(DeviceCommand)).all()]
            return bool(states) and all(s in (CommandState.SUCCEEDED, CommandState.FAILED) for s in states)

        def sweep_runs() -> tuple[int, ...]:
            """How often the task workers have run each sweep that could declare a node lost."""
            return tuple(
                int(cache.get(actor_runs_key(actor, "success")) or 0)
                for actor in ("reconcile_clusters", "mark_silent_devices_offline")
            )

        wait_until(ready_devices, lambda n: n == 3, timeout_s=90)
        api = httpx.Client(base_url=portal.url + "/api/v1", timeout=30)
        token = api.post("/auth/login", json={"email": email, "password": PASSWORD}).json()["access_token"]
        api.headers["Authorization"] = f"Bearer {token}"
        reply = api.post(
            "/clusters",
            json={"name": "resilient", "gpu_model": "H100-80GB", "gpu_count": 2, "duration_hours": 1},
        )
        assert reply.status_code == 202, reply.text
        cluster_id = reply.json()["id"]

        # Kill the only task worker as soon as provisioning has begun; results keep arriving meanwhile.
        wait_until(
            lambda: api.get(f"/clusters/{cluster_id}").json()["state"],
            lambda s: s != "pending",
            timeout_s=30,
            every_s=0.05,
        )
        os.killpg(workers[0].pid, signal.SIGKILL)
        workers[0].wait(timeout=10)
        wait_until(answered_commands, timeout_s=90, what="an agent answering while no task worker runs")
        assert api.get(f"/clusters/{cluster_id}").json()["state"] == "provisioning"
        # The broker drops every connection of this test's virtual host (the portal's publisher among them);
        # other users of the shared broker are left alone, so the broker itself is not restarted.
        assert drop_broker_connections(services_env["PORTAL_BROKER_URL"].rsplit("/", 1)[1]) >= 1

        workers.append(start_task_worker(services_env, tmp_path / "worker-2.log"))
        cluster = wait_until(
            lambda: api.get(f"/clusters/{cluster_id}").json(),
            lambda c: c["state"] in ("running", "failed"),
            timeout_s=120,
        )
        assert cluster["state"] == "running", cluster["events"]
        with session_scope(engine) as session:
            booked = [n.device_id for n in session.exec(select(ClusterNode)).all()]
        assert len(booked) == len(set(booked)) == 2  # never one device twice

        # The portal goes down for longer than three heartbeats and comes back.
        stop_process_group(portal.process)
        time.sleep(25)  # the outage itself (over three 5 s heartbeats): time must pass, nothing to await
        portal = start_portal(
            tmp_path / "portal", "--no-demo", env=services_env, port=int(portal.url.rsplit(":", 1)[1])
        )
        api = httpx.Client(base_url=portal.url + "/api/v1", timeout=30, headers=api.headers)
        wait_until(ready_or_hired, lambda n: n == 3, timeout_s=60)
        # Several passes of the sweeps that could declare a node lost, with every agent heard again.
        heard_at = sweep_runs()
        wait_until(
            sweep_runs,
            lambda runs: all(now >= then + 2 for now, then in zip(runs, heard_at, strict=True)),
            timeout_s=60,
            every_s=0.5,
            what="two passes of each sweep",
        )
        after = api.get(f"/clusters/{cluster_id}").json()
        assert after["state"] == "running", after["events"]
        assert "node_lost" not in [e["kind"] for e in after["events"]]
        assert sorted(n["state"] for n in after["nodes"]) == ["joined", "joined"]

        # The worker's machine dies; once the cluster is degraded the task worker healing it is killed too,
        # and the next one finishes the healing on the spare device.
        worker_device = next(n["device_name"] for n in after["nodes"] if n["role"] == "worker")
        os.killpg(agents[int(worker_device.rsplit("-", 1)[1])].pid, signal.SIGKILL)
        wait_until(
            lambda: api.get(f"/clusters/{cluster_id}").json()["state"],
            lambda s: s == "degraded",
            timeout_s=90,
            every_s=0.1,
        )
        os.killpg(workers[-1].pid, signal.SIGKILL)
        workers[-1].wait(timeout=10)
        workers.append(start_task_worker(services_env, tmp_path / "worker-3.log"))
        healed = wait_until(
            lambda: api.get(f"/clusters/{cluster_id}").json(),
            lambda c: c["state"] == "running" and c["events"][-1]["kind"] == "running",
            timeout_s=120,
        )
        joined = sorted(n["device_name"] for n in healed["nodes"] if n["state"] == "joined")
        assert worker_device not in joined and len(joined) == 2, healed["events"]

        assert api.delete(f"/clusters/{cluster_id}").status_code == 202
        wait_until(
            lambda: api.get(f"/clusters/{cluster_id}").json()["state"],
            lambda s: s == "terminated",
            timeout_s=60,
        )
        wait_until(ready_devices, lambda n: n == 2, timeout_s=60)  # the dead machine's device stays offline
        with session_scope(engine) as session:
            assert ledger.verify_books(session) == []
    finally:
        for process in [*agents, *workers]:
            stop_process_group(process, signal.SIGINT)
        stop_process_group(portal.process)
        engine.dispose()
