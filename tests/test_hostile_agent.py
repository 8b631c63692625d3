"""A hostile provider's agent: a plain HTTP client holding a real device token, saying what suits it.

It re-registers with GPUs it never proved (idle and hired), reports Ray addresses on hosts other than its
own, answers challenges for other hardware, replays answers, floods command results and claims another
device's Ray node. Every attempt must leave the device off the market or its node dropped, and the portal
must call nothing but the device's own registered address. The agent connects from 127.0.0.2, so a
"foreign" host is 127.0.0.1: everything stays on loopback.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
from solders.keypair import Keypair
from sqlmodel import select

from gpu_pool import compute
from portal.config import Environment, MeshKind
from portal.infra.db import session_scope
from portal.models import (
    Cluster,
    ClusterNode,
    ClusterState,
    Device,
    DeviceState,
    FaultEvent,
    NodeRole,
    NodeState,
    Role,
)
from portal.models.base import utcnow
from portal.parts import AppParts
from portal.services.money import ledger
from portal.services.providers import commands, node_addresses, telemetry
from portal.services.rentals import clusters, provisioning
from tests import factories
from tests.factories import make_device, make_user
from tests.servers import ServerThread, portal_app

AGENT_IP = "127.0.0.2"
A10 = {"index": 0, "uuid": "GPU-a10-0", "model": "NVIDIA A10", "memory_mb": 23_028}
H200S = [
    {"index": i, "uuid": f"GPU-h200-{i}", "model": "NVIDIA H200", "memory_mb": 143_771} for i in range(8)
]


class FakeAgent:
    """Speaks the worker protocol from ``AGENT_IP`` with a device token, and nothing else."""

    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.Client(
            base_url=f"{url}/api/v1/worker",
            headers={"Authorization": f"Bearer {token}"},
            transport=httpx.HTTPTransport(local_address=AGENT_IP),
            timeout=10,
        )

    def register(self, gpus: list[dict], *, simulated: bool = True, **extra: object) -> dict:
        body = {"agent_version": "hostile", "gpus": gpus, "simulated": simulated, **extra}
        reply = self.http.post("/register", json=body)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def commit(self, challenge: dict) -> tuple[np.ndarray, list[int]]:
        product = compute.multiply(challenge["seed"], challenge["n"], use_gpu=False).c
        hashes = [compute.row_hash(row) for row in product]
        reply = self.http.post(f"/challenge/{challenge['id']}", json={"row_hashes": hashes, "elapsed_ms": 5})
        assert reply.status_code == 200, reply.text
        return product, reply.json()["rows"]

    def reveal(self, challenge: dict, product: np.ndarray, rows: list[int]) -> httpx.Response:
        return self.http.post(
            f"/challenge/{challenge['id']}", json={"rows": {str(i): product[i].tolist() for i in rows}}
        )

    def prove(self) -> dict:
        challenge = self.http.get("/challenge").json()
        product, rows = self.commit(challenge)
        return self.reveal(challenge, product, rows).json()


@pytest.fixture
def served(portal_api) -> Iterator[tuple[ServerThread, object]]:
    yield portal_api


def new_device(parts) -> tuple[uuid.UUID, str]:
    return factories.add_device(parts.engine, payout_wallet=True)  # hireable once proven


def device_row(parts, device_id: uuid.UUID) -> Device:
    with session_scope(parts.engine) as session:
        return session.get(Device, device_id)


def offers(server: ServerThread, model: str) -> list[dict]:
    reply = httpx.get(f"{server.url}/api/v1/market/offers", params={"gpu_model": model})
    assert reply.status_code == 200
    return reply.json()


def faults(parts, device_id: uuid.UUID) -> list[str]:
    with session_scope(parts.engine) as session:
        return [f.kind for f in session.exec(select(FaultEvent).where(FaultEvent.device_id == device_id))]


# --- hardware is what was proven -------------------------------------------------------------------


def test_a_ready_device_reregistering_other_gpus_leaves_the_market_until_it_proves_them(served):
    server, parts = served
    device_id, token = new_device(parts)
    agent = FakeAgent(server.url, token)
    assert agent.register([A10])["verify"] is True
    assert agent.prove()["passed"] is True
    assert device_row(parts, device_id).state == DeviceState.READY
    assert [offer["gpus"] for offer in offers(server, "A10-24GB")] == [1]
    # A restart on the same machine changes nothing.
    assert agent.register([A10]) | {"device_id": None} == {
        "device_id": None,
        "state": "ready",
        "next_heartbeat_s": 1,
        "verify": False,
    }

    answer = agent.register(H200S, simulated=False)

    assert answer["state"] == "verifying" and answer["verify"] is True
    device = device_row(parts, device_id)
    assert (device.state, device.verified_at, device.gpu_count) == (DeviceState.VERIFYING, None, 8)
    assert "GPUs changed" in device.state_reason
    assert offers(server, "H200-141GB") == [] and offers(server, "A10-24GB") == []
    assert faults(parts, device_id) == ["hardware_changed"]
    # Coming back to the proven GPUs is a change too: only a new proof puts it back on the market.
    assert agent.register([A10])["verify"] is True
    assert device_row(parts, device_id).state == DeviceState.VERIFYING


def test_the_simulated_flag_is_part_of_the_proven_hardware(served):
    server, parts = served
    device_id, token = new_device(parts)
    agent = FakeAgent(server.url, token)
    agent.register([A10], simulated=True)
    assert agent.prove()["passed"] is True
    # The small simulated proof passed; the same GPUs claimed real must prove the real size.
    assert agent.register([A10], simulated=False)["verify"] is True
    device = device_row(parts, device_id)
    assert (device.state, device.simulated, device.verified_at) == (DeviceState.VERIFYING, False, None)


def test_a_proof_started_for_other_gpus_does_not_vouch_for_the_new_ones(served):
    server, parts = served
    device_id, token = new_device(parts)
    agent = FakeAgent(server.url, token)
    agent.register([A10])
    challenge = agent.http.get("/challenge").json()
    product, rows = agent.commit(challenge)
    agent.register([{**A10, "uuid": "GPU-another"}])  # the GPUs change between commit and reveal

    verdict = agent.reveal(challenge, product, rows).json()

    assert verdict["passed"] is False and verdict["reason"] == "the GPUs changed during the proof"
    assert device_row(parts, device_id).state == DeviceState.VERIFYING


def test_replayed_foreign_and_wrong_seed_answers_are_refused(served):
    server, parts = served
    device_id, token = new_device(parts)
    other_id, other_token = new_device(parts)
    agent, other = FakeAgent(server.url, token), FakeAgent(server.url, other_token)
    agent.register([A10])
    other.register([A10])
    challenge = agent.http.get("/challenge").json()
    # Another device cannot answer this device's challenge.
    hashes = {"row_hashes": ["0" * 64] * challenge["n"], "elapsed_ms": 1}
    assert other.http.post(f"/challenge/{challenge['id']}", json=hashes).status_code == 404
    # Rows of another seed fail Freivalds' check.
    wrong = {**challenge, "seed": challenge["seed"] + 1}
    product, rows = agent.commit(wrong | {"id": challenge["id"]})
    verdict = agent.reveal(challenge, product, rows).json()
    assert verdict["passed"] is False and "Freivalds" in verdict["reason"]
    # The answer cannot be replayed, right or wrong.
    assert agent.reveal(challenge, product, rows).status_code == 404
    assert device_row(parts, device_id).state == DeviceState.VERIFYING
    assert device_row(parts, other_id).state == DeviceState.VERIFYING


# --- a hired device ----------------------------------------------------------------------------------


def hired_cluster(parts, agent_device: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID]:
    """A 2-GPU cluster booked on a head device and ``agent_device`` (ready and proven) as its worker, with
    a spare device put on the market after the deploy; returns the cluster and the customer."""
    with session_scope(parts.engine) as session:
        provider = make_user(session, Role.PROVIDER)
        provider.wallet_address = str(Keypair().pubkey())
        head = make_device(session, provider.id, state=DeviceState.READY, model="A10-24GB", simulated=True)
        head.verified_at, head.hourly_price_micro = utcnow(), 400_000
        agent = session.get(Device, agent_device)
        agent.hourly_price_micro, agent.last_heartbeat_at = 500_000, utcnow()
        customer = make_user(session, Role.CUSTOMER)
        ledger.grant_credits(
            session, user_id=customer.id, amount_micro=100_000_000, reason="test", idempotency_key="hostile"
        )
        spec = clusters.ClusterSpec(name="c", gpu_model="A10-24GB", gpu_count=2, duration_hours=2)
        cluster = clusters.create(session, parts.settings, customer.id, spec)
        spare = make_device(session, provider.id, state=DeviceState.READY, model="A10-24GB", simulated=True)
        spare.verified_at, spare.hourly_price_micro = utcnow(), 400_000
    return cluster.id, customer.id


def roles(parts, cluster_id: uuid.UUID) -> tuple[ClusterNode, ClusterNode]:
    with session_scope(parts.engine) as session:
        found = {node.role: node for node in clusters.nodes_of(session, cluster_id)}
    return found[NodeRole.HEAD], found[NodeRole.WORKER]


class SeenHead:
    def __init__(self) -> None:
        self.alive: set[str] = set()

    def __call__(self, dashboard_url: str) -> set[str]:
        return self.alive


def answer_start(parts, device_id: uuid.UUID, detail: dict | Callable[[dict], dict]) -> None:
    """Answer the device's start command with ``detail``, or with what it makes of the command's payload."""
    with session_scope(parts.engine) as session:
        (command,) = commands.take(session, device_id)
        assert command.kind in ("start_ray_head", "start_ray_worker")
        answer = detail(command.payload) if callable(detail) else detail
        commands.complete(session, device_id, command.id, ok=True, detail=json.dumps(answer))


def advance(parts, cluster_id: uuid.UUID, head: SeenHead) -> str | None:
    return provisioning.advance(parts.engine, parts.settings, parts.wakeups, cluster_id, head)


def head_status(payload: dict) -> dict:
    """A head on loopback at the GCS port the portal allocated it."""
    return {
        "state": "running",
        "node_id": "head-node",
        "address": f"127.0.0.1:{payload['gcs_port']}",
        "client_address": "ray://127.0.0.1:40001",
        "dashboard_url": "http://127.0.0.1:48265",
    }


def test_a_hired_device_reregistering_other_gpus_loses_its_node_and_the_cluster_heals(served):
    server, parts = served
    device_id, token = new_device(parts)
    agent = FakeAgent(server.url, token)
    agent.register([A10])
    assert agent.prove()["passed"] is True
    cluster_id, _ = hired_cluster(parts, device_id)
    head = SeenHead()
    advance(parts, cluster_id, head)
    head_node, worker_node = roles(parts, cluster_id)
    assert worker_node.device_id == device_id
    answer_start(parts, head_node.device_id, head_status)
    advance(parts, cluster_id, head)
    answer_start(parts, device_id, {"state": "running", "node_id": "worker-node"})
    head.alive = {"head-node", "worker-node"}
    assert advance(parts, cluster_id, head) == ClusterState.RUNNING
    # Restarting its agent on the same GPUs keeps the node.
    assert agent.register([A10])["verify"] is False
    assert device_row(parts, device_id).state == DeviceState.HIRED

    assert agent.register([{**A10, "model": "NVIDIA A100 80GB", "memory_mb": 81_920}])["verify"] is True

    assert device_row(parts, device_id).state == DeviceState.VERIFYING
    assert advance(parts, cluster_id, head) == ClusterState.DEGRADED
    with session_scope(parts.engine) as session:
        nodes = clusters.nodes_of(session, cluster_id)
        lost = next(n for n in nodes if n.device_id == device_id)
        assert lost.state == NodeState.RELEASED and "GPUs changed" in lost.state_reason
        replacement = next(n for n in nodes if n.state == NodeState.STARTING)
        assert replacement.device_id not in (device_id, head_node.device_id)
        assert ledger.verify_books(session) == []
        assert session.get(Cluster, cluster_id).state == ClusterState.DEGRADED
    assert "node_lost" in faults(parts, device_id) and "hardware_changed" in faults(parts, device_id)
    # The device stays off the market while hired GPUs are unproven, and never returns to its cluster.
    assert offers(server, "A100-80GB") == []


def test_a_node_claiming_another_nodes_ray_id_is_dropped(served):
    server, parts = served
    device_id, token = new_device(parts)
    agent = FakeAgent(server.url, token)
    agent.register([A10])
    agent.prove()
    cluster_id, _ = hired_cluster(parts, device_id)
    head = SeenHead()
    advance(parts, cluster_id, head)
    head_node, _ = roles(parts, cluster_id)
    answer_start(parts, head_node.device_id, head_status)
    advance(parts, cluster_id, head)
    # The worker runs nothing and names the head's node: the head would see "it" alive.
    answer_start(parts, device_id, {"state": "running", "node_id": "head-node"})
    head.alive = {"head-node"}

    assert advance(parts, cluster_id, head) == ClusterState.PROVISIONING

    with session_scope(parts.engine) as session:
        dropped = next(n for n in clusters.nodes_of(session, cluster_id) if n.device_id == device_id)
    assert dropped.state == NodeState.RELEASED and "another node's" in dropped.state_reason


# --- addresses: the portal calls only the device's own -----------------------------------------------


class Listener:
    """An HTTP listener that counts what reaches it and answers as a Ray head's state API would."""

    def __init__(self, host: str, alive: list[str]) -> None:
        self.requests: list[str] = []
        listener = self
        body = json.dumps(
            {"data": {"result": {"result": [{"node_id": n, "state": "ALIVE"} for n in alive]}}}
        ).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                listener.requests.append(self.path)
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Listener:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def one_gpu_cluster(parts, key: str) -> uuid.UUID:
    """A 1-GPU A10 cluster: the agent's device, the only one on the market, is its head."""
    with session_scope(parts.engine) as session:
        customer = make_user(session, Role.CUSTOMER)
        ledger.grant_credits(
            session, user_id=customer.id, amount_micro=10_000_000, reason="t", idempotency_key=key
        )
        spec = clusters.ClusterSpec(name="c", gpu_model="A10-24GB", gpu_count=1, duration_hours=1)
        return clusters.create(session, parts.settings, customer.id, spec).id


