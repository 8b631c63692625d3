"""A swarm of simulated agents heartbeating against the portal on real PostgreSQL and Redis, straight to
one `portal run` and through HAProxy in front of that same process.

`python -m bench.heartbeats [--devices 10000] [--seconds 20] [--concurrency 256] [--rate 3000] [--quick]`
starts `portal run` on a fresh PostgreSQL database with Redis, a task worker on RabbitMQ, and Debian's HAProxy
in front of the portal (bench/haproxy.py, the configuration tests/test_multi_process.py runs), and creates
the devices. Cycling through every device over `concurrency` connections, it beats as fast as the portal
answers (the sustained rate) and paced at `rate` beats a second (the latency a swarm of that size sees,
timed after 10 s at that pace), first straight to the portal, then through HAProxy, and prints heartbeats
per second with p50 and p99 latency for each, next to the raw Redis SET rate of this machine measured in
the same run (redis-benchmark).

Over each timed window it reads the CPU time of the servers' processes from /proc (bench/cpu.py: utime +
stime, children included): the `portal run` process group (its web workers), the task worker, HAProxy,
Redis (the whole server: shared, anything else it serves counts too), PostgreSQL (the backends serving the
bench's database: a shared server's other work is left out), and the load generator itself (this
process), and prints each per heartbeat answered, with the cores the host's other processes kept busy
meanwhile (/proc/stat: a shared host's neighbours). The load generator shares the host's cores with the
servers: the rates are what this host does with it running, the CPU per beat is the servers' alone.
Without HAProxy (make haproxy) the runs through it are not measured, and the bench says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import redis
import uvloop

from bench.cpu import CpuMeter, named, only, per_event_ms, postgres_serving, process_tree
from bench.haproxy import Balancer, haproxy_program, start_haproxy
from bench.serving import FailedRequests, free_port, portal_port, wait_until_serving
from bench.sizes import size
from portal.config import PROJECT_ROOT
from portal.infra import migrations
from portal.infra.db import build_engine

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
SETTLE_S = size(10, 1)


def redis_baseline() -> str:
    try:
        out = subprocess.run(
            [
                "redis-benchmark",
                "-h",
                "127.0.0.1",
                "-t",
                "set",
                "-n",
                str(size(200_000, 5_000)),
                "-c",
                "50",
                "-q",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"redis-benchmark unavailable ({error})"
    match = re.search(r"SET: ([\d.]+) requests per second", out)
    return f"{float(match.group(1)):,.0f} SET/s (redis-benchmark, 50 clients)" if match else out.strip()


def create_devices(url: str, count: int, secret_key: str) -> list[str]:
    """``count`` devices with known tokens, inserted in bulk (hashed with the benched portal's key, not
    whatever parts this process had: inside ``make bench`` an earlier bench built them)."""
    from pydantic import SecretStr

    from portal.config import Settings
    from portal.infra.cache import MemoryCache
    from portal.parts import AppParts, in_use
    from portal.security.secrets import DEVICE_TOKEN_PREFIX, keyed_hash, new_token

    engine = build_engine(url)
    owner = uuid.uuid4()
    tokens = [new_token(DEVICE_TOKEN_PREFIX) for _ in range(count)]
    portal_parts = AppParts(Settings(secret_key=SecretStr(secret_key)), engine, MemoryCache())
    with in_use(portal_parts), engine.begin() as connection:
        raw = connection.connection.driver_connection
        with raw.cursor() as cursor:
            cursor.execute(
                "INSERT INTO users (id, email, display_name, is_active, created_at)"
                " VALUES (%s, %s, 'bench', true, now())",
                (owner, "bench@example.com"),
            )
            with cursor.copy(
                "COPY devices (id, owner_id, name, country, connectivity_tier, state, state_reason,"
                " token_hash, token_prefix, simulated, agent_version, hostname, os, cpu_count, ram_mb,"
                " reliability, ray_state, verification_failures, created_at) FROM STDIN"
            ) as copy:
                for number, token in enumerate(tokens):
                    copy.write_row(
                        (
                            uuid.uuid4(),
                            owner,
                            f"rig-{number}",
                            "DE",
                            "high",
                            "ready",
                            "",
                            keyed_hash(token),
                            token[:12],
                            True,
                            "bench",
                            "",
                            "",
                            0,
                            0,
                            1.0,
                            "",
                            0,
                            "2026-01-01T00:00:00Z",
                        )
                    )
    engine.dispose()
    return tokens


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
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def heartbeat_request(host: str, port: int, token: str, body: bytes) -> bytes:
    return (
        f"POST /api/v1/worker/heartbeat HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


class _Connection(asyncio.Protocol):
    """One keep-alive connection that reads each response by its Content-Length, with no stream or task
    per request: the load generator shares the portal's cores, so its cost per beat must stay small."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.answered: asyncio.Future[int] | None = None

    def expect(self) -> asyncio.Future[int]:
        self.answered = asyncio.get_running_loop().create_future()
        return self.answered

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        length = re.search(rb"(?i)content-length: *(\d+)", self.buffer[:end])
        size = end + 4 + (int(length.group(1)) if length else 0)
        if len(self.buffer) >= size and self.answered is not None and not self.answered.done():
            self.answered.set_result(int(self.buffer[9:12]))
            del self.buffer[:size]

    def connection_lost(self, error: Exception | None) -> None:
        if self.answered is not None and not self.answered.done():
            self.answered.set_exception(ConnectionError("the portal closed the connection"))


