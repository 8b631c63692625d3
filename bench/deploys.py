"""Deploy throughput: how many deploys a second one `portal run` on PostgreSQL sustains with many customers
deploying at once, through its HTTP API, with the agents simulated at the protocol level.

Set up, untimed: the portal as at scale (bench/stack.py: `portal run --no-demo`, a task worker on
RabbitMQ, PostgreSQL, Redis); ``devices`` devices of a provider with a payout wallet
(``bench.heartbeats.create_devices``), each with an agent in this process speaking the worker protocol
over HTTP as gpu_pool's agent does (API.md, "Worker agent"): it registers one simulated H100, proves it
(the proof-of-compute round: challenge, commitment, reveal), then beats every interval the portal asks,
long-polls for commands (``wait=25``), takes a command from whichever answer brings it first, and
acknowledges it: a Ray start with a node id (a head also with its GCS address, the one the portal
allocated, and a dashboard URL on 127.0.0.1, where one small server of this process answers the head's
check as a Ray dashboard would, listing the nodes the agents "run"), a stop with ``stopped``. No Ray runs:
bench/deploy.py times real Ray nodes. Then ``customers`` customers with credit sign in over HTTP.

Each agent holds two connections to the portal, its long-poll's and its beats', as gpu_pool's agent does,
and each customer one: about 800 in all at the full size. One `portal run` process accepts about 1,000 at
once (Granian, as Reflex starts it, admits backlog / workers = 1,024 / 3 connections per web worker; past
that a new connection waits until one closes), so the sizes stay below it and the bench says so when asked
for more.

Baseline, same run, same portal, the agents beating: ``GET /api/v1/me`` with the customers' access tokens,
every customer at once as fast as answered: the portal's rate for a trivial authenticated request.

Timed: every customer at once deploys a 2-GPU cluster (``POST /api/v1/clusters``: placement and the escrow
hold, in the request), waits until it runs, and deploys the next, until ``deploys`` clusters run. A
deploy's latency runs from its request until the cluster is ``running``: the task worker took its steps
(the head's and the worker's start commands sent at once, their agents woken), both agents took their
command and acknowledged it, both nodes joined, and the head's check saw both; the time is the cluster's
``started_at``, written as it moves to ``running``. The rate is the deploys over the time from the first
request until the last one runs. A customer learns that its cluster runs from this process's watch on the
database (one query every 50 ms for all the clusters waited for), not by polling the API, which would load
the portal with reads no deploy needs (the watch's query counts in PostgreSQL's share). Over the same window
the CPU time of the servers' processes is read from /proc (bench/cpu.py) and printed per deploy; the agents'
beats (every device every 5 s) run meanwhile, as in a live network, and count in it: what they cost alone is
measured first, the network at rest (the agents beating and long-polling, no customer), in cores.

Then the steps of the deploys from their events (``GET /api/v1/clusters/{id}``), and the checks: no device
booked twice (no device in two nodes, every node's device hired), the books balance
(``ledger.verify_books``); then every customer terminates its clusters and, once every device is ready
again, the customers' escrow is back to 0 and the books balance again. Every failed request (agents' and
customers'), every deploy not running in time and every failed check fails the bench (``FailedRequests``,
exit status 1), after its figures; none is counted as a rate.

`python -m bench.deploys [--devices N] [--customers 64] [--deploys 180] [--quick]`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
import uvloop
from sqlmodel import Session

from bench.cpu import CpuMeter, named, only, postgres_serving, process_tree
from bench.deploy import milestones, print_steps
from bench.heartbeats import LOAD_GENERATOR, Connection, cpu_line, create_devices
from bench.placement import customers as make_customers
from bench.serving import FailedRequests, free_port
from bench.sizes import size
from bench.stack import Stack, portal_stack, postgres_down
from gpu_pool import compute
from gpu_pool.agent import LONG_POLL_S
from portal.infra.db import build_engine
from portal.services.money import ledger

# The quick run checks that the bench runs; concurrency is the full run's (README: Deploy bursts).
CUSTOMERS = size(64, 3)
DEPLOYS = size(180, 12)
GPUS_PER_CLUSTER = 2  # two one-GPU devices: a head and a worker, two start commands
SPARE_DEVICES = size(12, 2)
BASELINE_S = size(10.0, 2.0)
WARM_UP_S = 1.0
DEPLOY_TIMEOUT_S = 120
SETTLE_TIMEOUT_S = size(300, 60)
WATCH_EVERY_S = 0.05
# What one `portal run` accepts at once: Granian admits backlog / workers connections per web worker (1,024
# in all), less a margin, as connections are not spread evenly over the workers.
CONNECTIONS = 900
API = "/api/v1"
GPU = {"index": 0, "uuid": "", "model": "NVIDIA H100 80GB HBM3", "memory_mb": 81_559}
GPU_MODEL = "H100-80GB"  # as the portal names the GPU above
PASSWORD = "deploy bench pass 1"
SPEC = {"name": "burst", "gpu_model": GPU_MODEL, "gpu_count": GPUS_PER_CLUSTER, "duration_hours": 1}


class Failures:
    """Every request that did not get its expected answer, by what it was and its status; any fails the
    bench."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def add(self, what: str, status: int | str, reply: Any = None) -> None:
        key = f"{what}: {status}"
        self.counts[key] += 1
        self.examples.setdefault(key, str(reply)[:300])

    def __bool__(self) -> bool:
        return bool(self.counts)

    def __str__(self) -> str:
        return "; ".join(f"{key} x{count} (e.g. {self.examples[key]})" for key, count in self.counts.items())


