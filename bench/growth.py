"""Data that grows: the rows and bytes each table gains in a simulated day, per 1,000 devices, and at
100,000 and 1,000,000 devices.

A day of DEVICES devices (4 GPUs each) runs on a fresh PostgreSQL database through the portal's own
services, phase by phase; each phase's gain per table is measured, then scaled to a whole day:

- heartbeats: every device beats every 5 s (``liveness.record``, then ``liveness.flush`` as the lane does,
  the GPU samples stored as in the embedded mode without Prometheus); BEAT_ROUNDS rounds at explicit
  timestamps 5 s apart, scaled to 17,280 a day;
- offline episodes: OFFLINE_SHARE of the devices fall silent once a day (``faults.mark_silent_offline``)
  and come back with their next beat (``liveness.flush``);
- re-verification: every device proves its compute again once a day (``reverify_after_h`` = 24):
  ``verification.start_reverification``, the agent takes and answers the ``verify`` command
  (``commands.take``, ``commands.complete``), and the device is ready again (the proof's arithmetic is not
  run: it writes nothing);
- rentals: every device serves one rental a day, in 8-GPU clusters of two devices: ``clusters.create``
  (placement, escrow hold), ``provisioning.advance`` with simulated agents answering their start commands
  and a head that sees every node, until running; RENTAL_HOURS later the customer terminates, the agents
  answer the stop, the devices go back to ready, the escrow is settled;
- metering: ``metering.meter_clusters`` every ``metering_interval_s`` (30 s) over the rentals' hours,
  METER_PASSES passes at explicit timestamps, scaled to RENTAL_HOURS x 3600 / 30 passes a day.

Rows are counted; bytes are ``pg_total_relation_size`` deltas (heap, indexes and TOAST as PostgreSQL holds
them at the end of the phase, before any vacuum: rows updated in place, like commands, count their dead
versions too). Baseline, same run: the bytes a row of a table of one ``bigint`` column takes (no index), the
floor of any PostgreSQL row. Tables that do not grow with the devices (users, sessions, the audit log, the
network snapshots: they grow with people and minutes) are left out.

`python -m bench.growth --quick` runs it at 40 devices and a few rounds: it proves that it runs.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from solders.keypair import Keypair
from sqlalchemy import Engine, func, text, update
from sqlmodel import Session, col, select

from bench.sizes import size
from portal.config import Settings
from portal.infra import migrations
from portal.infra.cache import MemoryCache
from portal.infra.db import build_engine, session_scope
from portal.infra.wakeups import MemoryWakeups
from portal.models import Cluster, ClusterState, Device, DeviceState, Gpu, Role, metadata
from portal.models.base import utcnow
from portal.services import retention, state_machines
from portal.services.accounts import users
from portal.services.money import ledger, metering
from portal.services.providers import commands, faults, liveness, verification
from portal.services.providers.gpu_catalog import list_price
from portal.services.rentals import clusters, provisioning

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEVICES = size(1_000, 40)
GPUS_PER_DEVICE = 4
DEVICES_PER_PROVIDER = 10
BEAT_ROUNDS = size(60, 4)
BEAT_INTERVAL_S = 5
BEATS_A_DAY = 86_400 // BEAT_INTERVAL_S
OFFLINE_SHARE = 0.05
RENTAL_HOURS = 12
METER_PASSES = size(20, 3)
METERING_INTERVAL_S = 30
MODEL = "H100-80GB"
BASELINE_ROWS = size(100_000, 10_000)
# Rows made once per user, on first use (ledger accounts), not a day's growth.
ONE_OFF = {"ledger_accounts"}


@dataclass
class Gain:
    rows: float = 0.0
    bytes: float = 0.0


def table_sizes(engine: Engine) -> dict[str, tuple[int, int]]:
    """Every portal table's rows and bytes (table, indexes and TOAST) as PostgreSQL holds them now."""
    found = {}
    with engine.connect() as connection:
        for name in metadata.tables:
            rows, size_bytes = connection.execute(
                text(f'SELECT count(*), pg_total_relation_size(\'"{name}"\') FROM "{name}"')
            ).one()
            found[name] = (int(rows), int(size_bytes))
    return found


