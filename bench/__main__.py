"""`make bench`: the portal's hot paths against same-run baselines.

- Credentials: an argon2id password check and a JWT check, against the keyed hash of a token.
- HTTP: /healthz, /readyz and an authenticated /api/v1/me through the whole portal (Reflex + FastAPI on
  granian) against a bare Starlette app on uvicorn, both on loopback, sequential requests over one
  keep-alive connection.
- Landing page data: the network counts query over 10,000 devices and 40,000 GPUs on SQLite, against
  ``SELECT 1`` on the same engine.
- Task round trip: the ping actor through the in-process broker, and through RabbitMQ when it answers.
- Heartbeats (bench/heartbeats.py): a swarm of 10,000 simulated agents beating against ``portal run`` on
  PostgreSQL and Redis, as fast as answered and paced at 3,000 beats a second, straight to the process,
  through HAProxy in front of it and through HAProxy in front of two ``portal run`` processes (the
  two-process figures next to the one-process ones), against the raw Redis SET rate; the CPU per beat of
  the portal, the task worker, HAProxy, Redis and PostgreSQL from /proc. Target: 3,000 beats a second with
  p99 under 50 ms. Skipped when PostgreSQL does not answer.
- Proof of compute (bench/verification.py): one verification round at the simulated size (n=256) and a GPU's
  (n=4096), the agent's side and the portal's, against the matrix product alone.
- Placement (bench/placement.py): ``placement.reserve`` and the whole ``clusters.create`` over 100,000
  devices on PostgreSQL with 32 client threads deploying and terminating: p50, p99, placements per
  second and double bookings (must be 0), against ``SELECT 1`` and a one-row ``UPDATE`` and commit on the
  same engine. Target: p99 under 50 ms. Then at 1,000,000 devices: the candidates query's plan (EXPLAIN
  ANALYZE), the decision alone (``placement.find``) and ``reserve`` with 1 and 32 clients, against the same
  baselines. Target: reserve p99 at most 3x the one-row UPDATE's. Skipped when PostgreSQL does not answer.
- Telemetry (bench/telemetry.py): /metrics with 10,000 devices' GPUs, and a cluster dashboard's query from
  the portal's own store and from Prometheus, next to a bare Prometheus query.
- Settlement (bench/settlement.py): one metering pass over 1,000,000 device-minutes against a bulk insert of
  the same rows; 10,000 provider payouts settled on LiteSVM, batched and unbatched, against the chain alone.
- Self-healing (bench/heal.py): a worker's agent killed under a running 2-node cluster, from the kill to
  ``node_lost`` and from ``node_lost`` to ``running`` again, against deploying one node. Target: 30 s.
- Deploy (bench/deploy.py): deploy request to ``running`` for a 2-device Ray cluster on two local demo
  agents through a real ``portal run``, with its steps from the cluster's events, against the floor of
  starting the same two Ray nodes by hand. Target: at most 0.7x the sequential floor.
- Deploy throughput (bench/deploys.py): 64 customers at once deploying 180 2-GPU clusters through the HTTP
  API of one ``portal run`` on PostgreSQL (a task worker on RabbitMQ), each deploying again once its
  cluster runs, with 372 agents simulated at the protocol level (register, prove, beat, long-poll,
  acknowledge; no Ray): deploys per second and request-to-running p50/p99, the request alone, the CPU per
  deploy and the steps, against the same portal's rate for ``GET /api/v1/me``; then no device booked twice
  and the books balance, before and after every cluster is terminated.
- Overlay certificates (bench/mesh.py): certificates signed per second through ``mesh.certificates.issue``
  for new devices and renewals, against the bare ``nebula-cert sign`` process, and the CPU-seconds an hour
  that keeping 100,000 devices certified costs. Skipped when nebula-cert is not installed (make mesh).
- Overlay on the wire (bench/overlay.py): a TCP stream and one-byte round trips between two namespaces over
  Nebula, against the plain veth path between the same two, same run. Needs root and nebula.
- Deploy on the overlay (bench/mesh_deploy.py): a 2-GPU cluster across two providers behind home NATs on
  the namespaces' small internet (the portal, its overlay node, a lighthouse, real agents and Ray), from
  its creation to ``running``, against the same two Ray nodes started by hand on the overlay (head then
  worker, and both at once). Target: at most 0.7x the sequential floor. Needs root and nebula.
- Isolation (bench/isolation.py): a 2-node Ray cluster, a job and the stop with every node in a Podman
  container (the wipe included), against the same on the host, same run. Target: at most 1.2x. Not measured
  without Podman and mmdebstrap (make containers).
- Data that grows (bench/growth.py): the rows and bytes each table gains in a simulated day of 1,000 devices
  on PostgreSQL (heartbeats, offline episodes, re-verification, rentals deployed, metered and terminated
  through the portal's services), per 1,000 devices and at 100,000 and 1,000,000, against the bytes of a
  one-bigint row.
- Memory (bench/memory.py): the PSS of all of ``portal run``'s processes once it serves with its demo (the
  demo agents shown apart), against a bare one-page Reflex app started by the same command. Target: 300 MiB.

`python -m bench --quick` runs every bench at small sizes, seconds each (bench/sizes.py): it proves that they
run (tests/test_bench_quick.py, in `make test`); its figures are not measurements. Benches named after it
(`python -m bench --quick bench_deploys bench_heartbeats`) run alone, in the order above.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("PORTAL_DATA_DIR", tempfile.mkdtemp(prefix="portal-bench-"))
if "--quick" in sys.argv[1:]:
    os.environ["BENCH_QUICK"] = "1"  # read by bench/sizes.py as the benches are imported below

import httpx
from sqlalchemy import text

from bench.deploy import bench_deploy
from bench.deploys import bench_deploys
from bench.growth import bench_growth
from bench.heal import bench_heal
from bench.heartbeats import bench_heartbeats
from bench.isolation import bench_isolation
from bench.memory import bench_memory
from bench.mesh import bench_mesh
from bench.mesh_deploy import bench_mesh_deploy
from bench.overlay import bench_overlay
from bench.placement import bench_placement
from bench.serving import FailedRequests, free_port, portal_port, wait_until_serving
from bench.settlement import bench_settlement
from bench.sizes import size
from bench.telemetry import bench_telemetry
from bench.verification import bench_verification
from portal.config import PROJECT_ROOT
from portal.infra import migrations
from portal.infra.db import build_engine, session_scope
from portal.models import Device, DeviceState, Gpu, User
from portal.models.base import utcnow
from portal.services.network.network_stats import network_counts

RABBITMQ_URL = os.environ.get("BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")


def timings_ms(action: Callable[[], object], count: int, warmup: int = 20) -> list[float]:
    count, warmup = size(count, max(5, count // 50)), size(warmup, min(warmup, 2))
    for _ in range(warmup):
        action()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def report(name: str, samples: list[float]) -> None:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p95 = ordered[int(len(ordered) * 0.95) - 1]
    print(f"  {name:<44} p50 {p50:8.3f} ms   p95 {p95:8.3f} ms   {1000 / p50:9.0f} /s")


def credentials_in(data_dir: Path) -> tuple[str, str]:
    """A customer in the running portal's database, with an access token (a signed-in session's, as the
    login route issues it) and an API key, signed and hashed with that portal's own secret key."""
    from datetime import timedelta

    from portal.config import Settings
    from portal.infra.cache import MemoryCache
    from portal.models import AuthSession, Role
    from portal.parts import AppParts, in_use
    from portal.security.jwt import issue_access_token
    from portal.security.principal import RequestOrigin
    from portal.services.accounts import api_keys, users

    settings = Settings(data_dir=data_dir)
    engine = build_engine(settings.sqlalchemy_url)
    with in_use(AppParts(settings, engine, MemoryCache())), session_scope(engine) as session:
        user = users.create_user(session, email="bench@example.com", password=None, roles=[Role.CUSTOMER])
        auth_session = AuthSession(user_id=user.id, expires_at=utcnow() + timedelta(days=1))
        session.add(auth_session)
        session.flush()
        roles = {str(role) for role in users.roles_of(session, user.id)}
        access_token, _ = issue_access_token(user.id, auth_session.id, roles)
        _, api_key = api_keys.create_key(
            session, user_id=user.id, name="bench key", scopes=list(api_keys.SCOPES), origin=RequestOrigin()
        )
    engine.dispose()
    return access_token, api_key