class Wire:
    """HTTP/1.1 requests to the portal over one keep-alive connection, one at a time, with the heartbeat
    swarm's lean reader (``bench.heartbeats.Connection``): the load generator shares the portal's cores.
    A connection that failed is opened again at the next request."""

    def __init__(self, port: int, token: str | None = None) -> None:
        self.port, self.token = port, token
        self.transport: asyncio.Transport | None = None
        self.connection: Connection | None = None

    async def call(
        self, method: str, path: str, body: dict | None = None, timeout_s: float = 60
    ) -> tuple[int | str, Any]:
        """The status (or the error's name when there was no answer) and the decoded JSON body."""
        if self.transport is None or self.transport.is_closing():
            loop = asyncio.get_running_loop()
            try:
                self.transport, self.connection = await loop.create_connection(
                    Connection, "127.0.0.1", self.port
                )
            except OSError as error:
                return type(error).__name__, None
        assert self.connection is not None
        payload = json.dumps(body).encode() if body is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Length: {len(payload)}\r\n"
        )
        if self.token:
            head += f"Authorization: Bearer {self.token}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        answered = self.connection.expect()
        self.transport.write(f"{head}\r\n".encode() + payload)
        try:
            status = await asyncio.wait_for(answered, timeout_s)
        except (TimeoutError, ConnectionError) as error:
            self.close()
            return type(error).__name__, None
        raw = self.connection.body
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw[:300]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.transport = None


@dataclass
class World:
    """What the agents, the customers and the watch share."""

    port: int
    failures: Failures = field(default_factory=Failures)
    alive: set[str] = field(default_factory=set)  # the Ray node ids the agents "run"
    dashboard_url: str = ""
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: dict[uuid.UUID, asyncio.Future[float]] = field(default_factory=dict)