def test_a_head_reporting_ray_addresses_on_another_host_is_dropped_and_never_called(served):
    server, parts = served
    head_id, token = new_device(parts)
    agent = FakeAgent(server.url, token)
    agent.register([A10])
    agent.prove()
    cluster_id = one_gpu_cluster(parts, "foreign")
    with Listener("127.0.0.1", ["head-node"]) as foreign:
        provisioning.advance(parts.engine, parts.settings, parts.wakeups, cluster_id)
        answer_start(
            parts,
            head_id,
            {
                "state": "running",
                "node_id": "head-node",
                "address": f"127.0.0.1:{foreign.port}",
                "dashboard_url": f"http://127.0.0.1:{foreign.port}",
            },
        )

        state = provisioning.advance(parts.engine, parts.settings, parts.wakeups, cluster_id)

        assert foreign.requests == []
    with session_scope(parts.engine) as session:
        dropped = clusters.nodes_of(session, cluster_id)[0]
        cluster = session.get(Cluster, cluster_id)
    assert state == ClusterState.FAILED  # no other device could replace it
    assert dropped.state == NodeState.RELEASED
    assert "is not the device's registered address (127.0.0.2)" in dropped.state_reason
    assert cluster.dashboard_url is None and cluster.ray_address is None


def test_a_head_listening_elsewhere_than_the_port_the_portal_allocated_is_dropped(served):
    """Its workers were sent to the allocated address: a head elsewhere (even on its own host) is not
    their head, and the portal never calls it."""
    server, parts = served
    head_id, token = new_device(parts)
    agent = FakeAgent(server.url, token)
    agent.register([A10])
    agent.prove()
    cluster_id = one_gpu_cluster(parts, "moved")
    with Listener(AGENT_IP, ["moved-head"]) as moved:
        provisioning.advance(parts.engine, parts.settings, parts.wakeups, cluster_id)
        with session_scope(parts.engine) as session:
            allocated = session.get(Cluster, cluster_id).ray_address
        assert allocated and allocated.startswith(f"{AGENT_IP}:") and allocated != f"{AGENT_IP}:{moved.port}"
        answer_start(
            parts,
            head_id,
            {
                "state": "running",
                "node_id": "moved-head",
                "address": f"{AGENT_IP}:{moved.port}",
                "dashboard_url": f"http://{AGENT_IP}:{moved.port}",
            },
        )

        state = provisioning.advance(parts.engine, parts.settings, parts.wakeups, cluster_id)

        assert moved.requests == []
    with session_scope(parts.engine) as session:
        dropped = clusters.nodes_of(session, cluster_id)[0]
        cluster = session.get(Cluster, cluster_id)
    assert state == ClusterState.FAILED and dropped.state == NodeState.RELEASED
    assert f"is not the one the portal allocated ({allocated})" in dropped.state_reason
    assert cluster.ray_address is None and cluster.dashboard_url is None


