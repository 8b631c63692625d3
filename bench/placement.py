"""Placement under load: 100,000 and then 1,000,000 devices in PostgreSQL, 32 client threads deploying and
terminating.

Figures (each line: p50 and p99 latency of one operation as a client thread saw it, and operations per
second completed by all 32 threads together over the run's wall time):

- baseline ``SELECT 1``: one query through the same engine and pool (with the pool's pre-ping, two
  round trips), the floor of any query;
- baseline one-row ``UPDATE devices ... WHERE id = ...`` and commit: the floor of any booking (a write
  and a WAL flush);
- ``placement.reserve`` and commit: the candidates query (``FOR UPDATE SKIP LOCKED`` over the hireable
  devices of the model), the packing choice, the conditional booking ``UPDATE`` and the state transitions;
- ``clusters.create`` and commit: all a deploy request does in the database (the cluster row, placement,
  nodes, events and the escrow hold in the ledger);
- both also with one client thread alone (marked "one client"): their own cost, without queuing for the
  cores.

Each deploy asks for a random spec (a model of the mix, 1 to 16 GPUs, a country filter one time in five).
Each client keeps its last four deploys and terminates the oldest, untimed, by putting its devices back
to ``ready`` with one ``UPDATE``, so about 128 deploys hold devices at any time and the pool stays
full. Double bookings are devices booked while another deploy holds them, counted on the client side (a
thread-safe set of the devices currently held); there must be none. Target: placement p99 under 50 ms.

The clients are Python threads on a host with few cores, sharing it with PostgreSQL: the figures are
end-to-end latencies as a portal process would see them, client-side Python time (SQLAlchemy, the GIL)
included, not PostgreSQL's time alone.

Then the same database grows to 1,000,000 devices (COPY, then ANALYZE) and the bench prints the plan of the
candidates query (EXPLAIN ANALYZE: the index it reads, the rows it passes over, its time) for each model and
for the narrowest spec of the mix; placement's decision alone (``placement.find``: the candidates query
without locks and the packing choice) with one client; ``placement.reserve`` with one client and with 32;
and the same baselines under the same load. Target: reserve p99 at most 3x the one-row UPDATE's p99; no
double booking. A third of the devices (every H100 in this seed) set no price and cost their model's list
price, so many devices tie at one price, as in a market where most providers take the list price.

Failed operations and double bookings fail the bench (``FailedRequests``) after its figures are printed.
`python -m bench.placement --quick` runs it at 2,000 and 20,000 devices.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, text, update
from sqlmodel import Session, col

from bench.serving import FailedRequests
from bench.sizes import size
from portal.config import Settings
from portal.infra import migrations
from portal.infra.db import build_engine
from portal.models import Device, DeviceState
from portal.services.errors import Conflict
from portal.services.money import ledger
from portal.services.providers.gpu_catalog import list_price
from portal.services.rentals import clusters, placement

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEVICES = size(100_000, 2_000)
SCALE_DEVICES = size(1_000_000, 20_000)  # the pool the second part places over
PROVIDERS = size(2_000, 50)
THREADS = size(32, 4)
DEPLOYS = size(3_000, 100)
MAX_SECONDS = size(20.0, 5.0)
BASELINE_OPS = size(6_000, 200)
MODELS = ("H100-80GB", "A100-80GB", "RTX-4090-24GB")
GPU_COUNTS_PER_DEVICE = (1, 2, 4, 8)
CLUSTER_GPU_COUNTS = (1, 2, 4, 8, 16)
COUNTRIES = ("DE", "US", "FR", "NL", "GB", "SE", "FI", "PL", "CA", "JP")
TIERS = ("ultra_high", "high", "medium", "low")
CREDIT_MICRO = 10**13
HELD_PER_CLIENT = 4


@dataclass
class Run:
    """What the client threads saw: latencies of the timed operations, failures, double bookings."""

    samples: list[float] = field(default_factory=list)
    short: int = 0  # deploys refused for capacity (not timed as placements)
    errors: list[str] = field(default_factory=list)
    double_bookings: int = 0
    wall_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def rate(self) -> float:
        """Timed operations completed per second, all threads together."""
        return len(self.samples) / self.wall_s if self.wall_s else 0.0


class Holdings:
    """The deploys each client holds, and every device held by some deploy; a device booked while another
    deploy holds it is a double booking.

    A client keeps its last HELD_PER_CLIENT deploys and terminates the oldest when it books another, so
    about THREADS x HELD_PER_CLIENT deploys hold devices at any time: later placements must pass over
    the cheapest devices, and a double booking has a window wide enough to be seen.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._held: set[uuid.UUID] = set()
        self._lock = threading.Lock()
        self._deploys: dict[int, deque[list[uuid.UUID]]] = defaultdict(deque)

    def take(self, client: int, device_ids: list[uuid.UUID]) -> int:
        """Record a deploy's devices, terminate the client's oldest deploy past the limit; returns the
        number of devices that another deploy held."""
        with self._lock:
            doubles = sum(1 for device_id in device_ids if device_id in self._held)
            self._held.update(device_ids)
        deploys = self._deploys[client]
        deploys.append(device_ids)
        if len(deploys) > HELD_PER_CLIENT:
            self.terminate(deploys.popleft())
        return doubles

    def terminate_all(self) -> None:
        for deploys in self._deploys.values():
            while deploys:
                self.terminate(deploys.popleft())

    def terminate(self, device_ids: list[uuid.UUID]) -> None:
        """Terminate a deploy the short way: its devices straight back to ready with one UPDATE (the real
        path, provisioning's stop commands and the agents' answers, is not what this benchmark measures).
        Off the held set first: until the UPDATE commits the devices stay hired, so no one books them."""
        with self._lock:
            self._held.difference_update(device_ids)
        with self.engine.begin() as connection:
            connection.execute(
                update(Device)
                .where(col(Device.id).in_(device_ids))
                .values(state=DeviceState.READY, state_reason="")
            )


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(int(len(ordered) * 0.99) - 1, 0)] if ordered else float("nan")