class Agent:
    """One device's agent at the protocol level: register, prove, beat, long-poll, acknowledge."""

    def __init__(self, world: World, token: str, number: int) -> None:
        self.world, self.number = world, number
        self.beats, self.polls = Wire(world.port, token), Wire(world.port, token)
        self.ray: dict[str, Any] = {"state": "none"}
        self.handled: set[str] = set()
        self.interval = 5.0

    async def register_and_prove(self) -> None:
        gpu = GPU | {"uuid": f"GPU-bench-{self.number}"}
        report = {
            "agent_version": "bench",
            "gpus": [gpu],
            "simulated": True,
            "hostname": f"rig-{self.number}",
        }
        status, reply = await self.beats.call("POST", f"{API}/worker/register", report)
        if status != 200:
            self.world.failures.add("register", status, reply)
            return
        self.interval = float(reply["next_heartbeat_s"])
        if reply["verify"]:
            await self.prove(self.beats)

    async def prove(self, wire: Wire) -> None:
        status, challenge = await wire.call("GET", f"{API}/worker/challenge")
        if status != 200:
            self.world.failures.add("proof: challenge", status, challenge)
            return
        product = compute.multiply(challenge["seed"], challenge["n"], use_gpu=False)
        path = f"{API}/worker/challenge/{challenge['id']}"
        status, reply = await wire.call(
            "POST", path, {"row_hashes": product.commitment(), "elapsed_ms": product.elapsed_ms}
        )
        if status != 200:
            self.world.failures.add("proof: commitment", status, reply)
            return
        status, verdict = await wire.call("POST", path, {"rows": product.reveal(reply["rows"])})
        if status != 200 or not verdict.get("passed"):
            self.world.failures.add("proof: reveal", status, verdict)

    async def beat_loop(self) -> None:
        # The agents' beats spread over the interval, as agents started at different times beat.
        await self.pause(random.uniform(0, self.interval))
        while not self.world.stopping.is_set():
            busy = self.ray["state"] == "running"  # busy GPUs on an idle device are a fault
            sample = {"index": 0, "util_pct": 40 if busy else 0, "mem_used_mb": 2000 if busy else 0}
            sample |= {"temp_c": 55, "power_w": 120 if busy else 30}
            status, reply = await self.beats.call(
                "POST", f"{API}/worker/heartbeat", {"gpus": [sample], "ray": self.ray}
            )
            if status == 200:
                self.interval = float(reply["next_heartbeat_s"])
                for command in reply["commands"]:
                    await self.handle(self.beats, command)
            elif not self.world.stopping.is_set():
                self.world.failures.add("heartbeat", status, reply)
            await self.pause(self.interval)

    async def poll_loop(self) -> None:
        while not self.world.stopping.is_set():
            status, reply = await self.polls.call(
                "GET", f"{API}/worker/commands?wait={LONG_POLL_S}", timeout_s=LONG_POLL_S + 30
            )
            if status == 200:
                for command in reply:
                    await self.handle(self.polls, command)
            elif not self.world.stopping.is_set():
                self.world.failures.add("long-poll", status, reply)
                await self.pause(1)

    async def pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.world.stopping.wait(), seconds)

    async def handle(self, wire: Wire, command: dict[str, Any]) -> None:
        """Run a command once (a beat and the long-poll may both bring it) and acknowledge it."""
        if command["id"] in self.handled:
            return
        self.handled.add(command["id"])
        kind, payload = command["kind"], command["payload"]
        ok, detail = True, ""
        if kind in ("start_ray_head", "start_ray_worker"):
            self.world.alive.discard(self.ray.get("node_id") or "")
            node_id = uuid.uuid4().hex
            status = {"state": "running", "node_id": node_id}
            if kind == "start_ray_head":
                status["address"] = f"127.0.0.1:{payload.get('gcs_port') or free_port()}"
                status["dashboard_url"] = self.world.dashboard_url
            self.world.alive.add(node_id)
            self.ray = {"state": "running", "node_id": node_id}
            detail = json.dumps(status)
        elif kind == "stop_ray":
            self.world.alive.discard(self.ray.get("node_id") or "")
            self.ray, detail = {"state": "none"}, "stopped"
        elif kind == "verify":
            await self.prove(wire)
        else:
            ok, detail = False, f"unknown command {kind}"
        status_, reply = await wire.call(
            "POST", f"{API}/worker/commands/{command['id']}/result", {"ok": ok, "detail": detail}
        )
        if status_ != 204:
            self.world.failures.add(f"{kind} result", status_, reply)


