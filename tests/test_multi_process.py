"""Several portal processes behind a load balancer (issue 21): two `portal run` and two `portal worker`
processes on one PostgreSQL database, one Redis prefix and one RabbitMQ virtual host, behind HAProxy.

HAProxy (Debian's) balances the API, the agents and the pages round robin across both processes, health
checks each on ``/healthz`` and retries a request whose connection failed on the other; a page's event
websocket (``/_event``) stays with one process while it lives (``balance source``). Through it:

- six agents, at the protocol level from loopback addresses of their own (as ``test_hostile_agent``'s),
  register one simulated GPU, prove it, beat and long-poll; a start command answers with a Ray node whose
  "dashboard" (a small HTTP server on the agent's address) reports the nodes running, so the clusters go
  to ``running`` through the real provisioning in the task workers;
- ten deploys at once from five customers, through both processes, for six devices: six clusters, four
  refused for capacity, no device booked twice; each customer extends and terminates;
- one portal process is killed (SIGKILL to its process group, by PID) while clusters run: the API, the
  agents' beats and long-polls carry on through the other, and a signed-in browser on the killed process
  terminates its cluster through the other one without reloading;
- the periodic actors run exactly once per period, counted across the kill (both processes tick);
- the books balance, each customer's charges are their usage, and the payouts landed once on the chain.

Found on the way: the pages were built for each process's own port, so behind a balancer their websocket
went straight to the process that built them, and two processes on one host rebuilt one build in turn
(``portal run`` now builds for ``PORTAL_PUBLIC_URL``'s port); processes sharing ``data_dir`` could each make
their own local treasury key at first use, or read it half written (``config.made_once``). And, Reflex's
own: a killed process leaves its pages' socket records in Redis (an hour), so the survivor takes a page
that reconnects for a duplicate tab and gives it a new token, with a fresh state; the portal's pages rebuild
theirs from the session cookie and the URL, so the page carries on.

Figures (start-up, the outage a kill causes, what each process served) are printed (``pytest -s``).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import redis
from solders.pubkey import Pubkey
from sqlmodel import col, func, select

from bench.haproxy import Balancer, haproxy_program, start_haproxy
from gpu_pool import compute
from portal.config import get_settings
from portal.infra import migrations
from portal.infra.cache import RedisCache
from portal.infra.db import build_engine, session_scope
from portal.infra.metrics import actor_runs_key
from portal.models import (
    AccountKind,
    Cluster,
    ClusterNode,
    ClusterState,
    Device,
    DeviceState,
    FaultEvent,
    LedgerAccount,
    Payout,
    PayoutState,
    Role,
    StateTransition,
    UsageRecord,
    User,
)
from portal.services.accounts import users
from portal.services.money import chain, ledger, treasury
from tests.conftest import (
    PORTAL_RUN_PORT,
    PROJECT_ROOT,
    REDIS_URL,
    VENV_BIN,
    RunningPortal,
    private_database,
    private_vhost,
    require_program,
    settings_for,
    start_portal,
    stop_process_group,
    wait_until,
)
from tests.factories import add_device
from tests.servers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]

DEVICES = 6
CUSTOMERS = 5
DEPLOYS_PER_CUSTOMER = 2
PASSWORD = "multi process pass 1"
GPU_MODEL = "A10-24GB"
HEARTBEAT_S = 2
PERIOD_S = 5  # metering; the other counted actors' period is fixed at 5 s (tasks/scheduler.py)
# Sent by the portals' schedulers and nothing else, every 5 s (follow-ups send others: reconcile, settle).
COUNTED_ACTORS = ("meter_clusters", "expire_clusters", "mark_silent_devices_offline", "detect_gpu_faults")
WEB_WORKERS = 2  # Granian workers per portal process: each ticks the schedule too
SERVERS = ("a", "b")


def say(text: str) -> None:
    print(f"[multi-process] {text}", flush=True)


# --- HAProxy (its configuration in bench/haproxy.py, shared with the heartbeat bench) -------------------


def find_haproxy() -> str:
    return haproxy_program() or require_program("haproxy", "haproxy")


# --- agents at the protocol level ------------------------------------------------------------------


class AliveNodes:
    """The Ray nodes the simulated agents run, as every simulated head's dashboard reports them."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.lock = threading.Lock()

    def body(self) -> bytes:
        with self.lock:
            rows = [{"node_id": node, "state": "ALIVE"} for node in sorted(self.ids)]
        return json.dumps({"data": {"result": {"result": rows}}}).encode()


