"""A swarm of simulated agents heartbeating against the portal on real PostgreSQL and Redis: straight to one
`portal run`, through HAProxy in front of that same process, and through HAProxy in front of two `portal run`
processes, all in one run.

`python -m bench.heartbeats [--devices 10000] [--seconds 20] [--concurrency 256] [--rate 3000] [--quick]`
starts `portal run --no-demo` on a fresh PostgreSQL database with Redis, a task worker on RabbitMQ
(bench/stack.py), and Debian's HAProxy in front of the portal (bench/haproxy.py, the configuration
tests/test_multi_process.py runs), and creates the devices. Cycling through every device over
`concurrency` connections, it beats as fast as the portal answers (the sustained rate) and paced at `rate`
beats a second (the latency a swarm of that size sees, timed after 10 s at that pace), first straight to the
portal, then through HAProxy, and prints heartbeats per second with p50 and p99 latency for each, next to
the raw Redis SET rate of this machine measured in the same run (redis-benchmark).

Then a second `portal run --no-demo` starts on another port (the same database, Redis prefix, RabbitMQ
virtual host and secret key) and a second HAProxy balances both processes round robin: the same two runs
through it give the two-process figures, printed next to the one-process figures through HAProxy. Both
processes share this host's cores: on a host with few cores (2 here) two processes cannot double the rate,
which takes a machine (or cores) for each; the bench says so with the figures.

Over each timed window it reads the CPU time of the servers' processes from /proc (bench/cpu.py: utime +
stime, children included): the `portal run` process group (its web workers; both processes' in the
two-process runs), the task worker, HAProxy, Redis (the whole server: shared, anything else it serves
counts too), PostgreSQL (the backends serving the bench's database: a shared server's other work is left
out), and the load generator itself (this process), and prints each per heartbeat answered, with the cores
the host's other processes kept busy meanwhile (/proc/stat: a shared host's neighbours). The load
generator shares the host's cores with the servers: the rates are what this host does with it running, the
CPU per beat is the servers' alone. Without HAProxy (make haproxy) the runs through it are not measured,
and the bench says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import uvloop

from bench.cpu import CpuMeter, named, only, per_event_ms, postgres_serving, process_tree, process_trees
from bench.haproxy import Balancer, haproxy_program, start_haproxy
from bench.serving import FailedRequests, free_port
from bench.sizes import size
from bench.stack import portal_stack, postgres_down, stop
from portal.infra.db import build_engine

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


def create_devices(url: str, count: int, secret_key: str, *, payout_wallet: bool = False) -> list[str]:
    """``count`` devices of one provider with known tokens, ready but with no GPU nor proof yet, inserted in
    bulk (hashed with the benched portal's key, not whatever parts this process had: inside ``make bench``
    an earlier bench built them). With ``payout_wallet`` the provider has one, so that the devices are
    hireable once their agents registered their GPUs and proved them."""
    from pydantic import SecretStr
    from solders.keypair import Keypair

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
                "INSERT INTO users (id, email, display_name, wallet_address, is_active, created_at)"
                " VALUES (%s, %s, 'bench', %s, true, now())",
                (owner, "bench@example.com", str(Keypair().pubkey()) if payout_wallet else None),
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


def heartbeat_request(host: str, port: int, token: str, body: bytes) -> bytes:
    return (
        f"POST /api/v1/worker/heartbeat HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


class Connection(asyncio.Protocol):
    """One keep-alive connection that reads each response by its Content-Length, with no stream or task
    per request: the load generator shares the portal's cores, so its cost per beat must stay small. The
    status answers ``expect()``'s future; ``body`` is that response's body then."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.answered: asyncio.Future[int] | None = None
        self.body = b""

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
            self.body = bytes(self.buffer[end + 4 : size])
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

    The load generator writes prepared request bytes (``Connection``) on uvloop: a general HTTP client
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
        transport, connection = await loop.create_connection(Connection, host, port)
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