async def serve_dashboard(world: World) -> asyncio.Server:
    """A Ray head's state API as the portal's check of a head reads it: every node the agents run, alive."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                rows = [{"node_id": node, "state": "ALIVE"} for node in world.alive]
                body = json.dumps({"data": {"result": {"result": rows}}}).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:  # the bench ends while the portal keeps its connection open
            return
        finally:
            writer.close()

    port = free_port()
    server = await asyncio.start_server(answer, "127.0.0.1", port)
    world.dashboard_url = f"http://127.0.0.1:{port}"
    return server


@dataclass
class Customer:
    email: str
    wire: Wire
    clusters: list[uuid.UUID] = field(default_factory=list)


@dataclass
class Deploys:
    """What the timed deploys gave: each deploy's request time (epoch s), answer and running times."""

    sent: dict[uuid.UUID, float] = field(default_factory=dict)
    answered_ms: list[float] = field(default_factory=list)
    running_at: dict[uuid.UUID, float] = field(default_factory=dict)
    next: int = 0


async def bounded(jobs: list[Callable[[], Awaitable[None]]], at_once: int) -> None:
    """Run the jobs, ``at_once`` at a time."""
    queue = list(reversed(jobs))

    async def lane() -> None:
        while queue:
            await queue.pop()()

    await asyncio.gather(*(lane() for _ in range(at_once)))


async def watch(world: World, dsn: str) -> None:
    """Resolves each waited-for cluster's future with its ``started_at`` once it runs, or with an error once
    it ended otherwise: one query for all of them every 50 ms."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
        while not world.stopping.is_set():
            if world.waiting:
                rows = await connection.execute(
                    "SELECT id, state, started_at FROM clusters WHERE id = ANY(%s) "
                    "AND state NOT IN ('pending', 'provisioning')",
                    (list(world.waiting),),
                )
                for cluster_id, state, started_at in await rows.fetchall():
                    future = world.waiting.pop(cluster_id, None)
                    if future is None or future.done():
                        continue  # its customer stopped waiting
                    if state == "running" and started_at is not None:
                        future.set_result(started_at.timestamp())
                    else:
                        future.set_exception(RuntimeError(f"cluster {cluster_id} is {state}"))
            await asyncio.sleep(WATCH_EVERY_S)


async def deploy_loop(world: World, customer: Customer, total: int, done: Deploys) -> None:
    """Deploy, wait until it runs, deploy the next, until ``total`` deploys were sent by all customers."""
    loop = asyncio.get_running_loop()
    while done.next < total:
        done.next += 1
        sent = time.time()
        status, reply = await customer.wire.call("POST", f"{API}/clusters", SPEC)
        answered = time.time()
        if status != 202:
            world.failures.add("deploy", status, reply)
            continue
        done.answered_ms.append((answered - sent) * 1000)
        cluster_id = uuid.UUID(reply["id"])
        customer.clusters.append(cluster_id)
        done.sent[cluster_id] = sent
        future: asyncio.Future[float] = loop.create_future()
        world.waiting[cluster_id] = future
        try:
            done.running_at[cluster_id] = await asyncio.wait_for(future, DEPLOY_TIMEOUT_S)
        except TimeoutError:
            world.waiting.pop(cluster_id, None)
            world.failures.add("deploy", f"not running within {DEPLOY_TIMEOUT_S} s", cluster_id)
        except RuntimeError as error:
            world.failures.add("deploy", "ended before running", error)


async def authenticated_gets(
    customers: list[Customer], seconds: float, world: World
) -> tuple[int, list[float]]:
    """``GET /api/v1/me`` by every customer at once, as fast as answered: answers and latencies (ms)."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def one(customer: Customer) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            status, reply = await customer.wire.call("GET", f"{API}/me")
            latencies.append((time.perf_counter() - started) * 1000)
            if status != 200:
                world.failures.add("GET /me", status, reply)

    await asyncio.gather(*(one(customer) for customer in customers))
    return len(latencies), latencies


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    if not ordered:
        return 0.0, 0.0
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def double_bookings(stack: Stack) -> tuple[int, list[str]]:
    """Devices booked twice (two nodes of one device at overlapping times: a node ends when it is released,
    and its device is booked again only once its agent stopped it), and what else is wrong with the
    bookings: a running cluster's node not joined, or its device not hired."""
    with psycopg.connect(stack.url.replace("+psycopg", "")) as connection:
        (twice,) = connection.execute(
            "SELECT count(DISTINCT a.device_id) FROM cluster_nodes a JOIN cluster_nodes b"
            " ON a.device_id = b.device_id AND a.id < b.id"
            " AND a.created_at < coalesce(b.ended_at, 'infinity')"
            " AND b.created_at < coalesce(a.ended_at, 'infinity')"
        ).fetchone()
        nodes = connection.execute(
            "SELECT count(*), count(*) FILTER (WHERE n.state = 'joined'),"
            " count(*) FILTER (WHERE d.state = 'hired')"
            " FROM cluster_nodes n JOIN devices d ON d.id = n.device_id"
            " JOIN clusters c ON c.id = n.cluster_id"
            " WHERE c.state = 'running' AND n.state IN ('assigned', 'starting', 'joined')"
        ).fetchone()
        (running,) = connection.execute("SELECT count(*) FROM clusters WHERE state = 'running'").fetchone()
    problems = [f"{twice} devices booked twice"] if twice else []
    wanted = running * GPUS_PER_CLUSTER
    if tuple(nodes) != (wanted, wanted, wanted):
        problems.append(
            f"the {running} running clusters' nodes, those joined, their devices hired: {tuple(nodes)}, "
            f"not {wanted} each"
        )
    return twice, problems