class Day:
    """Gains of the phases so far, each scaled to a day."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.gains: dict[str, Gain] = {}
        self.phases: list[str] = []

    def measure(self, phase: str, per_day: float, action: Callable[[], None]) -> None:
        """Run ``action`` and add what it wrote, times ``per_day`` (how many such runs a day holds)."""
        before = table_sizes(self.engine)
        started = time.perf_counter()
        action()
        took = time.perf_counter() - started
        after = table_sizes(self.engine)
        rows = 0
        for name, (rows_after, bytes_after) in after.items():
            rows_before, bytes_before = before[name]
            if rows_after > rows_before and name not in ONE_OFF:
                gain = self.gains.setdefault(name, Gain())
                gain.rows += (rows_after - rows_before) * per_day
                gain.bytes += (bytes_after - bytes_before) * per_day
                rows += rows_after - rows_before
        self.phases.append(f"{phase}: {rows:,} rows written in {took:.1f} s, x{per_day:,.1f} for a day")


def seed(engine: Engine) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """DEVICES ready, verified devices of 4 GPUs, their providers with wallets, and customers with credit."""
    now = utcnow()
    with session_scope(engine) as session:
        providers = []
        for number in range(DEVICES // DEVICES_PER_PROVIDER):
            provider = users.create_user(
                session, email=f"p{number}@growth.bench", password=None, roles=[Role.PROVIDER]
            )
            provider.wallet_address = str(Keypair().pubkey())
            providers.append(provider.id)
        customers = []
        for number in range(DEVICES // 20):
            customer = users.create_user(
                session, email=f"c{number}@growth.bench", password=None, roles=[Role.CUSTOMER]
            )
            ledger.grant_credits(
                session,
                user_id=customer.id,
                amount_micro=10**12,
                reason="bench",
                idempotency_key=f"bench:{customer.id}",
            )
            customers.append(customer.id)
        device_ids = []
        for number in range(DEVICES):
            device = Device(
                owner_id=providers[number % len(providers)],
                name=f"rig-{number}",
                country="DE",
                state=DeviceState.READY,
                token_hash=uuid.uuid4().hex,
                token_prefix="x",
                simulated=True,
                gpu_model=MODEL,
                gpu_count=GPUS_PER_DEVICE,
                hourly_price_micro=list_price(MODEL),
                address="127.0.0.1",
                verified_at=now - timedelta(hours=25),
                # One interval before the first round: the first flush sees no gap in the portal's hearing.
                last_heartbeat_at=now - timedelta(seconds=BEAT_INTERVAL_S * BEAT_ROUNDS),
            )
            session.add(device)
            device_ids.append(device.id)
        session.flush()
        session.add_all(
            Gpu(
                device_id=device_id,
                index=index,
                uuid=f"GPU-{device_id}-{index}",
                model=MODEL,
                memory_mb=81_559,
            )
            for device_id in device_ids
            for index in range(GPUS_PER_DEVICE)
        )
    return device_ids, customers


def beat_round(cache: MemoryCache, engine: Engine, device_ids: list[uuid.UUID], now: datetime) -> None:
    """Each device beats once, at ``now``, and the beats are flushed."""
    for device_id in device_ids:
        samples = [
            {"index": index, "util_pct": random.uniform(0, 100), "mem_used_mb": 40_000.0, "temp_c": 61.0,
             "power_w": 350.0}
            for index in range(GPUS_PER_DEVICE)
        ]  # fmt: skip
        liveness.record(cache, device_id, samples=samples, ray={"state": "none"}, now=now, sweep_s=60)
    with session_scope(engine) as session:
        liveness.flush(session, cache)


def keep_alive(engine: Engine) -> None:
    """The agents' beats between the heartbeat phases, as the flush would note them (no samples: those are
    counted in the heartbeat phase), so that placement and healing find the devices online."""
    with session_scope(engine) as session:
        session.execute(update(Device).values(last_heartbeat_at=utcnow()))


def advance_all(engine: Engine, settings: Settings, cluster_ids: list[uuid.UUID], head: Head) -> None:
    """Each cluster's next steps, as its actor takes them."""
    for number, cluster_id in enumerate(cluster_ids):
        if number % 20 == 0:
            keep_alive(engine)
        provisioning.advance(engine, settings, MemoryWakeups(), cluster_id, head)