def line(name: str, run: Run) -> None:
    if run.samples:
        print(
            f"  {name:<44} p50 {statistics.median(run.samples):8.3f} ms   p99 {p99(run.samples):8.3f} ms   "
            f"{run.rate:9.0f} /s"
        )
    else:
        print(f"  {name:<44} no samples")
    if run.errors:
        print(f"    {len(run.errors)} failed, e.g. {run.errors[0]}")


def concurrently(
    step: Callable[[int, random.Random, Run], None], total: int, max_seconds: float, threads: int = THREADS
) -> Run:
    """``step(client, rng, run)`` in ``threads`` threads until ``total`` steps have run or ``max_seconds``
    have passed; ``client`` numbers the thread."""
    run = Run()
    started_steps = 0
    counter = threading.Lock()
    deadline = time.monotonic() + max_seconds

    def client(number: int) -> None:
        nonlocal started_steps
        rng = random.Random(number)
        while time.monotonic() < deadline:
            with counter:
                if started_steps >= total:
                    return
                started_steps += 1
            try:
                step(number, rng, run)
            except Exception as error:  # a benchmark counts failures instead of stopping
                with run.lock:
                    run.errors.append(f"{type(error).__name__}: {error}"[:300])

    clients = [threading.Thread(target=client, args=(number,)) for number in range(threads)]
    began = time.perf_counter()
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    run.wall_s = time.perf_counter() - began
    return run