def books_problems(stack: Stack) -> list[str]:
    engine = build_engine(stack.url)
    try:
        with Session(engine) as session:
            return ledger.verify_books(session)
    finally:
        engine.dispose()


def settled(stack: Stack) -> tuple[int, int, int]:
    """Clusters not terminated, devices not ready, and the micro-USD held in the customers' escrow."""
    with psycopg.connect(stack.url.replace("+psycopg", "")) as connection:
        return connection.execute(
            "SELECT (SELECT count(*) FROM clusters WHERE state <> 'terminated'),"
            " (SELECT count(*) FROM devices WHERE state <> 'ready'),"
            " (SELECT coalesce(sum(balance_micro), 0) FROM ledger_accounts WHERE kind = 'customer_escrow')"
        ).fetchone()


async def run(stack: Stack, devices: int, customer_count: int, deploys: int, groups: dict) -> list[str]:
    """Everything that runs on this process's event loop; returns what went wrong."""
    world = World(stack.port)
    dashboard = await serve_dashboard(world)
    tokens = create_devices(stack.url, devices, stack.secret_key, payout_wallet=True)
    agents = [Agent(world, token, number) for number, token in enumerate(tokens)]
    tasks: list[asyncio.Task] = []
    customers: list[Customer] = []
    watcher = asyncio.create_task(watch(world, stack.url.replace("+psycopg", "")))
    try:
        started = time.perf_counter()

        async def join(agent: Agent) -> None:
            await agent.register_and_prove()
            tasks.extend(asyncio.create_task(loop()) for loop in (agent.beat_loop, agent.poll_loop))

        await bounded([lambda a=agent: join(a) for agent in agents], 16)
        print(
            f"  {devices:,} agents registered and proved their GPU in {time.perf_counter() - started:.1f} s"
        )
        started = time.perf_counter()
        customers = [Customer(email, Wire(stack.port)) for email in customer_emails(stack, customer_count)]
        await bounded([lambda c=customer: sign_in(c, world) for customer in customers], 8)
        print(f"  {customer_count} customers with credit signed in in {time.perf_counter() - started:.1f} s")
        if world.failures:
            return [f"setting up: {world.failures}"]
        await measure_at_rest(groups)
        await measure_baseline(customers, world, groups)
        await measure_deploys(customers, world, groups, deploys)
        twice, problems = double_bookings(stack)
        books = books_problems(stack)
        print(
            f"  checks: {twice} devices booked twice; the books balance (ledger.verify_books): "
            + ("yes" if not books else f"no, {len(books)} problems")
        )
        problems += books
        if world.failures:
            return [f"deploying: {world.failures}", *problems]
        return problems + await terminate_all(stack, customers, world)
    finally:
        world.stopping.set()
        for task in [*tasks, watcher]:
            task.cancel()
        await asyncio.gather(*tasks, watcher, return_exceptions=True)
        for agent in agents:
            agent.beats.close()
            agent.polls.close()
        for customer in customers:
            customer.wire.close()
        dashboard.close()