def answered(response: httpx.Response) -> httpx.Response:
    if response.status_code != 200:
        raise FailedRequests(f"{response.request.url} answered {response.status_code}: {response.text[:200]}")
    return response


def bench_http() -> None:
    print("HTTP on loopback (500 sequential requests, one keep-alive connection)")
    bin_dir = Path(sys.executable).parent
    data_dir = Path(tempfile.mkdtemp(prefix="portal-bench-http-"))
    port, bare_port = portal_port(), free_port()
    env = {
        **os.environ,
        "PORTAL_DATA_DIR": str(data_dir),
        "PORTAL_PORT": str(port),
        "PORTAL_LOG_LEVEL": "WARNING",
        "PORTAL_RATE_LIMIT_PER_MINUTE": "1000000",
    }
    servers = [
        subprocess.Popen(
            [str(bin_dir / "portal"), "run", "--no-demo"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        ),
        subprocess.Popen(
            [
                str(bin_dir / "uvicorn"),
                "bench.bare_app:app",
                "--port",
                str(bare_port),
                "--log-level",
                "warning",
            ],
            cwd=PROJECT_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        ),
    ]
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/healthz", servers[0])
        wait_until_serving(f"http://127.0.0.1:{bare_port}/healthz", servers[1])
        with httpx.Client() as client:
            report(
                "baseline: bare Starlette /healthz",
                timings_ms(lambda: answered(client.get(f"http://127.0.0.1:{bare_port}/healthz")), 500),
            )
            report(
                "portal /healthz",
                timings_ms(lambda: answered(client.get(f"http://127.0.0.1:{port}/healthz")), 500),
            )
            report(
                "portal /readyz (SQLite, in-process cache)",
                timings_ms(lambda: answered(client.get(f"http://127.0.0.1:{port}/readyz")), 500),
            )
            me = f"http://127.0.0.1:{port}/api/v1/me"
            for label, credential in zip(
                ("JWT access token", "API key"),
                credentials_in(data_dir),
                strict=True,
            ):
                headers = {"Authorization": f"Bearer {credential}"}
                report(
                    f"portal /api/v1/me with a {label}",
                    timings_ms(lambda h=headers: answered(client.get(me, headers=h)), 500),
                )
        import psutil

        root = psutil.Process(servers[0].pid)
        rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20
        print(f"  portal resident memory (all its processes):    {rss:8.0f} MiB")
    finally:
        import signal

        for server in servers:
            with contextlib.suppress(ProcessLookupError):  # a server that failed to start is gone already
                os.killpg(server.pid, signal.SIGINT)
        for server in servers:
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)