def test_a_head_on_its_own_address_is_called_there(served):
    server, parts = served
    head_id, token = new_device(parts)
    agent = FakeAgent(server.url, token)
    agent.register([A10])
    agent.prove()
    cluster_id = one_gpu_cluster(parts, "own")
    with Listener(AGENT_IP, ["own-head"]) as own:
        provisioning.advance(parts.engine, parts.settings, parts.wakeups, cluster_id)
        answer_start(
            parts,
            head_id,
            lambda payload: {
                "state": "running",
                "node_id": "own-head",
                "address": f"{AGENT_IP}:{payload['gcs_port']}",
                "client_address": f"ray://{AGENT_IP}:{own.port}",
                "dashboard_url": f"http://{AGENT_IP}:{own.port}/",
            },
        )

        state = provisioning.advance(parts.engine, parts.settings, parts.wakeups, cluster_id)

        assert state == ClusterState.RUNNING and own.requests == ["/api/v0/nodes?limit=1000"]
    with session_scope(parts.engine) as session:
        cluster = session.get(Cluster, cluster_id)
    assert cluster.dashboard_url == f"http://{AGENT_IP}:{own.port}"
    assert cluster.client_address == f"ray://{AGENT_IP}:{own.port}"


def test_a_metrics_url_on_another_host_is_never_scraped(served):
    server, parts = served
    device_id, token = new_device(parts)
    agent = FakeAgent(server.url, token)
    agent.register([A10], metrics_url="http://127.0.0.1:9400/metrics")
    assert device_row(parts, device_id).metrics_url is None
    agent.register([A10], metrics_url=f"http://{AGENT_IP}:9400/metrics")
    assert device_row(parts, device_id).metrics_url == f"http://{AGENT_IP}:9400/metrics"
    with session_scope(parts.engine) as session:
        (target,) = telemetry.scrape_targets(session, parts.settings)
    assert target["targets"] == [f"{AGENT_IP}:9400"]