def cpu_line(meter: CpuMeter, events: int, what: str = "heartbeat") -> str:
    """The servers' CPU per event (a beat answered), each group's and their sum, and the load generator's
    apart."""
    per_beat = per_event_ms(meter.seconds, events)
    servers = {name: ms for name, ms in per_beat.items() if name != LOAD_GENERATOR}
    return (
        f"CPU per {what}: "
        + ", ".join(f"{name} {ms:.3f} ms" for name, ms in servers.items())
        + f"; servers {sum(servers.values()):.3f} ms (load generator {per_beat[LOAD_GENERATOR]:.3f} ms; "
        f"other processes on this host kept {meter.others_cores:.2f} of its {os.cpu_count()} cores busy)"
    )


@dataclass
class Run:
    """One timed run's figures: beats answered per second, latency, failures, CPU per beat by group."""

    rate: int
    p50: float
    p99: float
    errors: dict[int | str, int]
    cpu_ms: dict[str, float]


Groups = dict[str, Callable]


def timed_run(
    label: str,
    port: int,
    tokens: list[str],
    seconds: float,
    concurrency: int,
    pace: float | None,
    groups: Groups,
) -> Run:
    """One run against ``port``, as fast as answered (``pace`` None) or paced, with its line and CPU line."""
    if pace is not None:
        # A swarm beats at its pace steadily; it never comes out of the overload of the run before, which
        # leaves the portal and PostgreSQL catching up for seconds (nearly all of a paced run's slow beats
        # fell in its first 8 s). The timed run begins after some time at the pace.
        uvloop.run(swarm("127.0.0.1", port, tokens, SETTLE_S, concurrency, rate=pace))
    meter = CpuMeter(groups)
    answered, latencies, errors = uvloop.run(
        swarm("127.0.0.1", port, tokens, seconds, concurrency, rate=pace, meter=meter)
    )
    ordered = sorted(latencies)
    p50, p99 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]
    print(
        f"  {label}: {answered:,} heartbeats/s over {seconds:.0f} s; "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms; errors by status: {errors or 'none'}"
    )
    beats = len(latencies) - sum(errors.values())
    print(f"    {cpu_line(meter, beats)}")
    return Run(answered, p50, p99, errors, per_event_ms(meter.seconds, beats))


def warm_up(port: int, tokens: list[str], concurrency: int, passes: tuple[str, ...]) -> None:
    for pass_name in passes:
        started = time.perf_counter()
        uvloop.run(swarm("127.0.0.1", port, tokens, 600, concurrency, rounds=1))
        print(f"  warm-up: {pass_name} in {time.perf_counter() - started:.1f} s")