def seed(url: str, count: int = DEVICES, first: int = 0) -> list[uuid.UUID]:
    """Providers with a payout wallet (the first time) and ``count`` hireable devices numbered from
    ``first``, by COPY, then ANALYZE; returns the new devices' ids.

    Device ``n`` is of model ``n % 3``; a third of the devices (those with ``n % 3 == 0``, so every
    H100) set no price and cost their model's list price: many devices tied at one price, as a market where
    most providers take the list price has.
    """
    import psycopg

    now = datetime.now(UTC)
    rng = random.Random(7 + first)
    providers = [uuid.uuid5(uuid.NAMESPACE_OID, f"bench-provider-{number}") for number in range(PROVIDERS)]
    devices = [uuid.uuid4() for _ in range(count)]
    with psycopg.connect(url.replace("+psycopg", "")) as connection, connection.cursor() as cursor:
        if first == 0:
            with cursor.copy(
                "COPY users (id, email, display_name, wallet_address, is_active, created_at) FROM STDIN"
            ) as copy:
                for number, provider in enumerate(providers):
                    copy.write_row(
                        (
                            provider,
                            f"provider-{number}@bench.example",
                            "",
                            f"wallet-{provider.hex}",
                            True,
                            now,
                        )
                    )
        with cursor.copy(
            "COPY devices (id, owner_id, name, country, connectivity_tier, state, state_reason, "
            "token_hash, token_prefix, price_per_gpu_hour_micro, hourly_price_micro, simulated, gpu_model, "
            "gpu_count, "
            "agent_version, hostname, os, cpu_count, ram_mb, reliability, verified_at, last_heartbeat_at, "
            "ray_state, verification_failures, created_at) FROM STDIN"
        ) as copy:
            for number, device in enumerate(devices, start=first):
                price = None if number % 3 == 0 else rng.randrange(800_000, 4_000_000, 10_000)
                copy.write_row(
                    (
                        device,
                        providers[number % PROVIDERS],
                        f"rig-{number}",
                        COUNTRIES[rng.randrange(len(COUNTRIES))],
                        TIERS[rng.randrange(len(TIERS))],
                        DeviceState.READY.value,
                        "",
                        uuid.uuid4().hex + uuid.uuid4().hex,
                        "gpd_bench",
                        price,
                        price or list_price(MODELS[number % len(MODELS)]),
                        False,
                        MODELS[number % len(MODELS)],
                        GPU_COUNTS_PER_DEVICE[rng.randrange(len(GPU_COUNTS_PER_DEVICE))],
                        "bench",
                        f"host-{number}",
                        "Linux",
                        32,
                        262_144,
                        round(rng.uniform(0.9, 1.0), 3),
                        now,
                        now,
                        "",
                        0,
                        now,
                    )
                )
        cursor.execute("ANALYZE")
    return devices


def customers(engine: Engine, count: int, password: str | None = None) -> list[uuid.UUID]:
    """Customers with ample credit, one per client thread (so escrow holds do not queue on one account);
    with a ``password`` they can sign in (bench/deploys.py), which costs an argon2 hash each."""
    from portal.models import Role
    from portal.services.accounts import users

    ids = []
    with Session(engine, expire_on_commit=False) as session:
        for number in range(count):
            user = users.create_user(
                session, email=f"customer-{number}@bench.example", password=password, roles=[Role.CUSTOMER]
            )
            ledger.grant_credits(
                session,
                user_id=user.id,
                amount_micro=CREDIT_MICRO,
                reason="benchmark credit",
                idempotency_key=f"bench:{user.id}",
            )
            ids.append(user.id)
        session.commit()
    return ids


def random_spec(rng: random.Random) -> placement.Spec:
    countries = tuple(rng.sample(COUNTRIES, rng.randint(1, 3))) if rng.random() < 0.2 else ()
    return placement.Spec(rng.choice(MODELS), rng.choice(CLUSTER_GPU_COUNTS), countries=countries)