async def sign_in(customer: Customer, world: World) -> None:
    body = {"email": customer.email, "password": PASSWORD}
    status, reply = await customer.wire.call("POST", f"{API}/auth/login", body)
    if status != 200:
        world.failures.add("sign-in", status, reply)
        return
    customer.wire.token = reply["access_token"]


async def measure_at_rest(groups: dict) -> None:
    """The servers' cores busy with the agents alone: beats and long-polls, no customer."""
    meter = CpuMeter(groups)
    meter.start()
    await asyncio.sleep(BASELINE_S)
    meter.stop()
    cores = {name: spent / BASELINE_S for name, spent in meter.seconds.items() if name != LOAD_GENERATOR}
    print(
        f"  at rest (the agents beating and long-polling, no customer), over {BASELINE_S:.0f} s: "
        + ", ".join(f"{name} {used:.2f}" for name, used in cores.items())
        + f" cores; servers {sum(cores.values()):.2f} of {os.cpu_count()}"
    )


async def measure_baseline(customers: list[Customer], world: World, groups: dict) -> None:
    await authenticated_gets(customers, WARM_UP_S, world)  # every web worker's first requests, untimed
    meter = CpuMeter(groups)
    meter.start()
    answered, latencies = await authenticated_gets(customers, BASELINE_S, world)
    meter.stop()
    if world.failures:
        print(f"  baseline: requests without their answer: {world.failures}")
        return
    p50, p99 = percentiles(latencies)
    print(
        f"  baseline: GET /api/v1/me (an access token), {len(customers)} customers at once as fast as "
        f"answered: {answered / BASELINE_S:,.0f} requests/s; p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )
    print(f"    {cpu_line(meter, answered, 'request')}")


async def measure_deploys(customers: list[Customer], world: World, groups: dict, deploys: int) -> None:
    done = Deploys()
    meter = CpuMeter(groups)
    meter.start()
    await asyncio.gather(*(deploy_loop(world, customer, deploys, done) for customer in customers))
    meter.stop()
    running = len(done.running_at)
    if world.failures or not running:
        # Failed requests give no rate: the bench fails, saying which (``run``).
        print(
            f"  deploys: {running:,} of {deploys:,} running; requests without their answer: {world.failures}"
        )
        return
    window = max(done.running_at.values()) - min(done.sent.values())
    p50, p99 = percentiles([(done.running_at[c] - done.sent[c]) * 1000 for c in done.running_at])
    a50, a99 = percentiles(done.answered_ms)
    print(
        f"  deploy throughput: {running / window:.1f} deploys/s ({running:,} 2-GPU clusters running "
        f"{window:.1f} s after the first request, {len(customers)} customers at once); "
        f"request to running: p50 {p50:.0f} ms, p99 {p99:.0f} ms"
    )
    print(f"    the request alone (placement and escrow, answered 202): p50 {a50:.0f} ms, p99 {a99:.0f} ms")
    print(f"    {cpu_line(meter, running, 'deploy')} (the agents' beats meanwhile included)")
    print_steps(await cluster_steps(customers, done, world))


async def cluster_steps(customers: list[Customer], done: Deploys, world: World) -> list[dict[str, float]]:
    """Each deploy's milestones after its request, from its events as its owner reads them."""
    steps: list[dict[str, float]] = []

    async def read(customer: Customer) -> None:
        for cluster_id in customer.clusters:
            status, cluster = await customer.wire.call("GET", f"{API}/clusters/{cluster_id}")
            if status != 200:
                world.failures.add("GET cluster", status, cluster)
                continue
            requested = datetime.fromtimestamp(done.sent[cluster_id], UTC)
            steps.append(milestones(requested, cluster["events"]))

    await asyncio.gather(*(read(customer) for customer in customers))
    return steps


async def terminate_all(stack: Stack, customers: list[Customer], world: World) -> list[str]:
    """Every customer terminates its clusters; once every device is ready again the escrow is back to 0 and
    the books balance."""
    started = time.perf_counter()

    async def terminate(customer: Customer) -> None:
        for cluster_id in customer.clusters:
            status, reply = await customer.wire.call("DELETE", f"{API}/clusters/{cluster_id}")
            if status != 202:
                world.failures.add("terminate", status, reply)

    await asyncio.gather(*(terminate(customer) for customer in customers))
    deadline = time.perf_counter() + SETTLE_TIMEOUT_S
    left = settled(stack)
    while left != (0, 0, 0) and time.perf_counter() < deadline:
        await asyncio.sleep(0.5)
        left = await asyncio.to_thread(settled, stack)
    if world.failures:
        return [f"terminating: {world.failures}"]
    if left != (0, 0, 0):
        return [
            f"{SETTLE_TIMEOUT_S} s after the terminations: {left[0]} clusters not terminated, "
            f"{left[1]} devices not ready, {left[2]} micro-USD in escrow"
        ]
    problems = books_problems(stack)
    print(
        f"  every cluster terminated and every device ready again {time.perf_counter() - started:.1f} s "
        "after the terminations; the customers' escrow is 0 and the books balance: "
        + ("yes" if not problems else "no")
    )
    return problems


def customer_emails(stack: Stack, count: int) -> list[str]:
    """``count`` customers with credit (``bench.placement.customers``) who sign in with PASSWORD."""
    engine = build_engine(stack.url)
    try:
        ids = make_customers(engine, count, password=PASSWORD)
    finally:
        engine.dispose()
    with psycopg.connect(stack.url.replace("+psycopg", "")) as connection:
        rows = connection.execute("SELECT email FROM users WHERE id = ANY(%s)", (ids,)).fetchall()
    return [email for (email,) in rows]


def bench_deploys(customers: int = CUSTOMERS, deploys: int = DEPLOYS, devices: int | None = None) -> None:
    devices = devices or deploys * GPUS_PER_CLUSTER + SPARE_DEVICES
    down = postgres_down()
    if down:
        print(f"Deploy throughput not measured: PostgreSQL does not answer ({down})")
        return
    connections = 2 * devices + customers
    if connections > CONNECTIONS:
        print(
            f"  note: {connections:,} connections (two an agent, one a customer) are more than the about "
            f"{CONNECTIONS:,} one portal process accepts at once: those past it wait until one closes"
        )
    print(
        f"Deploy throughput: {deploys:,} deploys of 2-GPU clusters by {customers} customers at once "
        "through the HTTP API of one portal process (PostgreSQL, Redis, RabbitMQ and a task worker on "
        f"127.0.0.1), {devices:,} agents simulated at the protocol level (no Ray)"
    )
    with portal_stack() as stack:
        started = time.perf_counter()
        worker = stack.start_worker()
        portal = stack.start_portal()
        print(f"  portal serving after {time.perf_counter() - started:.1f} s")
        groups = {"portal run": process_tree(portal.pid)}
        if worker:
            groups["task worker"] = process_tree(worker.pid)
        groups |= {
            "PostgreSQL": postgres_serving(stack.database),
            "Redis": named("redis-server"),
            "RabbitMQ": named("beam.smp"),
            LOAD_GENERATOR: only(os.getpid()),  # the servers are its children
        }
        problems = uvloop.run(run(stack, devices, customers, deploys, groups))
        if problems:
            print(f"  the portal's logs: {stack.data_dir}")
            raise FailedRequests("; ".join(problems))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=CUSTOMERS, help="customers deploying at once")
    parser.add_argument("--deploys", type=int, default=DEPLOYS, help="deploys of 2-GPU clusters in all")
    parser.add_argument("--devices", type=int, default=None, help="default: two a deploy and a few spare")
    parser.add_argument("--quick", action="store_true", help="small sizes, seconds each (bench/sizes.py)")
    args = parser.parse_args()
    try:
        bench_deploys(args.customers, args.deploys, args.devices)
    except FailedRequests as error:
        print(f"  FAILED: {error}")
        sys.exit(1)


if __name__ == "__main__":
    main()