class Dashboard:
    """A Ray head's state API on the agent's own address: the portal asks it which nodes are alive."""

    def __init__(self, host: str, alive: AliveNodes) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = alive.body()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Outage:
    """Requests that failed, with when (monotonic)."""

    failures: list[tuple[float, str]] = field(default_factory=list)
    successes: list[float] = field(default_factory=list)

    def ok(self) -> None:
        self.successes.append(time.monotonic())

    def failed(self, what: str) -> None:
        self.failures.append((time.monotonic(), what))


class SimAgent:
    """A provider's agent speaking the worker protocol through the balancer from ``ip`` (127.0.0.N): it
    registers one simulated A10, proves it, beats every interval the portal asks, long-polls for
    commands, and answers a Ray start with a node on its own address that its dashboard reports alive."""

    def __init__(self, url: str, token: str, ip: str, name: str, alive: AliveNodes) -> None:
        self.url, self.token, self.ip, self.name, self.alive = url, token, ip, name, alive
        self.dashboard = Dashboard(ip, alive)
        self.ray: dict = {"state": "none"}
        self.node_id: str | None = None
        self.handled: set[str] = set()
        self.results: dict[str, str] = {}  # command id -> kind, once answered
        self.lock = threading.Lock()
        self.beats, self.polls = Outage(), Outage()
        self.interval = float(HEARTBEAT_S)
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def client(self, timeout: float = 10) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/api/v1/worker",
            headers={"Authorization": f"Bearer {self.token}"},
            transport=httpx.HTTPTransport(local_address=self.ip),
            timeout=timeout,
        )

    def register_and_prove(self) -> None:
        with self.client(timeout=30) as http:
            gpu = {"index": 0, "uuid": f"GPU-{self.name}", "model": "NVIDIA A10", "memory_mb": 23_028}
            reply = http.post(
                "/register", json={"agent_version": "multi-process", "gpus": [gpu], "simulated": True}
            )
            assert reply.status_code == 200, reply.text
            assert reply.json()["verify"] is True
            self.prove(http)

    def prove(self, http: httpx.Client) -> None:
        """Proof of compute: the challenge, the commitment and the reveal are three requests, which the
        balancer sends to alternate processes (the challenge lives in Redis)."""
        challenge = http.get("/challenge").json()
        product = compute.multiply(challenge["seed"], challenge["n"], use_gpu=False).c
        hashes = [compute.row_hash(row) for row in product]
        committed = http.post(f"/challenge/{challenge['id']}", json={"row_hashes": hashes, "elapsed_ms": 5})
        assert committed.status_code == 200, committed.text
        rows = committed.json()["rows"]
        verdict = http.post(
            f"/challenge/{challenge['id']}", json={"rows": {str(i): product[i].tolist() for i in rows}}
        )
        assert verdict.status_code == 200 and verdict.json()["passed"] is True, verdict.text

    def start(self) -> None:
        for loop in (self.beat_loop, self.poll_loop):
            thread = threading.Thread(target=loop, daemon=True, name=f"{self.name}-{loop.__name__}")
            thread.start()
            self.threads.append(thread)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=40)
        self.dashboard.close()

    def beat_loop(self) -> None:
        with self.client() as http:
            while not self.stopping.is_set():
                busy = self.ray["state"] == "running"  # busy GPUs on an idle device are a fault
                sample = {"index": 0, "util_pct": 40 if busy else 0, "mem_used_mb": 2000 if busy else 0}
                sample |= {"temp_c": 55, "power_w": 120 if busy else 30}
                try:
                    reply = http.post("/heartbeat", json={"gpus": [sample], "ray": self.ray})
                    if reply.status_code != 200:
                        raise httpx.HTTPStatusError(
                            str(reply.status_code), request=reply.request, response=reply
                        )
                    self.beats.ok()
                    answer = reply.json()
                    self.interval = float(answer["next_heartbeat_s"])
                    for command in answer["commands"]:
                        self.handle(http, command)
                except httpx.HTTPError as error:
                    self.beats.failed(f"{type(error).__name__}: {error}"[:200])
                    self.stopping.wait(0.3)  # a real agent retries soon, as the portal's silence costs
                    continue
                self.stopping.wait(self.interval)

    def poll_loop(self) -> None:
        with self.client(timeout=40) as http:
            while not self.stopping.is_set():
                try:
                    reply = http.get("/commands", params={"wait": 10})
                    if reply.status_code != 200:
                        raise httpx.HTTPStatusError(
                            str(reply.status_code), request=reply.request, response=reply
                        )
                    self.polls.ok()
                    for command in reply.json():
                        self.handle(http, command)
                except httpx.HTTPError as error:
                    self.polls.failed(f"{type(error).__name__}: {error}"[:200])
                    self.stopping.wait(0.3)

    def handle(self, http: httpx.Client, command: dict) -> None:
        with self.lock:
            if command["id"] in self.handled:
                return  # delivered by the beat and the long-poll both: run once
            self.handled.add(command["id"])
        kind, payload = command["kind"], command["payload"]
        ok, detail = True, ""
        if kind in ("start_ray_head", "start_ray_worker"):
            self.node_id = f"{self.name}-{uuid.uuid4().hex[:8]}"
            status: dict = {"state": "running", "node_id": self.node_id}
            if kind == "start_ray_head":
                status["address"] = f"{self.ip}:{payload['gcs_port']}"
                status["dashboard_url"] = f"http://{self.ip}:{self.dashboard.port}"
            with self.alive.lock:
                self.alive.ids.add(self.node_id)
            self.ray = {"state": "running", "node_id": self.node_id}
            detail = json.dumps(status)
        elif kind == "stop_ray":
            with self.alive.lock:
                self.alive.ids.discard(self.node_id or "")
            self.ray, self.node_id = {"state": "none"}, None
        elif kind == "verify":
            self.prove(http)
        for _ in range(50):  # the answer must arrive, even while a process dies
            try:
                reply = http.post(f"/commands/{command['id']}/result", json={"ok": ok, "detail": detail})
                if reply.status_code == 204:
                    self.results[command["id"]] = kind
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{self.name} could not report {kind}")