def bench_placement() -> None:
    print(
        f"Placement over {DEVICES:,} devices on PostgreSQL ({THREADS} client threads; /s is all threads "
        "together)"
    )
    import psycopg

    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.Error as error:
        print(f"  skipped: PostgreSQL is not reachable on 127.0.0.1:5432 ({type(error).__name__}: {error})")
        return
    name = f"portal_bench_{uuid.uuid4().hex[:12]}"
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    engine: Engine | None = None
    try:
        admin.execute(f'CREATE DATABASE "{name}"')
        migrations.upgrade(url)
        started = time.perf_counter()
        device_ids = seed(url)
        print(
            f"  seeded {PROVIDERS:,} providers and {DEVICES:,} devices by COPY, then ANALYZE, "
            f"in {time.perf_counter() - started:.1f} s"
        )
        engine = build_engine(url, pool_size=40, max_overflow=10)
        with tempfile.TemporaryDirectory(prefix="portal-bench-placement-") as data_dir:
            # A heartbeat interval of 5 min keeps the seeded heartbeats fresh (15 min) for the whole run.
            steps = Steps(engine, Settings(data_dir=Path(data_dir), heartbeat_interval_s=300), device_ids)
            failures = measure(steps)
            # The same database grown to SCALE_DEVICES: the placements above left every device ready.
            print(f"Placement at {SCALE_DEVICES:,} devices, the same database grown by COPY")
            started = time.perf_counter()
            steps.device_ids += seed(url, SCALE_DEVICES - DEVICES, first=DEVICES)
            print(
                f"  seeded {SCALE_DEVICES - DEVICES:,} more devices by COPY, then ANALYZE, "
                f"in {time.perf_counter() - started:.1f} s"
            )
            failures += measure_at_scale(steps)
        if failures:
            raise FailedRequests("; ".join(failures))
    finally:
        if engine is not None:
            engine.dispose()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


class Steps:
    """What the client threads run, each as ``step(client, rng, run)``, timing itself into ``run``."""

    def __init__(self, engine: Engine, settings: Settings, device_ids: list[uuid.UUID]) -> None:
        self.engine, self.settings, self.device_ids = engine, settings, device_ids
        self.holdings = Holdings(engine)
        self._owners: list[uuid.UUID] = []

    @staticmethod
    def timed(run: Run, started: float) -> None:
        sample = (time.perf_counter() - started) * 1000
        with run.lock:
            run.samples.append(sample)

    def select_one(self, client: int, rng: random.Random, run: Run) -> None:
        started = time.perf_counter()
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        self.timed(run, started)

    def update_one(self, client: int, rng: random.Random, run: Run) -> None:
        device_id = rng.choice(self.device_ids)
        started = time.perf_counter()
        with self.engine.begin() as connection:
            connection.execute(update(Device).where(Device.id == device_id).values(state=DeviceState.READY))
        self.timed(run, started)

    def decide(self, client: int, rng: random.Random, run: Run) -> None:
        """Placement's decision alone: the candidates query (no locks) and the packing choice, in a
        transaction that books nothing."""
        spec = random_spec(rng)
        started = time.perf_counter()
        with Session(self.engine) as session:
            chosen = placement.find(session, self.settings, spec)
            session.rollback()
        if chosen is None:
            with run.lock:
                run.short += 1
            return
        self.timed(run, started)

    def _booked(self, client: int, run: Run, sample: float, chosen: list[uuid.UUID]) -> None:
        doubles = self.holdings.take(client, chosen)
        with run.lock:
            run.samples.append(sample)
            run.double_bookings += doubles

    def reserve(self, client: int, rng: random.Random, run: Run) -> None:
        spec = random_spec(rng)
        started = time.perf_counter()
        with Session(self.engine, expire_on_commit=False) as session:
            chosen = placement.reserve(session, self.settings, spec, "benchmark")
            session.commit()
        sample = (time.perf_counter() - started) * 1000
        if chosen is None:
            with run.lock:
                run.short += 1
            return
        self._booked(client, run, sample, [candidate.device_id for candidate in chosen])

    def create(self, client: int, rng: random.Random, run: Run) -> None:
        if not self._owners:
            raise RuntimeError("Steps.create needs customers: call Steps.make_customers first")
        owner = self._owners[client]
        spec = random_spec(rng)
        cluster_spec = clusters.ClusterSpec(
            name="bench",
            gpu_model=spec.gpu_model,
            gpu_count=spec.gpu_count,
            duration_hours=1,
            countries=spec.countries,
        )
        started = time.perf_counter()
        try:
            with Session(self.engine, expire_on_commit=False) as session:
                cluster = clusters.create(session, self.settings, owner, cluster_spec)
                session.commit()
                chosen = [node.device_id for node in clusters.nodes_of(session, cluster.id)]
        except Conflict as refused:
            if refused.code != "capacity_short":
                raise
            with run.lock:
                run.short += 1
            return
        # The node list is read after the commit: not part of the deploy's time.
        sample = (time.perf_counter() - started) * 1000
        self._booked(client, run, sample, chosen)

    def make_customers(self) -> None:
        self._owners = customers(self.engine, THREADS)

    def alone(self, step: Callable[[int, random.Random, Run], None]) -> Run:
        """One client by itself: the operation's own cost, without queuing for the cores."""
        run = concurrently(step, 200, MAX_SECONDS / 4, threads=1)
        self.holdings.terminate_all()
        return run

    def loaded(self, step: Callable[[int, random.Random, Run], None]) -> Run:
        run = concurrently(step, DEPLOYS, MAX_SECONDS)
        self.holdings.terminate_all()
        return run

    def not_ready(self) -> int:
        with Session(self.engine) as session:
            return session.execute(text("SELECT count(*) FROM devices WHERE state <> 'ready'")).scalar_one()