@pytest.mark.parametrize(
    ("host", "port", "reason"),
    [
        ("localhost", 48265, "not an IP address"),  # a name could be re-pointed after the check
        ("127.0.0.1", 48265, "not the device's registered address"),
        ("169.254.169.254", 80, "not an address a device can serve on"),  # cloud metadata
        ("0.0.0.0", 48265, "not an address a device can serve on"),
        ("127.0.0.2", 80, "outside 1024-65535"),
        ("127.0.0.2", 6379, "one of the portal's own services"),
        ("127.0.0.2", 3000, "one of the portal's own services"),
    ],
)
def test_reported_addresses_the_portal_refuses_to_call(parts, host, port, reason):
    device = Device(owner_id=uuid.uuid4(), name="d", country="DE", token_hash="x", token_prefix="x")
    device.address = AGENT_IP
    refused = node_addresses.check(device, host, port, parts.settings)
    assert isinstance(refused, node_addresses.Refused) and reason in refused.reason
    assert node_addresses.check(device, AGENT_IP, 48265, parts.settings) == f"{AGENT_IP}:48265"


def test_with_the_overlay_the_portal_calls_only_the_overlay_address_it_assigned(parts):
    overlay = parts.settings.model_copy(update={"mesh": MeshKind.NEBULA})
    device = Device(owner_id=uuid.uuid4(), name="d", country="DE", token_hash="x", token_prefix="x")
    device.address, device.overlay_ip = AGENT_IP, "100.64.0.9"
    assert node_addresses.check(device, "100.64.0.9", 48265, overlay) == "100.64.0.9:48265"
    for host in (AGENT_IP, "100.64.0.10", "127.0.0.1"):  # the registration's peer, another device, loopback
        refused = node_addresses.check(device, host, 48265, overlay)
        assert isinstance(refused, node_addresses.Refused)
        assert "not the device's overlay address (100.64.0.9)" in refused.reason
    device.overlay_ip = None  # never certified: nothing to call
    assert isinstance(node_addresses.check(device, AGENT_IP, 48265, overlay), node_addresses.Refused)
    # Without the overlay, the registration's peer address as before.
    assert node_addresses.check(device, AGENT_IP, 48265, parts.settings) == f"{AGENT_IP}:48265"
    elsewhere = node_addresses.check(device, "100.64.0.9", 48265, parts.settings)
    assert isinstance(elsewhere, node_addresses.Refused)