def bench_network_counts(devices: int = size(10_000, 200), gpus_per_device: int = 4) -> None:
    print(f"Landing page counts over {devices:,} devices and {devices * gpus_per_device:,} GPUs (SQLite)")
    url = f"sqlite:///{tempfile.mkdtemp(prefix='portal-bench-db-')}/bench.db"
    migrations.upgrade(url)
    engine = build_engine(url)
    states = list(DeviceState)
    with session_scope(engine) as session:
        owner = User(email="bench@example.com")
        session.add(owner)
        session.flush()
        for number in range(devices):
            device = Device(
                owner_id=owner.id,
                name=f"rig-{number}",
                country="DE",
                state=states[number % len(states)],
                token_hash=uuid.uuid4().hex,
                token_prefix="x",
                simulated=bool(number % 2),
                last_heartbeat_at=utcnow(),
            )
            session.add(device)
            session.add_all(
                Gpu(
                    device_id=device.id,
                    index=index,
                    uuid=f"GPU-{number}-{index}",
                    memory_mb=81_920,
                    model=("H100-80GB", "A100-80GB", "RTX-4090")[number % 3],
                    simulated=device.simulated,
                )
                for index in range(gpus_per_device)
            )

    def counts() -> None:
        with session_scope(engine) as session:
            network_counts(session)

    def select_one() -> None:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    report("baseline: SELECT 1", timings_ms(select_one, 200))
    report("network_counts()", timings_ms(counts, 50, warmup=3))
    engine.dispose()