def failures_of(runs: dict[str, Run], where: str) -> list[str]:
    """What must fail the bench: failed operations and double bookings (never figures)."""
    failed = [f"{where}: {len(run.errors)} of '{name}' failed" for name, run in runs.items() if run.errors]
    doubles = sum(run.double_bookings for run in runs.values())
    return failed + ([f"{where}: {doubles} double bookings"] if doubles else [])


def measure(steps: Steps) -> list[str]:
    steps.make_customers()
    runs = {
        "baseline: SELECT 1": concurrently(steps.select_one, BASELINE_OPS, MAX_SECONDS / 2),
        "baseline: one-row UPDATE devices and commit": concurrently(
            steps.update_one, BASELINE_OPS, MAX_SECONDS / 2
        ),
        "placement.reserve and commit, one client": steps.alone(steps.reserve),
        "clusters.create and commit, one client": steps.alone(steps.create),
        "placement.reserve and commit": steps.loaded(steps.reserve),
        "clusters.create and commit (deploy request)": steps.loaded(steps.create),
    }
    for name, run in runs.items():
        line(name, run)
    placements = runs["placement.reserve and commit"], runs["clusters.create and commit (deploy request)"]
    doubles = sum(run.double_bookings for run in runs.values())
    print(
        f"  double bookings (devices held by two deploys at once):  {doubles}"
        f"{'' if doubles == 0 else '   <-- MUST BE 0'}"
    )
    reserved, created = placements
    print(
        f"  refused for capacity: {reserved.short} / {created.short};  errors: {len(reserved.errors)} / "
        f"{len(created.errors)} (reserve / create);  devices left not ready afterwards: {steps.not_ready()}"
    )
    print(
        f"  placements per second, {THREADS} clients: {placements[0].rate:.0f} (reserve), "
        f"{placements[1].rate:.0f} (whole deploy request)"
    )
    print(f"  target: placement p99 under 50 ms; measured {p99(placements[0].samples):.1f} ms")
    print(
        "  (clients are Python threads on this host, sharing its cores with PostgreSQL: latencies are end to "
        "end, client Python time and GIL waits included)"
    )
    return failures_of(runs, f"{DEVICES:,} devices")