def test_a_production_portal_never_calls_loopback(parts):
    production = parts.settings.model_copy(update={"environment": Environment.PRODUCTION})
    assert node_addresses.registered_address("127.0.0.1", production) is None
    assert node_addresses.registered_address("::1", production) is None
    assert node_addresses.registered_address("203.0.113.7", production) == "203.0.113.7"
    assert node_addresses.registered_address("testclient", production) is None


# --- command results ----------------------------------------------------------------------------------


def test_flooded_and_foreign_command_results_change_nothing(served):
    server, parts = served
    device_id, token = new_device(parts)
    other_id, _ = new_device(parts)
    agent = FakeAgent(server.url, token)
    agent.register([A10])
    with session_scope(parts.engine) as session:
        mine = commands.enqueue(session, session.get(Device, device_id), "verify", {})
        theirs = commands.enqueue(session, session.get(Device, other_id), "verify", {})
    assert agent.http.post(f"/commands/{theirs.id}/result", json={"ok": True}).status_code == 404
    assert agent.http.post(f"/commands/{uuid.uuid4()}/result", json={"ok": True}).status_code == 404
    replies = [agent.http.post(f"/commands/{mine.id}/result", json={"ok": True}) for _ in range(20)]
    assert {r.status_code for r in replies} == {204}
    flipped = agent.http.post(f"/commands/{mine.id}/result", json={"ok": False})
    assert flipped.status_code == 409 and flipped.json()["error"]["code"] == "command_completed"
    with session_scope(parts.engine) as session:
        from portal.models import DeviceCommand

        assert session.get(DeviceCommand, mine.id).state == "succeeded"
        assert session.get(DeviceCommand, theirs.id).state == "queued"


def test_behind_a_trusted_proxy_the_agent_s_own_address_is_registered_and_no_one_else_can_claim_one(parts):
    proxied = AppParts(
        parts.settings.model_copy(update={"trusted_proxies": ["127.0.0.1/32"]}), parts.engine, parts.cache
    )
    device_id, token = new_device(parts)
    with ServerThread(portal_app(proxied)) as url:
        # The proxy (on 127.0.0.1) names the agent it forwards.
        reply = httpx.post(
            f"{url}/api/v1/worker/register",
            json={"agent_version": "t", "gpus": [A10], "simulated": True},
            headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": "127.0.0.3"},
        )
        assert reply.status_code == 200
        assert device_row(parts, device_id).address == "127.0.0.3"
        # An agent reaching the portal directly cannot name another address.
        FakeAgent(url, token).http.post(
            "/register",
            json={"agent_version": "t", "gpus": [A10], "simulated": True},
            headers={"X-Forwarded-For": "127.0.0.3"},
        )
        assert device_row(parts, device_id).address == AGENT_IP