def offline_count(engine: Engine) -> int:
    with session_scope(engine) as session:
        return len(session.exec(select(Device.id).where(Device.state == DeviceState.OFFLINE)).all())


class Head:
    """The Ray head's state API of every cluster, simulated: it sees each node whose agent said it started."""

    def __init__(self) -> None:
        self.alive: set[str] = set()

    def __call__(self, dashboard_url: str) -> set[str]:
        return self.alive


def answer_commands(engine: Engine, device_ids: list[uuid.UUID], head: Head) -> None:
    """Each device's agent takes its commands and answers them, as ``gpu_pool`` does over the worker API."""
    with session_scope(engine) as session:
        for device_id in device_ids:
            for command in commands.take(session, device_id):
                detail = "stopped"
                if command.kind == "start_ray_head":
                    port = command.payload.get("gcs_port", 6380)
                    detail = json.dumps(
                        {
                            "state": "running",
                            "node_id": str(device_id),
                            "address": f"127.0.0.1:{port}",
                            "client_address": "ray://127.0.0.1:10001",
                            "dashboard_url": "http://127.0.0.1:8265",
                        }
                    )
                elif command.kind == "start_ray_worker":
                    detail = json.dumps({"state": "running", "node_id": str(device_id)})
                elif command.kind == "verify":
                    detail = "proof sent"
                head.alive.add(str(device_id))
                commands.complete(session, device_id, command.id, ok=True, detail=detail)


def bench_growth() -> None:
    print(
        f"Data that grows: a simulated day of {DEVICES:,} devices ({GPUS_PER_DEVICE} GPUs each) on "
        "PostgreSQL, per table"
    )
    import psycopg

    admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    name = f"portal_bench_{uuid.uuid4().hex[:12]}"
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    admin.execute(f'CREATE DATABASE "{name}"')
    engine: Engine | None = None
    try:
        migrations.upgrade(url)
        engine = build_engine(url)
        measure_day(engine)
    finally:
        if engine is not None:
            engine.dispose()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def baseline_bytes_per_row(engine: Engine) -> float:
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE growth_baseline (value bigint NOT NULL)"))
        connection.execute(
            text("INSERT INTO growth_baseline SELECT g FROM generate_series(1, :rows) AS g"),
            {"rows": BASELINE_ROWS},
        )
        size_bytes = connection.execute(text("SELECT pg_total_relation_size('growth_baseline')")).scalar_one()
        connection.execute(text("DROP TABLE growth_baseline"))
    return int(size_bytes) / BASELINE_ROWS