def measure_at_scale(steps: Steps) -> list[str]:
    """Placement's decision and booking with the pool at SCALE_DEVICES, against the same baselines under
    the same load (THREADS clients), and the plan PostgreSQL picks for the candidates query."""
    # Each model with a spec every device of it fits, and the narrowest spec of the mix (1 GPU: devices with
    # one; one country): the scan passes over the devices the filters drop.
    for spec in [*(placement.Spec(model, 8) for model in MODELS), placement.Spec(MODELS[0], 1, ("DE",))]:
        print(f"  {explain(steps, spec)}")
    runs = {
        "baseline: SELECT 1": concurrently(steps.select_one, BASELINE_OPS, MAX_SECONDS / 2),
        "baseline: one-row UPDATE devices and commit": concurrently(
            steps.update_one, BASELINE_OPS, MAX_SECONDS / 2
        ),
        "placement.find (the decision), one client": concurrently(
            steps.decide, 200, MAX_SECONDS / 4, threads=1
        ),
        "placement.reserve and commit, one client": steps.alone(steps.reserve),
        "placement.reserve and commit": steps.loaded(steps.reserve),
    }
    for name, run in runs.items():
        line(name, run)
    doubles = sum(run.double_bookings for run in runs.values())
    print(
        f"  double bookings (devices held by two deploys at once):  {doubles}"
        f"{'' if doubles == 0 else '   <-- MUST BE 0'};  devices left not ready: {steps.not_ready()}"
    )
    decided = runs["placement.find (the decision), one client"].samples
    loaded = p99(runs["placement.reserve and commit"].samples)
    updated = p99(runs["baseline: one-row UPDATE devices and commit"].samples)
    print(
        f"  placement decision at {SCALE_DEVICES:,} devices: "
        f"p50 {statistics.median(decided or [float('nan')]):.1f} ms, p99 {p99(decided):.1f} ms (one client); "
        f"reserve p99 with {THREADS} clients {loaded:.1f} ms against the one-row UPDATE's {updated:.1f} ms "
        f"({loaded / updated:.1f}x; target: at most 3x)"
    )
    return failures_of(runs, f"{SCALE_DEVICES:,} devices")


def explain(steps: Steps, spec: placement.Spec) -> str:
    """The plan of ``reserve``'s first candidates query (``FOR UPDATE SKIP LOCKED``) for ``spec``, run
    (EXPLAIN ANALYZE) and rolled back: the indexes it reads and its nodes, top down, with its time."""
    query = placement.candidates_query(steps.settings, spec).with_for_update(of=Device, skip_locked=True)
    with steps.engine.connect() as connection:
        compiled = query.compile(connection, compile_kwargs={"render_postcompile": True})
        plan = connection.exec_driver_sql(
            f"EXPLAIN (ANALYZE, FORMAT JSON) {compiled}", compiled.params
        ).scalar_one()[0]
        connection.rollback()
    nodes: list[str] = []

    def walk(node: dict) -> None:
        name = node["Node Type"]
        if "Index Name" in node:
            name += f" using {node['Index Name']}"
        if node.get("Presorted Key"):
            name += f" (presorted {', '.join(node['Presorted Key'])})"
        rows = f"{node['Actual Rows'] * node['Actual Loops']:,} rows"
        if node.get("Rows Removed by Filter"):
            rows += f", {node['Rows Removed by Filter'] * node['Actual Loops']:,} passed over"
        nodes.append(f"{name} ({rows})")
        for child in node.get("Plans", []):
            walk(child)

    walk(plan["Plan"])
    where = f" in {', '.join(spec.countries)}" if spec.countries else ""
    return (
        f"EXPLAIN ANALYZE, candidates for {spec.gpu_count} x {spec.gpu_model}{where}: "
        f"{plan['Execution Time']:.1f} ms; " + " <- ".join(nodes)
    )


def main() -> None:
    bench_placement()


if __name__ == "__main__":
    main()