def bench_task_round_trip() -> None:
    print("Task round trip: ping actor sent, run by a worker, pong seen in the cache (200 messages)")
    import dramatiq

    import tasks
    from portal.infra.cache import get_cache
    from portal.services.health import wait_for_pong
    from tasks.ping import ping

    worker = dramatiq.Worker(tasks.broker, worker_threads=1, worker_timeout=50)
    worker.start()
    cache = get_cache()

    def round_trip() -> None:
        token = uuid.uuid4().hex
        ping.send(token)
        wait_for_pong(cache, token, timeout_s=10)

    try:
        report("in-process broker (embedded)", timings_ms(round_trip, 200))
    finally:
        worker.stop()

    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    try:
        rabbit = RabbitmqBroker(url=RABBITMQ_URL, confirm_delivery=True)
        rabbit.declare_actor(ping)
    except Exception as error:  # a benchmark reports a missing service instead of failing
        print(f"  RabbitMQ at {RABBITMQ_URL} not measured: {type(error).__name__}: {error}")
        return
    worker = dramatiq.Worker(rabbit, worker_threads=1, worker_timeout=50)
    worker.start()

    def rabbit_round_trip() -> None:
        token = uuid.uuid4().hex
        rabbit.enqueue(ping.message(token))
        wait_for_pong(cache, token, timeout_s=10)

    try:
        report("RabbitMQ broker (publisher confirms)", timings_ms(rabbit_round_trip, 200))
    finally:
        worker.stop()
        rabbit.close()


def bench_auth() -> None:
    print("Credential checks, in process")
    from portal.security.jwt import decode_access_token
    from portal.security.passwords import hash_password, verify_password
    from portal.security.secrets import keyed_hash

    stored = hash_password("correct horse battery staple")
    report(
        "baseline: keyed hash of a token (HMAC-SHA256)",
        timings_ms(lambda: keyed_hash("gpk_" + "x" * 43), 2000),
    )
    report(
        "password check (argon2id verify)",
        timings_ms(lambda: verify_password(stored, "correct horse battery staple"), 20, warmup=2),
    )

    report(
        "access token decode and check (JWT HS256)", timings_ms(lambda: decode_access_token(token()), 2000)
    )


_token_cache: dict[str, str] = {}


def token() -> str:
    """An access token for the micro-benchmark (no database needed to check one)."""
    if "jwt" not in _token_cache:
        from portal.security.jwt import issue_access_token

        _token_cache["jwt"] = issue_access_token(uuid.uuid4(), uuid.uuid4(), {"customer"})[0]
    return _token_cache["jwt"]


BENCHES = (
    bench_auth,
    bench_network_counts,
    bench_task_round_trip,
    bench_http,
    bench_memory,
    bench_heartbeats,
    bench_verification,
    bench_placement,
    bench_settlement,
    bench_growth,
    bench_deploy,
    bench_deploys,
    bench_heal,
    bench_telemetry,
    bench_mesh,
    bench_overlay,
    bench_mesh_deploy,
    bench_isolation,
)


def main() -> int:
    """Every bench in turn (or those named: ``python -m bench --quick bench_deploys``); one whose requests
    fail says so, the others still run, and the run fails."""
    names = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
    known = [bench.__name__ for bench in BENCHES]
    if set(names) - set(known):
        print(f"no such bench: {', '.join(sorted(set(names) - set(known)))}; the benches: {', '.join(known)}")
        return 2
    failed = []
    for bench in BENCHES:
        if names and bench.__name__ not in names:
            continue
        started = time.monotonic()
        try:
            bench()
        except FailedRequests as error:
            print(f"  FAILED: {error}")
            failed.append(bench.__name__)
        except (Exception, SystemExit) as error:  # a bench that breaks must not stop the others
            traceback.print_exc()
            print(f"  FAILED: {type(error).__name__}: {error}")
            failed.append(bench.__name__)
        print(f"  ({bench.__name__} took {time.monotonic() - started:.0f} s)")
    if failed:
        print(f"make bench: failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