# --- the API as customers see it -------------------------------------------------------------------


class Prober:
    """Reads a customer's clusters through the balancer every 50 ms, recording each answer."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.calls = Outage()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                reply = self.client.get("/clusters")
                if reply.status_code == 200:
                    self.calls.ok()
                else:
                    self.calls.failed(f"{reply.status_code}")
            except httpx.HTTPError as error:
                self.calls.failed(type(error).__name__)
            self.stopping.wait(0.05)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)


def sign_in(url: str, email: str) -> httpx.Client:
    client = httpx.Client(base_url=url + "/api/v1", timeout=30)
    reply = client.post("/auth/login", json={"email": email, "password": PASSWORD})
    assert reply.status_code == 200, reply.text
    client.headers["Authorization"] = f"Bearer {reply.json()['access_token']}"
    return client


# --- the whole set-up, shared by the tests -----------------------------------------------------------


@dataclass
class Kill:
    server: str
    pid: int
    at: float  # monotonic
    slot: int  # the period the counting starts from (its end)
    runs: dict[str, int]  # each counted actor's runs at that period's end
    claims_before: int  # how many times the schedulers claimed that period's tick, both processes up


@dataclass
class Stack:
    url: str
    engine: object
    cache: RedisCache
    data_dir: Path
    balancer: Balancer
    portals: dict[str, RunningPortal]
    workers: list[subprocess.Popen]
    agents: list[SimAgent]
    customers: list[str]  # emails
    alive: AliveNodes
    clients: dict[str, httpx.Client] = field(default_factory=dict)
    clusters: dict[str, list[str]] = field(default_factory=dict)  # customer email -> cluster ids
    deploys: list[tuple[str, int, dict]] = field(default_factory=list)  # email, status, body
    prober: Prober | None = None
    kill: Kill | None = None

    def customer(self, email: str) -> httpx.Client:
        if email not in self.clients:
            self.clients[email] = sign_in(self.url, email)
        return self.clients[email]

    def runs(self) -> dict[str, int]:
        return {
            actor: sum(
                int(self.cache.get(actor_runs_key(actor, outcome)) or 0) for outcome in ("success", "failure")
            )
            for actor in COUNTED_ACTORS
        }

    def claims(self, slot: int) -> int:
        return int(self.cache.get(f"tick:{COUNTED_ACTORS[0]}:{slot}") or 0)

    def kill_portal(self, server: str) -> Kill:
        """SIGKILL to one portal process and everything it started (by its PID, its process group's id),
        at the end of a period, from which the periodic actors' runs are counted."""
        if self.kill is not None:
            return self.kill
        slot = period_end()
        runs, claims = self.runs(), self.claims(slot)
        process = self.portals[server].process
        os.killpg(process.pid, signal.SIGKILL)
        at = time.monotonic()
        process.wait(timeout=10)
        self.kill = Kill(server, process.pid, at, slot, runs, claims)
        down = wait_until(
            lambda: self.balancer.status(server), lambda s: s.startswith("DOWN"), timeout_s=10, every_s=0.05
        )
        say(
            f"killed portal {server} (pid {process.pid}); HAProxy saw it {down} "
            f"after {time.monotonic() - at:.2f} s"
        )
        return self.kill


def period_end() -> int:
    """Sleep to 90 % into the current period (or the next, if past it); that period's number. By then the
    period's tick has long been sent and run, and the next has not begun."""
    now = time.time()
    slot = int(now // PERIOD_S)
    target = slot * PERIOD_S + 0.9 * PERIOD_S
    if now > target - 0.2:
        slot, target = slot + 1, target + PERIOD_S
    time.sleep(target - now)
    return slot


def forget_cache(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def start_task_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(VENV_BIN / "portal"), "worker", "--processes", "1", "--threads", "4"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def make_customers(engine, count: int) -> list[str]:
    emails = []
    with session_scope(engine) as session:
        for number in range(count):
            email = f"customer-{number}-{uuid.uuid4().hex[:6]}@example.com"
            user = users.create_user(session, email=email, password=PASSWORD, roles=[Role.CUSTOMER])
            ledger.grant_credits(
                session,
                user_id=user.id,
                amount_micro=100_000_000,
                reason="multi-process test",
                idempotency_key=f"multi-process:{email}",
            )
            emails.append(email)
    return emails


@pytest.fixture(scope="module")
def stack(
    postgres_available: None,
    redis_url: str,
    rabbitmq_available: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    haproxy = find_haproxy()
    started = time.monotonic()
    # The pages the session built for PORTAL_RUN_PORT call back on it: the balancer listens there, so both
    # processes serve that build as it is (portal run builds for the public URL's port).
    lb_port = PORTAL_RUN_PORT
    lb_url = f"http://127.0.0.1:{lb_port}"
    home = tmp_path_factory.mktemp("multi-process")
    data_dir = home / "shared"  # one local chain and treasury for every process, as one volume would be
    prefix = f"portal-test:{uuid.uuid4().hex[:10]}:"
    with private_database() as database_url, private_vhost() as broker_url:
        migrations.upgrade(database_url)
        env = {
            "PORTAL_DATABASE_URL": database_url,
            "PORTAL_REDIS_URL": redis_url,
            "PORTAL_BROKER_URL": broker_url,
            "PORTAL_CACHE_PREFIX": prefix,
            "PORTAL_DATA_DIR": str(data_dir),
            # The tokens made here must hash the same in every process.
            "PORTAL_SECRET_KEY": get_settings().signing_key(),
            "PORTAL_PUBLIC_URL": lb_url,
            "PORTAL_TRUSTED_PROXIES": '["127.0.0.1"]',
            "PORTAL_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
            "PORTAL_METERING_INTERVAL_S": str(PERIOD_S),
            "PORTAL_SETTLEMENT_INTERVAL_S": "5",
            "PORTAL_PAYOUT_THRESHOLD_MICRO": "1000",
            "PORTAL_RATE_LIMIT_PER_MINUTE": "100000",
            "GRANIAN_WORKERS": str(WEB_WORKERS),
        }
        engine = build_engine(database_url)
        portals: dict[str, RunningPortal] = {}
        workers: list[subprocess.Popen] = []
        agents: list[SimAgent] = []
        balancer: Balancer | None = None
        stack: Stack | None = None
        try:
            for name in SERVERS:  # one after the other: the first builds the pages if they are not current
                t0 = time.monotonic()
                portals[name] = start_portal(home / name, "--no-demo", env=env, port=free_port())
                say(f"portal {name} serving on {portals[name].url} after {time.monotonic() - t0:.1f} s")
            for number in range(2):
                workers.append(start_task_worker({**os.environ, **env}, home / f"worker-{number}.log"))
            t0 = time.monotonic()
            balancer = start_haproxy(
                haproxy, lb_port, {name: int(p.url.rsplit(":", 1)[1]) for name, p in portals.items()}
            )
            say(f"HAProxy on {lb_url} saw both processes up after {time.monotonic() - t0:.1f} s")
            alive = AliveNodes()
            t0 = time.monotonic()
            for number in range(DEVICES):
                _, token = add_device(engine, name=f"rig-{number}", payout_wallet=True)
                agents.append(SimAgent(lb_url, token, f"127.0.0.{11 + number}", f"rig-{number}", alive))
            for agent in agents:
                agent.register_and_prove()
                agent.start()
            say(
                f"{DEVICES} agents registered and proved through the balancer "
                f"in {time.monotonic() - t0:.1f} s"
            )
            stack = Stack(
                url=lb_url,
                engine=engine,
                cache=RedisCache(redis_url, prefix),
                data_dir=data_dir,
                balancer=balancer,
                portals=portals,
                workers=workers,
                agents=agents,
                customers=make_customers(engine, CUSTOMERS),
                alive=alive,
            )
            say(f"set up in {time.monotonic() - started:.1f} s")
            yield stack
        finally:
            if stack is not None and stack.prober is not None:
                stack.prober.stop()
            for agent in agents:
                agent.stop()
            if stack is not None:
                for client in stack.clients.values():
                    client.close()
            if balancer is not None:
                stop_process_group(balancer.process, signal.SIGTERM)
                shutil.rmtree(balancer.home, ignore_errors=True)
            for portal in portals.values():
                stop_process_group(portal.process)
            for worker in workers:
                stop_process_group(worker, signal.SIGTERM)
            engine.dispose()
            forget_cache(prefix)


def cluster_row(stack: Stack, cluster_id: str) -> Cluster:
    with session_scope(stack.engine) as session:
        found = session.get(Cluster, uuid.UUID(cluster_id))
        assert found is not None
        session.expunge(found)
        return found


def all_clusters(stack: Stack) -> list[str]:
    return [cluster for owned in stack.clusters.values() for cluster in owned]


@pytest.fixture(scope="module")
def deployed(stack: Stack) -> Stack:
    """Ten deploys at once, two from each customer, through both processes, for six one-GPU devices; the
    six clusters then run."""
    for email in stack.customers:
        stack.customer(email)  # signed in first: the deploys then start together
    before = stack.balancer.served()
    outcomes: list[tuple[str, int, dict]] = []
    retried: list[int] = []
    barrier = threading.Barrier(CUSTOMERS * DEPLOYS_PER_CUSTOMER)

    def deploy(index: int) -> None:
        email = stack.customers[index % CUSTOMERS]
        with httpx.Client(base_url=stack.url + "/api/v1", timeout=60) as client:
            client.headers["Authorization"] = stack.customer(email).headers["Authorization"]
            spec = {"name": f"c{index}", "gpu_model": GPU_MODEL, "gpu_count": 1, "duration_hours": 1}
            barrier.wait()
            reply = client.post("/clusters", json=spec)
            # "Busy, retry" (others held the devices for the moment; nothing changed) is sent again, as
            # the CLI does; each answer must still be a booking or a refusal for capacity.
            for _ in range(5):
                if reply.status_code != 503 or reply.json()["error"]["code"] != "placement_busy":
                    break
                retried.append(index)
                time.sleep(float(reply.headers["Retry-After"]))
                reply = client.post("/clusters", json=spec)
        outcomes.append((email, reply.status_code, reply.json()))

    t0 = time.monotonic()
    threads = [threading.Thread(target=deploy, args=(i,)) for i in range(CUSTOMERS * DEPLOYS_PER_CUSTOMER)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - t0
    after = stack.balancer.served()
    for email, status, body in outcomes:
        if status == 202:
            stack.clusters.setdefault(email, []).append(body["id"])
    say(
        f"{len(outcomes)} deploys at once answered in {elapsed:.2f} s ({len(retried)} sent again after "
        "'busy'); the processes were sent "
        + ", ".join(f"{name}: {after[name] - before[name]}" for name in SERVERS)
        + " requests meanwhile"
    )
    stack.deploys = outcomes
    t0 = time.monotonic()

    def states() -> list[str]:
        return [cluster_row(stack, cluster).state for cluster in all_clusters(stack)]

    wait_until(
        states, lambda s: s and all(state == ClusterState.RUNNING for state in s), timeout_s=90, every_s=0.2
    )
    say(f"{len(all_clusters(stack))} clusters running {time.monotonic() - t0:.1f} s after the deploys")
    return stack


# --- the tests ---------------------------------------------------------------------------------------


def test_agents_register_prove_beat_and_long_poll_through_both_processes(stack: Stack):
    with session_scope(stack.engine) as session:
        devices = session.exec(select(Device)).all()
        assert len(devices) == DEVICES
        assert all(d.state == DeviceState.READY and d.verified_at is not None for d in devices), [
            (d.name, d.state, d.state_reason) for d in devices
        ]
        # Each agent's address is its own (X-Forwarded-For from a trusted proxy), not the balancer's.
        assert sorted(d.address or "" for d in devices) == sorted(a.ip for a in stack.agents)
    offers = httpx.get(stack.url + "/api/v1/market/offers", params={"gpu_model": GPU_MODEL}).json()
    assert sum(offer["gpus"] for offer in offers) == DEVICES
    wait_until(
        lambda: all(len(a.beats.successes) >= 2 and a.polls.successes for a in stack.agents), timeout_s=30
    )
    served = stack.balancer.served()
    assert all(served[name] > 0 for name in SERVERS), served
    say(f"requests each process was sent so far: {served}")


def test_concurrent_deploys_through_both_processes_book_each_device_once(deployed: Stack):
    stack = deployed
    statuses = sorted(status for _, status, _ in stack.deploys)
    refused = [body["error"]["code"] for _, status, body in stack.deploys if status != 202]
    assert statuses == [202] * DEVICES + [409] * (CUSTOMERS * DEPLOYS_PER_CUSTOMER - DEVICES), statuses
    assert set(refused) == {"capacity_short"}
    with session_scope(stack.engine) as session:
        nodes = session.exec(select(ClusterNode)).all()
        booked = [node.device_id for node in nodes]
        assert len(nodes) == DEVICES and len(set(booked)) == DEVICES, "a device was booked twice"
        assert all(session.get(Device, d).state == DeviceState.HIRED for d in booked)
    for email, owned in stack.clusters.items():
        client = stack.customer(email)
        for cluster_id in owned:
            before = client.get(f"/clusters/{cluster_id}").json()
            assert before["state"] == "running" and before["escrow_micro"] > 0, before
            reply = client.post(f"/clusters/{cluster_id}/extend", json={"hours": 1})
            assert reply.status_code == 200, reply.text
            extended = reply.json()
            assert extended["escrow_micro"] > before["escrow_micro"]
    assert ledger_problems(stack) == []


class PageSocket:
    """What a page's event websockets did, with when (monotonic): for the figures, and a failure's message."""

    def __init__(self, page) -> None:
        self.page = page
        self.urls: list[str] = []
        self.log: list[str] = []
        self.hydrated: list[float] = []  # a connection's state arrived, the page is served again
        self.new_tokens: list[float] = []
        page.on("websocket", self.opened)

    def opened(self, ws) -> None:
        self.urls.append(ws.url)
        self.note("websocket opened")
        ws.on("framereceived", self.received)
        ws.on("close", lambda _: self.note("websocket closed"))

    def received(self, frame: object) -> None:
        text = str(frame)
        if '"is_hydrated_rx_state_":true' in text:
            self.hydrated.append(time.monotonic())
        if '"new_token"' in text:
            self.new_tokens.append(time.monotonic())
        self.note(f"got {text[:160]}")

    def note(self, what: str) -> None:
        self.log.append(f"{time.monotonic():.2f} {what}")

    def served_again_after(self, moment: float, timeout_s: float = 30) -> float:
        """When the page was served again after ``moment``. Playwright hands events over only while it
        runs a call, so this waits in the page."""
        deadline = time.monotonic() + timeout_s
        while not [t for t in self.hydrated if t > moment]:
            assert time.monotonic() < deadline, "the page was not served again:\n" + "\n".join(self.log[-30:])
            self.page.wait_for_timeout(50)
        return next(t for t in self.hydrated if t > moment)


@pytest.mark.browser
def test_a_signed_in_browser_on_the_killed_process_carries_on_through_the_other(deployed: Stack, page):
    from playwright.sync_api import expect

    stack = deployed
    email = next(email for email in stack.customers if stack.clusters.get(email))
    cluster_id = stack.clusters[email][0]
    sockets = PageSocket(page)
    page.goto(f"{stack.url}/login?next=/cluster/{cluster_id}")
    page.locator("#email").fill(email)
    page.locator("#password").fill(PASSWORD)
    page.locator("#submit-sign-in").click()
    expect(page).to_have_url(re.compile(rf"/cluster/{cluster_id}/?$"), timeout=30_000)
    expect(page.locator("#cluster-state")).to_have_text("running", timeout=30_000)
    # The page's events go through the balancer, not straight to a process.
    assert sockets.urls and all(f":{PORTAL_RUN_PORT}/" in url for url in sockets.urls), sockets.urls
    holding = wait_until(stack.balancer.holding_websockets, timeout_s=10, what="the page's websocket")
    assert len(holding) == 1, holding
    stack.prober = stack.prober or Prober(stack.customer(stack.customers[0]))
    kill = stack.kill_portal(holding[0])

    # The page reconnects through the balancer to the other process, which serves it from Redis and the
    # session cookie; then the customer terminates the cluster there, without reloading the page.
    served = sockets.served_again_after(kill.at)
    page.locator("#terminate-button").click()
    page.get_by_role("alertdialog").get_by_role("button", name="Terminate").click()
    try:
        expect(page.locator("#cluster-state")).to_have_text("terminated", timeout=30_000)
    except AssertionError as error:
        raise AssertionError(
            f"{error}\nkilled at {kill.at:.2f}; the cluster is {cluster_row(stack, cluster_id).state}; "
            "the page's websockets:\n" + "\n".join(sockets.log[-40:])
        ) from None
    renewed = [t for t in sockets.new_tokens if t > kill.at]
    say(
        f"the page on the killed process was served again by portal {other(kill.server)} "
        f"{served - kill.at:.2f} s after the kill"
        + (" under a new token (the dead process's socket record still held the old one)" if renewed else "")
        + f", and terminated its cluster there {time.monotonic() - kill.at:.1f} s after the kill"
    )
    assert wait_until(stack.balancer.holding_websockets, timeout_s=10) == [other(kill.server)]


def other(server: str) -> str:
    return next(name for name in SERVERS if name != server)


@pytest.fixture(scope="module")
def killed(deployed: Stack) -> Kill:
    """Portal a killed while the clusters run, unless the browser's test killed the one it used."""
    stack = deployed
    stack.prober = stack.prober or Prober(stack.customer(stack.customers[0]))
    time.sleep(1)  # the prober's calls before the kill
    return stack.kill_portal("a")


def test_the_api_and_the_agents_carry_on_through_the_other_process(deployed: Stack, killed: Kill):
    stack = deployed
    survivor = other(killed.server)
    # Some seconds of work on the survivor alone: beats, long-polls and the customer's reads.
    served_before = stack.balancer.served()[survivor]
    time.sleep(max(0.0, killed.at + 3 * HEARTBEAT_S - time.monotonic()))
    assert stack.prober is not None
    calls = stack.prober.calls
    after = [t for t in calls.successes if t > killed.at]
    assert after, "no API call succeeded after the kill"
    failed = [(t - killed.at, what) for t, what in calls.failures if t > killed.at - 1]
    # Once one call got through the other process, every later one did.
    assert not [f for f in failed if f[0] > after[0] - killed.at], failed
    say(
        f"API: the first call after the kill answered {after[0] - killed.at:.3f} s after it; "
        f"{len(failed)} of {len(after) + len(failed)} calls failed around it {failed[:5]}"
    )
    gaps, failed_beats, failed_polls = [], 0, 0
    for agent in stack.agents:
        beats = agent.beats.successes
        assert [t for t in beats if t > killed.at], f"{agent.name} has not beaten since the kill"
        gaps += [b - a for a, b in itertools.pairwise(beats) if b > killed.at - 1]
        failed_beats += sum(t > killed.at - 1 for t, _ in agent.beats.failures)
        failed_polls += sum(t > killed.at - 1 for t, _ in agent.polls.failures)
    say(
        f"agents: the longest gap between two beats across the kill was {max(gaps):.2f} s (they beat every "
        f"{HEARTBEAT_S} s, offline after 3 missed); {failed_beats} beats and {failed_polls} long-polls failed"
    )
    # Nothing was lost meanwhile: no device went offline, no node was lost, no cluster degraded.
    with session_scope(stack.engine) as session:
        moves = session.exec(
            select(StateTransition.entity_type, StateTransition.to_state, StateTransition.reason).where(
                col(StateTransition.to_state).in_(["offline", "degraded", "failed", "lost"])
            )
        ).all()
        assert moves == []
        assert session.exec(select(FaultEvent.kind, FaultEvent.message)).all() == []
    assert stack.balancer.served()[survivor] > served_before

    # The customers terminate what still runs, through the survivor; stop commands reach the agents by
    # their long-polls on it, woken through Redis by the task workers.
    t0 = time.monotonic()
    for email, owned in stack.clusters.items():
        client = stack.customer(email)
        for cluster_id in owned:
            if client.get(f"/clusters/{cluster_id}").json()["state"] == "running":
                reply = client.delete(f"/clusters/{cluster_id}")
                assert reply.status_code == 202, reply.text

    def settled() -> list[tuple[str, str]]:
        with session_scope(stack.engine) as session:
            return [
                (d.name, d.state) for d in session.exec(select(Device)).all() if d.state != DeviceState.READY
            ] + [
                (str(c.id), c.state)
                for c in session.exec(select(Cluster)).all()
                if c.state != ClusterState.TERMINATED
            ]

    wait_until(
        settled, lambda rest: rest == [], timeout_s=60, what="every cluster terminated, every device ready"
    )
    say(f"every cluster terminated and every device ready {time.monotonic() - t0:.1f} s after the requests")
    stopped = sum(kind == "stop_ray" for agent in stack.agents for kind in agent.results.values())
    assert stopped == DEVICES and not stack.alive.ids
    for email in stack.customers:
        balance = stack.customer(email).get("/billing/balance").json()
        assert balance["escrow_micro"] == 0, (email, balance)
    stack.prober.stop()


def test_periodic_actors_ran_once_a_period_across_the_processes(deployed: Stack, killed: Kill):
    stack = deployed
    slot = period_end()
    while slot - killed.slot < 4:  # a few periods with one process alone
        slot = period_end()
    runs = stack.runs()
    periods = slot - killed.slot
    counted = {actor: runs[actor] - killed.runs[actor] for actor in COUNTED_ACTORS}
    # Every ticker (each web worker of each process, every second) claims each period; one claim sends.
    claims = {number: stack.claims(number) for number in range(killed.slot, slot + 1)}
    say(
        f"over {periods} periods of {PERIOD_S} s across the kill: runs {counted}; the first actor's tick was "
        f"claimed {killed.claims_before} times in a period with both processes up and "
        f"{stack.claims(slot)} with one ({WEB_WORKERS} web workers each, ticking every second)"
    )
    assert counted == dict.fromkeys(COUNTED_ACTORS, periods), f"claims of each period: {claims}"
    # Both processes were ticking, and only one message went out each period.
    assert killed.claims_before > stack.claims(slot) >= 1


def ledger_problems(stack: Stack) -> list[str]:
    with session_scope(stack.engine) as session:
        return ledger.verify_books(session)


def test_the_books_balance_and_payouts_landed_once(deployed: Stack, killed: Kill):
    stack = deployed
    settings = settings_for(data_dir=stack.data_dir)

    def unsettled() -> list[str]:
        with session_scope(stack.engine) as session:
            return [p.state for p in session.exec(select(Payout)).all() if p.state != PayoutState.CONFIRMED]

    wait_until(unsettled, lambda rest: rest == [], timeout_s=60, what="every payout confirmed")
    with session_scope(stack.engine) as session:
        assert ledger.verify_books(session) == []
        charged_total = 0
        for email in stack.customers:
            user = session.exec(select(User).where(User.email == email)).one()
            usage = session.exec(
                select(func.coalesce(func.sum(UsageRecord.amount_micro), 0)).where(
                    UsageRecord.customer_id == user.id
                )
            ).one()
            accounts = {
                a.kind: a.balance_micro
                for a in session.exec(select(LedgerAccount).where(LedgerAccount.owner_id == user.id)).all()
            }
            # What each customer paid is their usage, to the micro-unit; nothing is left in escrow.
            assert accounts.get(AccountKind.CUSTOMER_ESCROW, 0) == 0
            assert 100_000_000 - accounts[AccountKind.CUSTOMER_AVAILABLE] == usage, email
            charged_total += usage
        # Each node's usage lines follow one another, none overlapping: metered once per period.
        for node in session.exec(select(ClusterNode)).all():
            lines = session.exec(
                select(UsageRecord)
                .where(UsageRecord.node_id == node.id)
                .order_by(col(UsageRecord.period_start))
            ).all()
            assert lines, f"node {node.id} was never metered"
            assert all(a.period_end <= b.period_start for a, b in itertools.pairwise(lines))
        payouts = session.exec(select(Payout)).all()
        paid: dict[str, int] = {}
        for payout in payouts:
            paid[payout.wallet_address] = paid.get(payout.wallet_address, 0) + payout.amount_micro
        fees = session.exec(
            select(LedgerAccount.balance_micro).where(LedgerAccount.kind == AccountKind.PLATFORM_FEES)
        ).first()
    settlement = treasury.settlement(settings)
    on_chain = {
        wallet: settlement.chain.token_balance(
            chain.token_account(Pubkey.from_string(wallet), settlement.treasury.mint)
        )
        or 0
        for wallet in paid
    }
    assert on_chain == paid, "a payout landed twice or not at all"
    say(
        f"books balance: customers charged {charged_total} micro-USD for usage, platform fees {fees}, "
        f"{len(payouts)} payouts of {sum(paid.values())} landed once on the chain"
    )