def bench_heartbeats(
    devices: int = size(10_000, 300),
    seconds: float = size(20, 2),
    concurrency: int = size(256, 16),
    rate: float = size(3_000, 300),
) -> None:
    down = postgres_down()
    if down:
        print(f"Heartbeat swarm not measured: PostgreSQL does not answer ({down})")
        return
    haproxy = haproxy_program()
    balancers: list[Balancer] = []
    with portal_stack() as stack:
        try:
            print(
                f"Heartbeat swarm: {devices:,} simulated agents, PostgreSQL, Redis"
                + (
                    " and RabbitMQ (one task worker)"
                    if stack.vhost
                    else " (tasks in process: no rabbitmqctl)"
                )
                + " on 127.0.0.1; straight to one portal process, through HAProxy in front of it, and through"
                " HAProxy in front of two"
            )
            print(f"  baseline: raw Redis writes: {redis_baseline()}")
            started = time.perf_counter()
            tokens = create_devices(stack.url, devices, stack.secret_key)
            print(f"  devices created in {time.perf_counter() - started:.1f} s")
            worker = stack.start_worker()
            portal = stack.start_portal()
            if haproxy:
                balancers.append(start_haproxy(haproxy, free_port(), {"portal": stack.port}))
            else:
                print("  through HAProxy: not measured, haproxy is not installed (make haproxy)")
            # The portal's processes first; HAProxy counts only in the runs through it (straight to the
            # portal it only health-checks).
            servers: Groups = {"task worker": process_tree(worker.pid)} if worker else {}
            servers |= {
                "Redis": named("redis-server"),
                "PostgreSQL": postgres_serving(stack.database),
                LOAD_GENERATOR: only(os.getpid()),  # the servers are its children
            }
            # Agents beat all the time: two passes over every device first (untimed) leave the portal in its
            # steady state, as it is a few minutes after a restart. The first caches each device's token and
            # state; it takes long enough that the first devices went offline meanwhile, and the second
            # brings them back.
            warm_up(stack.port, tokens, concurrency, ("one heartbeat from each device", "and another"))
            fast = f"as fast as answered, {concurrency} in flight"
            paced = f"paced at {rate:,.0f}/s (target: 3,000/s with p99 under 50 ms)"
            one = {"portal run": process_tree(portal.pid)}
            runs: dict[tuple[str, bool], Run] = {}
            targets: list[tuple[str, int, Groups]] = [("straight to the portal", stack.port, one | servers)]
            if balancers:
                balancer = {"HAProxy": process_tree(balancers[0].process.pid)}
                targets.append(("through HAProxy", balancers[0].port, one | balancer | servers))
            for target, port, groups in targets:
                for label, pace in ((fast, None), (paced, rate)):
                    runs[target, pace is not None] = timed_run(
                        f"{target}, {label}", port, tokens, seconds, concurrency, pace, groups
                    )
            if balancers:
                second_port = free_port()
                started = time.perf_counter()
                second = stack.start_portal(second_port)
                pair = start_haproxy(haproxy, free_port(), {"a": stack.port, "b": second_port})
                balancers.append(pair)
                print(
                    f"  a second portal process on port {second_port} (the same database, Redis and "
                    f"RabbitMQ) serving after {time.perf_counter() - started:.1f} s; "
                    "another HAProxy in front of both"
                )
                warm_up(pair.port, tokens, concurrency, ("one heartbeat from each device through both",))
                both = {"portal run, both processes": process_trees(portal.pid, second.pid)}
                balancer = {"HAProxy": process_tree(pair.process.pid)}
                before = pair.served()
                target = "through HAProxy, two portal processes"
                for label, pace in ((fast, None), (paced, rate)):
                    runs[target, pace is not None] = timed_run(
                        f"{target}, {label}",
                        pair.port,
                        tokens,
                        seconds,
                        concurrency,
                        pace,
                        both | balancer | servers,
                    )
                after = pair.served()
                print(
                    "    HAProxy sent "
                    + ", ".join(f"process {name} {after[name] - before[name]:,}" for name in pair.servers)
                    + " of these beats"
                )
            failed = {
                f"{target}, {'paced' if paced_run else 'as fast as answered'}": run.errors
                for (target, paced_run), run in runs.items()
                if run.errors
            }
            if failed:
                print(f"  the portals' logs: {stack.data_dir}")
                raise FailedRequests(f"heartbeats were refused or failed: {failed}")
            straight = runs["straight to the portal", True].cpu_ms
            headline = (
                f"  CPU per heartbeat: {straight['portal run']:.3f} ms (portal processes, /proc), "
                f"paced at {rate:,.0f}/s"
            )
            if balancers:
                through = runs["through HAProxy", True].cpu_ms
                headline += f"; through HAProxy {through['portal run']:.3f} ms "
                headline += f"(+ HAProxy {through['HAProxy']:.3f} ms)"
            print(headline)
            if balancers:
                print(two_processes_line(runs, rate))
        finally:
            for balancer in balancers:
                stop(balancer.process)
                shutil.rmtree(balancer.home, ignore_errors=True)


def two_processes_line(runs: dict[tuple[str, bool], Run], rate: float) -> str:
    """The two-process figures next to the one-process figures through HAProxy, and what this host allows."""
    one_fast, one_paced = runs["through HAProxy", False], runs["through HAProxy", True]
    two_fast, two_paced = (
        runs["through HAProxy, two portal processes", False],
        runs["through HAProxy, two portal processes", True],
    )
    cores = os.cpu_count() or 1
    return (
        f"  two portal processes behind HAProxy: as fast as answered {two_fast.rate:,} heartbeats/s "
        f"(one process behind HAProxy: {one_fast.rate:,}/s, {two_fast.rate / one_fast.rate:.2f}x); paced at "
        f"{rate:,.0f}/s p50 {two_paced.p50:.1f} ms, p99 {two_paced.p99:.1f} ms (one process: p50 "
        f"{one_paced.p50:.1f} ms, p99 {one_paced.p99:.1f} ms)\n"
        f"    this host has {cores} cores and both processes share them: a second process on the same host "
        "adds web workers, not cores, so it cannot double the rate here; two processes double it only with "
        "cores (or a machine) of their own"
    )


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