async def swarm(
    host: str,
    port: int,
    tokens: list[str],
    seconds: float,
    concurrency: int,
    rounds: int | None = None,
    rate: float | None = None,
    meter: CpuMeter | None = None,
) -> tuple[int, list[float], dict[int | str, int]]:
    """Heartbeats over ``concurrency`` keep-alive connections, cycling through the devices: as fast as the
    portal answers (each connection sends its next beat when the last is answered), or paced at ``rate``
    beats a second, as a swarm beats. Paced, a beat's latency counts from when it was due, so a beat that
    waited for a free connection counts its wait. A ``meter`` is started as the first beat goes out and
    stopped as the last is answered.

    The load generator writes prepared request bytes (``_Connection``) on uvloop: a general HTTP client
    (httpx) spends more CPU per request than the portal does and would measure itself, and the generator
    shares the portal's cores here where a real swarm beats from its own machines.
    """
    body = json.dumps(
        {
            "gpus": [{"index": 0, "util_pct": 50, "mem_used_mb": 1000, "temp_c": 60, "power_w": 300}],
            "ray": {"state": "none"},
        }
    ).encode()
    requests = [heartbeat_request(host, port, token, body) for token in tokens]
    latencies: list[float] = []
    errors: dict[int | str, int] = {}
    first = time.perf_counter()
    deadline = first + seconds
    next_token = 0

    async def agent() -> None:
        nonlocal next_token
        loop = asyncio.get_running_loop()
        transport, connection = await loop.create_connection(_Connection, host, port)
        try:
            while time.perf_counter() < deadline and (rounds is None or next_token < rounds * len(requests)):
                index = next_token
                next_token += 1
                request = requests[index % len(requests)]
                started = time.perf_counter()
                if rate is not None:
                    started = first + index / rate  # when this beat is due
                    if started > deadline:
                        return
                    await asyncio.sleep(max(0.0, started - time.perf_counter()))
                answered = connection.expect()
                transport.write(request)
                try:
                    status: int | str = await asyncio.wait_for(answered, 30)
                except (TimeoutError, ConnectionError) as error:
                    status = type(error).__name__
                latencies.append((time.perf_counter() - started) * 1000)
                if status != 200:
                    errors[status] = errors.get(status, 0) + 1
                    if not isinstance(status, int):
                        return
        finally:
            transport.close()

    if meter is not None:
        meter.start()
    started = time.perf_counter()
    await asyncio.gather(*(agent() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    if meter is not None:
        meter.stop()
    return round(len(latencies) / elapsed), latencies, errors


LOAD_GENERATOR = "load generator"


def cpu_line(meter: CpuMeter, beats: int) -> str:
    """The servers' CPU per beat answered, each group's and their sum, and the load generator's apart."""
    per_beat = per_event_ms(meter.seconds, beats)
    servers = {name: ms for name, ms in per_beat.items() if name != LOAD_GENERATOR}
    return (
        "CPU per heartbeat: "
        + ", ".join(f"{name} {ms:.3f} ms" for name, ms in servers.items())
        + f"; servers {sum(servers.values()):.3f} ms (load generator {per_beat[LOAD_GENERATOR]:.3f} ms; "
        f"other processes on this host kept {meter.others_cores:.2f} of its {os.cpu_count()} cores busy)"
    )


def bench_heartbeats(
    devices: int = size(10_000, 300),
    seconds: float = size(20, 2),
    concurrency: int = size(256, 16),
    rate: float = size(3_000, 300),
) -> None:
    database = f"portal_bench_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'CREATE DATABASE "{database}"')
    except psycopg.OperationalError as error:
        print(f"Heartbeat swarm not measured: PostgreSQL does not answer ({error})")
        return
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
    secret_key = secrets.token_urlsafe(48)
    port = portal_port()
    cache_prefix = f"bench-{database}:"
    # As at scale: the periodic tasks (fault sweeps, reliability, metering) run in a task worker of their own
    # on RabbitMQ, not in threads of the web workers that answer the beats.
    vhost = rabbitmq_vhost()
    haproxy = haproxy_program()
    processes: list[subprocess.Popen] = []
    balancer: Balancer | None = None
    try:
        print(
            f"Heartbeat swarm: {devices:,} simulated agents, PostgreSQL, Redis"
            + (" and RabbitMQ (one task worker)" if vhost else " (tasks in process: no rabbitmqctl)")
            + " on 127.0.0.1; straight to one portal process and through HAProxy in front of it"
        )
        print(f"  baseline: raw Redis writes: {redis_baseline()}")
        migrations.upgrade(url)
        started = time.perf_counter()
        tokens = create_devices(url, devices, secret_key)
        print(f"  devices created in {time.perf_counter() - started:.1f} s")
        data_dir = tempfile.mkdtemp()
        server_log = Path(data_dir, "portal.log")
        env = {
            **os.environ,
            "PORTAL_DATABASE_URL": url,
            "PORTAL_REDIS_URL": REDIS_URL,
            "PORTAL_SECRET_KEY": secret_key,
            "PORTAL_PORT": str(port),
            "PORTAL_LOG_LEVEL": "WARNING",
            "PORTAL_RATE_LIMIT_PER_MINUTE": "100000000",
            "PORTAL_DATA_DIR": data_dir,
            "PORTAL_CACHE_PREFIX": cache_prefix,
            # As behind a balancer in production (README, "Running on real services"): the balancer's
            # X-Forwarded-For names the agent. Straight to the portal, the header is absent.
            "PORTAL_TRUSTED_PROXIES": '["127.0.0.1"]',
        }
        if vhost:
            env["PORTAL_BROKER_URL"] = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
        portal = str(Path(sys.executable).with_name("portal"))
        commands = [[portal, "run", "--no-demo"]]
        if vhost:
            commands.append([portal, "worker", "--processes", "1"])
        for command in commands:
            processes.append(
                subprocess.Popen(
                    command,
                    cwd=PROJECT_ROOT,
                    env=env,
                    stdout=server_log.open("ab"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        # The pages too: the frontend build that `portal run` starts would otherwise share the CPUs with
        # the swarm (the API answers /healthz long before the pages are built).
        wait_until_serving(f"http://127.0.0.1:{port}/", processes[0])
        lb_port = free_port()
        if haproxy:
            balancer = start_haproxy(haproxy, lb_port, {"portal": port})
        else:
            print("  through HAProxy: not measured, haproxy is not installed (make haproxy)")
        groups = {"portal run": process_tree(processes[0].pid)}
        if vhost:
            groups["task worker"] = process_tree(processes[1].pid)
        if balancer:
            groups["HAProxy"] = process_tree(balancer.process.pid)
        groups |= {
            "Redis": named("redis-server"),
            "PostgreSQL": postgres_serving(database),
            LOAD_GENERATOR: only(os.getpid()),  # the servers are its children
        }
        # Agents beat all the time: two passes over every device first (untimed) leave the portal in its
        # steady state, as it is a few minutes after a restart. The first caches each device's token and
        # state; it takes long enough that the first devices went offline meanwhile, and the second brings
        # them back.
        for pass_name in ("one heartbeat from each device", "and another"):
            warm_s = time.perf_counter()
            uvloop.run(swarm("127.0.0.1", port, tokens, 600, concurrency, rounds=1))
            print(f"  warm-up: {pass_name} in {time.perf_counter() - warm_s:.1f} s")
        failed = False
        headline: dict[str, str] = {}
        targets = [("straight to the portal", port, None)]
        if balancer:
            targets.append(("through HAProxy", lb_port, "HAProxy"))
        for target, target_port, balancer_group in targets:
            for label, pace in (
                (f"as fast as answered, {concurrency} in flight", None),
                (f"paced at {rate:,.0f}/s (target: 3,000/s with p99 under 50 ms)", rate),
            ):
                if pace is not None:
                    # A swarm beats at its pace steadily; it never comes out of the overload of the run above,
                    # which leaves the portal and PostgreSQL catching up for seconds (nearly all of a paced
                    # run's slow beats fell in its first 8 s). The timed run begins after some time at the
                    # pace.
                    uvloop.run(swarm("127.0.0.1", target_port, tokens, SETTLE_S, concurrency, rate=pace))
                # HAProxy's CPU counts in the runs through it (straight to the portal it only health-checks).
                meter = CpuMeter(
                    {name: pick for name, pick in groups.items() if name != "HAProxy" or balancer_group}
                )
                answered, latencies, errors = uvloop.run(
                    swarm("127.0.0.1", target_port, tokens, seconds, concurrency, rate=pace, meter=meter)
                )
                ordered = sorted(latencies)
                p50, p99 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]
                print(
                    f"  {target}, {label}: {answered:,} heartbeats/s over {seconds:.0f} s; "
                    f"p50 {p50:.1f} ms, p99 {p99:.1f} ms; errors by status: {errors or 'none'}"
                )
                beats = len(latencies) - sum(errors.values())
                print(f"    {cpu_line(meter, beats)}")
                if pace is not None:
                    per_beat = per_event_ms(meter.seconds, beats)
                    headline[target] = f"{per_beat['portal run']:.3f} ms" + (
                        f" (+ HAProxy {per_beat[balancer_group]:.3f} ms)" if balancer_group else ""
                    )
                failed = failed or bool(errors)
        if failed:
            print(f"  the portal's log: {server_log}")
            raise FailedRequests("heartbeats were refused or failed (errors by status above)")
        print(
            f"  CPU per heartbeat: {headline['straight to the portal']} (portal processes, /proc), paced at "
            f"{rate:,.0f}/s"
            + (f"; through HAProxy {headline['through HAProxy']}" if "through HAProxy" in headline else "")
        )
    finally:
        if balancer is not None:
            stop(balancer.process)
            shutil.rmtree(balancer.home, ignore_errors=True)
        for process in processes:
            stop(process)
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        forget_cache(cache_prefix)
        if vhost:
            subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=size(10_000, 300))
    parser.add_argument("--seconds", type=float, default=size(20, 2))
    parser.add_argument("--concurrency", type=int, default=size(256, 16), help="connections")
    parser.add_argument("--rate", type=float, default=size(3_000, 300), help="beats/s in the paced runs")
    parser.add_argument("--quick", action="store_true", help="small sizes, seconds each (bench/sizes.py)")
    args = parser.parse_args()
    bench_heartbeats(args.devices, args.seconds, args.concurrency, args.rate)


if __name__ == "__main__":
    main()