def measure_day(engine: Engine) -> None:
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="portal-bench-growth-")),
        heartbeat_interval_s=BEAT_INTERVAL_S,
        metering_interval_s=METERING_INTERVAL_S,
    )
    baseline = baseline_bytes_per_row(engine)
    device_ids, customers = seed(engine)
    cache, head = MemoryCache(), Head()
    day = Day(engine)

    # The rounds at explicit times 5 s apart, from one interval after the seeded beats up to about now: no
    # pause between them reads as the portal's deafness (a hearing gap), however long the seeding took.
    with session_scope(engine) as session:
        seeded_beat = session.exec(select(func.max(Device.last_heartbeat_at))).one()
    assert seeded_beat is not None
    first = seeded_beat + timedelta(seconds=BEAT_INTERVAL_S)

    def heartbeats() -> None:
        for round_number in range(BEAT_ROUNDS):
            beat_round(cache, engine, device_ids, first + timedelta(seconds=BEAT_INTERVAL_S * round_number))

    day.measure("heartbeats", BEATS_A_DAY / BEAT_ROUNDS, heartbeats)

    # Half the devices fall silent, scaled to OFFLINE_SHARE of them: enough rows to measure. (All of them
    # at once would be the portal's own deafness, which takes no device offline.)
    silent = device_ids[: DEVICES // 2]

    def offline_episodes() -> None:
        with session_scope(engine) as session:
            session.execute(
                update(Device)
                .where(col(Device.id).in_(silent))
                .values(last_heartbeat_at=utcnow() - timedelta(minutes=2))
            )
        moved = faults.OFFLINE_BATCH
        while moved == faults.OFFLINE_BATCH:
            with session_scope(engine) as session:
                moved = faults.mark_silent_offline(session, settings)
        if moved == 0 and not offline_count(engine):
            raise RuntimeError("no silent device went offline")
        # Back with the round after the last (a later one would read as the portal's deafness).
        beat_round(cache, engine, silent, first + timedelta(seconds=BEAT_INTERVAL_S * BEAT_ROUNDS))

    day.measure("offline episodes", OFFLINE_SHARE * DEVICES / len(silent), offline_episodes)

    def reverification() -> None:
        keep_alive(engine)
        with session_scope(engine) as session:
            for device in session.exec(select(Device).where(col(Device.id).in_(device_ids))).all():
                verification.start_reverification(session, device)
        answer_commands(engine, device_ids, head)
        with session_scope(engine) as session:
            for device in session.exec(select(Device).where(col(Device.id).in_(device_ids))).all():
                device.verified_at = utcnow()
                state_machines.move(session, "device", device, DeviceState.READY, "proved its compute again")

    day.measure("re-verification", 1.0, reverification)

    cluster_ids: list[uuid.UUID] = []

    def deploys() -> None:
        spec = clusters.ClusterSpec(
            name="growth", gpu_model=MODEL, gpu_count=2 * GPUS_PER_DEVICE, duration_hours=RENTAL_HOURS + 1
        )
        for number in range(DEVICES // 2):
            if number % 20 == 0:
                keep_alive(engine)
            with session_scope(engine) as session:
                cluster = clusters.create(session, settings, customers[number % len(customers)], spec)
                cluster_ids.append(cluster.id)
        for _ in range(3):  # provisioning, the agents' answers, running
            advance_all(engine, settings, cluster_ids, head)
            answer_commands(engine, device_ids, head)
        advance_all(engine, settings, cluster_ids, head)

    day.measure("rentals: deploy to running", 1.0, deploys)
    with session_scope(engine) as session:
        states = {state for state in session.exec(select(Cluster.state)).all()}
    if states != {ClusterState.RUNNING}:
        raise RuntimeError(f"the rentals did not all run: {states}")
    # As if the rentals had been running for their hours: metering walks through them at explicit times.
    backdate_s = RENTAL_HOURS * 3600
    with session_scope(engine) as session:
        session.execute(
            text(
                "UPDATE clusters SET started_at = started_at - make_interval(secs => :s), "
                "expires_at = expires_at - make_interval(secs => :s)"
            ),
            {"s": backdate_s},
        )
        session.execute(
            text("UPDATE cluster_nodes SET joined_at = joined_at - make_interval(secs => :s)"),
            {"s": backdate_s},
        )
        started_at = session.exec(select(Cluster.started_at)).first()
    assert started_at is not None

    def metering_pass(number: int) -> None:
        with session_scope(engine) as session:
            locked = clusters.lock_clusters(session, cluster_ids)
            metering.meter_clusters(
                session, settings, locked, now=started_at + timedelta(seconds=METERING_INTERVAL_S * number)
            )

    metering_pass(1)  # the first makes each provider's earnings account: once, not every pass

    def metering_passes() -> None:
        for number in range(2, METER_PASSES + 2):
            metering_pass(number)

    passes_a_day = RENTAL_HOURS * 3600 / METERING_INTERVAL_S
    day.measure("metering", passes_a_day / METER_PASSES, metering_passes)

    def terminations() -> None:
        with session_scope(engine) as session:
            for cluster in session.exec(select(Cluster).where(col(Cluster.id).in_(cluster_ids))).all():
                clusters.request_termination(session, cluster, "done for the day")
        advance_all(engine, settings, cluster_ids, head)
        answer_commands(engine, device_ids, head)
        advance_all(engine, settings, cluster_ids, head)

    day.measure("rentals: terminate and settle", 1.0, terminations)
    with Session(engine) as session:
        hired = session.exec(select(Device.id).where(Device.state == DeviceState.HIRED)).all()
        problems = ledger.verify_books(session)
    if hired or problems:
        raise RuntimeError(f"after the day: {len(hired)} devices still hired, books: {problems[:1]}")
    report(day, baseline)
    prune_later(engine, settings)


MONEY_TABLES = ("ledger_transactions", "ledger_entries", "usage_records", "payouts", "deposits")


def prune_later(engine: Engine, settings: Settings) -> None:
    """The retention pass as it would run once the day is past every window (``retention.prune``, batched),
    against one DELETE of as many rows of a one-bigint table; money must not move."""
    before = table_sizes(engine)
    started = time.perf_counter()
    pruned = retention.prune(engine, settings, now=utcnow() + timedelta(days=400), budget_s=3600)
    took = time.perf_counter() - started
    after = table_sizes(engine)
    moved = [name for name in MONEY_TABLES if after[name] != before[name]]
    if moved or pruned.out_of_time:
        raise RuntimeError(f"retention touched money ({moved}) or ran out of time ({pruned.out_of_time})")
    rows = sum(before[name][0] - after[name][0] for name in before)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE prune_baseline (value bigint NOT NULL)"))
        connection.execute(
            text("INSERT INTO prune_baseline SELECT g FROM generate_series(1, :rows) AS g"), {"rows": rows}
        )
    with engine.begin() as connection:
        baseline_started = time.perf_counter()
        connection.execute(text("DELETE FROM prune_baseline"))
        baseline = time.perf_counter() - baseline_started
        connection.execute(text("DROP TABLE prune_baseline"))
    print(
        f"  retention pass 400 days later: {rows:,} rows gone in {took:.1f} s, {pruned.batches:,} "
        f"transactions of at most "
        f"{settings.retention_batch_rows:,} rows; money rows untouched"
    )
    print(f"  baseline: one DELETE of {rows:,} rows of a one-bigint table   {baseline:.2f} s")


def report(day: Day, baseline: float) -> None:
    print(
        f"  assumptions: heartbeat every {BEAT_INTERVAL_S} s ({BEATS_A_DAY:,} a device a day, GPU samples "
        f"in the portal's own store); {OFFLINE_SHARE:.0%} of devices offline once a day; one re-verification "
        f"a device a day; one rental a device a day ({RENTAL_HOURS} h, two {GPUS_PER_DEVICE}-GPU devices a "
        f"cluster: hired {RENTAL_HOURS * 100 // 24}% of the time), metered every {METERING_INTERVAL_S} s"
    )
    for phase in day.phases:
        print(f"  {phase}")
    print(
        f"  baseline: a row of a one-bigint table takes {baseline:.1f} bytes in PostgreSQL "
        f"(pg_total_relation_size / rows, {BASELINE_ROWS:,} rows, no index)"
    )
    per_thousand = 1_000 / DEVICES
    print(
        f"  {'table':<22}{'rows/day/1k dev':>16}{'MB/day/1k':>11}{'B/row':>7}"
        f"{'rows/day 100k':>15}{'GB/day 100k':>12}{'rows/day 1M':>15}{'GB/day 1M':>11}"
    )
    total = Gain()
    for name, gain in sorted(day.gains.items(), key=lambda item: -item[1].bytes):
        rows, size_bytes = gain.rows * per_thousand, gain.bytes * per_thousand
        total.rows += rows
        total.bytes += size_bytes
        print(
            f"  {name:<22}{rows:>16,.0f}{size_bytes / 1e6:>11,.2f}{gain.bytes / gain.rows:>7.0f}"
            f"{rows * 100:>15,.0f}{size_bytes * 100 / 1e9:>12,.2f}"
            f"{rows * 1000:>15,.0f}{size_bytes * 1000 / 1e9:>11,.1f}"
        )
    samples = day.gains.get("gpu_samples", Gain())
    without = (total.bytes - samples.bytes * per_thousand) * 1000 / 1e9
    print(
        f"  growth per day at 1,000,000 devices: {total.bytes * 1000 / 1e9:,.1f} GB with the embedded sample "
        f"store, {without:,.1f} GB with Prometheus keeping the samples "
        f"({total.rows * 1000:,.0f} and {(total.rows - samples.rows * per_thousand) * 1000:,.0f} rows)"
    )


if __name__ == "__main__":
    started = time.monotonic()
    bench_growth()
    print(f"  (bench_growth took {time.monotonic() - started:.0f} s)")
    sys.exit(0)
