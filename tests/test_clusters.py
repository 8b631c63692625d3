"""Placement, deploy, provisioning steps, replacement, termination and expiry, on SQLite and PostgreSQL.

The agents' side is played by completing their commands as an agent would; the full journey with real
agents and real Ray nodes is in ``test_cluster_journey.py``.
"""

import json
import threading
import time
import uuid
from datetime import timedelta

import pytest
from solders.keypair import Keypair
from sqlalchemy import update
from sqlmodel import Session, col, select

from portal.infra.db import session_scope
from portal.infra.wakeups import MemoryWakeups
from portal.models import (
    AccountKind,
    Cluster,
    ClusterState,
    Device,
    DeviceCommand,
    DeviceState,
    FaultEvent,
    NodeState,
    Role,
    StateTransition,
    UsageRecord,
    User,
)
from portal.models.base import utcnow
from portal.services.errors import Conflict, InvalidInput, NotFound, Unavailable
from portal.services.money import escrow, ledger
from portal.services.providers import commands
from portal.services.providers.devices import MISSED_HEARTBEATS_OFFLINE
from portal.services.providers.gpu_catalog import list_price
from portal.services.rentals import clusters, market, placement, provisioning
from tests.conftest import settings_for
from tests.factories import RecordedFollowUps, make_device, make_user

SETTINGS = settings_for(node_start_timeout_s=30, max_node_replacements=1)
H100_PRICE = 2_000_000


def market_with(session: Session, gpus_per_device: list[int], *, price: int | None = None) -> list[Device]:
    provider = make_user(session, Role.PROVIDER)
    provider.wallet_address = str(Keypair().pubkey())
    session.add(provider)
    found = []
    for count in gpus_per_device:
        device = make_device(session, provider.id, state=DeviceState.READY, gpus=count)
        device.verified_at, device.price_per_gpu_hour_micro = utcnow(), price
        device.hourly_price_micro = price or list_price(device.gpu_model)
        session.add(device)
        found.append(device)
    session.flush()
    return found


def customer_with(session: Session, credit_micro: int) -> uuid.UUID:
    customer = make_user(session, Role.CUSTOMER)
    if credit_micro:
        ledger.grant_credits(
            session,
            user_id=customer.id,
            amount_micro=credit_micro,
            reason="test",
            idempotency_key=f"test:{customer.id}",
        )
    return customer.id


def spec(gpus: int, **values: object) -> clusters.ClusterSpec:
    return clusters.ClusterSpec(
        **{"name": "c", "gpu_model": "H100-80GB", "gpu_count": gpus, "duration_hours": 2} | values
    )


def agent_answers(engine, device_id: uuid.UUID, *, ok: bool = True, node_id: str | None = None) -> str:
    """Take the device's queued command and answer it as the agent would; returns its kind."""
    with session_scope(engine) as session:
        (command,) = commands.take(session, device_id)
        kind = command.kind
        detail = "stopped"
        if kind == "start_ray_head":
            # A head listens where the portal allocated (6380 when it allocated none: not the Redis port).
            port = command.payload.get("gcs_port", 6380)
            detail = json.dumps(
                {
                    "state": "running",
                    "node_id": node_id or uuid.uuid4().hex,
                    "address": f"127.0.0.1:{port}",
                    "client_address": "ray://127.0.0.1:10001",
                    "dashboard_url": "http://127.0.0.1:8265",
                }
            )
        elif kind == "start_ray_worker":
            detail = json.dumps({"state": "running", "node_id": node_id or uuid.uuid4().hex})
        commands.complete(session, device_id, command.id, ok=ok, detail=detail if ok else "ray start failed")
    return kind


class FakeHead:
    """Stands in for a Ray head's state API: sees the node ids it is told about."""

    def __init__(self) -> None:
        self.alive: set[str] = set()

    def __call__(self, dashboard_url: str) -> set[str]:
        return self.alive


def advance(engine, cluster_id, head: FakeHead | None = None) -> str | None:
    return provisioning.advance(engine, SETTINGS, MemoryWakeups(), cluster_id, head or FakeHead())


def nodes(engine, cluster_id):
    with session_scope(engine) as session:
        return clusters.nodes_of(session, cluster_id)


def device_state(engine, device_id) -> str:
    with session_scope(engine) as session:
        return session.get(Device, device_id).state


# --- placement -------------------------------------------------------------------------------------


def candidate(gpus: int, price: int = 1, reliability: float = 1.0) -> placement.Candidate:
    return placement.Candidate(uuid.uuid4(), gpus, price, reliability, "DE", "high")


def test_choose_packs_exactly_cheapest_first_then_fewest_nodes_then_most_reliable():
    cheap_small, pricey_big = candidate(1, price=1), candidate(4, price=5)
    assert placement.choose([cheap_small, pricey_big], 1) == [cheap_small]
    four_ones = [candidate(1) for _ in range(4)]
    one_four = candidate(4)
    assert placement.choose([*four_ones, one_four], 4) == [one_four]  # same price: fewer nodes
    shaky, solid = candidate(2, reliability=0.5), candidate(2, reliability=0.99)
    assert placement.choose([shaky, solid], 2) == [solid]
    # A greedy pick of the 3 would strand the last GPU; the knapsack finds 2 + 2.
    three, two_a, two_b = candidate(3), candidate(2), candidate(2)
    assert sorted(c.gpus for c in placement.choose([three, two_a, two_b], 4)) == [2, 2]
    assert placement.choose([candidate(2), candidate(2)], 3) is None


def test_placement_books_only_hireable_devices(engine):
    with session_scope(engine) as session:
        ready, unverified, stale = market_with(session, [1, 1, 1])
        unverified.verified_at = None
        stale.last_heartbeat_at = utcnow() - timedelta(minutes=5)
        session.add_all([unverified, stale])
        orphan_owner = make_user(session, Role.PROVIDER)  # no payout wallet
        make_device(session, orphan_owner.id, state=DeviceState.READY, gpus=1).verified_at = utcnow()
    with session_scope(engine) as session:
        chosen = placement.reserve(session, SETTINGS, spec(1).placement(), "test")
        assert [c.device_id for c in chosen] == [ready.id]
        assert placement.reserve(session, SETTINGS, spec(1).placement(), "test") is None
    assert device_state(engine, ready.id) == DeviceState.HIRED


def hold_rows(engine, device_ids: list[uuid.UUID]) -> Session:
    """Another transaction that holds these devices' rows (a deploy or a flush in flight) until closed."""
    other = Session(engine)
    other.exec(select(Device.id).where(col(Device.id).in_(device_ids)).with_for_update()).all()
    return other


def test_placement_passes_over_devices_another_deploy_holds_without_waiting(postgres_engine, monkeypatch):
    monkeypatch.setattr(placement, "LOCK_WAIT_MS", 60_000)
    with session_scope(postgres_engine) as session:
        cheap, dear = market_with(session, [1, 1])
        cheap.hourly_price_micro, dear.hourly_price_micro = 1_000_000, 2_000_000
        session.add_all([cheap, dear])
    other = hold_rows(postgres_engine, [cheap.id])
    try:
        started = time.monotonic()
        with session_scope(postgres_engine) as session:
            chosen = placement.reserve(session, SETTINGS, spec(1).placement(), "test")
            assert [c.device_id for c in chosen] == [dear.id]
        assert time.monotonic() - started < 5
    finally:
        other.close()
    assert (device_state(postgres_engine, cheap.id), device_state(postgres_engine, dear.id)) == (
        DeviceState.READY,
        DeviceState.HIRED,
    )


def test_placement_waits_briefly_for_held_devices_then_says_busy(postgres_engine, monkeypatch):
    monkeypatch.setattr(placement, "LOCK_WAIT_MS", 300)
    with session_scope(postgres_engine) as session:
        (device,) = market_with(session, [1])
        customer = customer_with(session, 100_000_000)
    other = hold_rows(postgres_engine, [device.id])
    try:
        with pytest.raises(Unavailable) as busy, session_scope(postgres_engine) as session:
            clusters.create(session, SETTINGS, customer, spec(1))
        assert busy.value.code == "placement_busy" and busy.value.headers == {"Retry-After": "1"}
    finally:
        other.close()
    assert device_state(postgres_engine, device.id) == DeviceState.READY
    with session_scope(postgres_engine) as session:
        assert session.exec(select(Cluster)).all() == []
        assert ledger.available_balance(session, customer) == 100_000_000


@pytest.mark.parametrize("candidates", [64, 4], ids=["few-devices", "deep-market"])
def test_a_burst_of_placements_for_the_same_cheapest_devices_all_book(
    postgres_engine, monkeypatch, candidates
):
    # With 4 candidates a placement that finds all 4 unheld keeps them until it commits (the deep market's
    # way); with 64 it never does here and keeps only what it books.
    monkeypatch.setattr(placement, "CANDIDATES", candidates)
    with session_scope(postgres_engine) as session:
        devices = market_with(session, [1] * 24)
        for rank, device in enumerate(devices):  # every placement wants the same cheapest devices first
            device.hourly_price_micro = 1_000_000 + rank
        session.add_all(devices)
    start = threading.Barrier(16)
    outcomes: list[object] = []

    def place() -> None:
        start.wait()
        try:
            with session_scope(postgres_engine) as session:
                outcomes.append(placement.reserve(session, SETTINGS, spec(1).placement(), "test"))
        except Unavailable as busy:
            outcomes.append(busy)

    threads = [threading.Thread(target=place) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(isinstance(chosen, list) for chosen in outcomes), outcomes
    booked = [chosen[0].device_id for chosen in outcomes]
    assert len(set(booked)) == 16
    assert sum(device_state(postgres_engine, d.id) == DeviceState.HIRED for d in devices) == 16


def test_deploys_beyond_half_the_pool_wait_their_turn_holding_no_connection(engine, monkeypatch):
    monkeypatch.setattr(clusters, "DEPLOY_TURN_WAIT_S", 0.3)
    with session_scope(engine) as session:
        market_with(session, [1])
        customer = customer_with(session, 100_000_000)
    slots = clusters._deploy_slots(SETTINGS.db_pool_size // 2)
    taken = 0
    while slots.acquire(blocking=False):  # every turn taken by deploys in flight
        taken += 1
    assert taken == 2  # half the default pool of 5
    try:
        with pytest.raises(Unavailable) as busy, session_scope(engine) as session:
            clusters.deploy(session, SETTINGS, RecordedFollowUps(), customer, spec(1))
        assert busy.value.code == "placement_busy"
        monkeypatch.setattr(clusters, "DEPLOY_TURN_WAIT_S", 30)
        deployed: list[uuid.UUID] = []

        def deploy_when_its_turn_comes() -> None:
            with session_scope(engine) as session:
                session.exec(select(User)).all()  # the request's sign-in read
                deployed.append(clusters.deploy(session, SETTINGS, RecordedFollowUps(), customer, spec(1)).id)

        waiting = threading.Thread(target=deploy_when_its_turn_comes)
        waiting.start()
        time.sleep(0.5)
        assert waiting.is_alive() and engine.pool.checkedout() == 0  # it waits, holding no connection
        slots.release()
        taken -= 1
        waiting.join(timeout=10)
        assert len(deployed) == 1
    finally:
        for _ in range(taken):
            slots.release()
    with session_scope(engine) as session:
        assert [c.id for c in session.exec(select(Cluster)).all()] == deployed


def test_an_account_made_by_another_transaction_meanwhile_is_used_not_a_500(postgres_engine):
    with session_scope(postgres_engine) as session:
        customer = customer_with(session, 0)
    first = Session(postgres_engine)
    made = ledger.get_account(first, AccountKind.CUSTOMER_ESCROW, customer).id  # not committed yet
    found: list[int] = []

    def second() -> None:  # its insert waits on the first's, which then commits
        with session_scope(postgres_engine) as session:
            found.append(ledger.get_account(session, AccountKind.CUSTOMER_ESCROW, customer).id)

    waiting = threading.Thread(target=second)
    waiting.start()
    time.sleep(0.5)
    first.commit()
    first.close()
    waiting.join(timeout=10)
    assert found == [made]


@pytest.mark.parametrize("holder_books_it", [True, False])
def test_placement_takes_a_held_device_its_holder_lets_go(postgres_engine, monkeypatch, holder_books_it):
    monkeypatch.setattr(placement, "LOCK_WAIT_MS", 30_000)
    with session_scope(postgres_engine) as session:
        (device,) = market_with(session, [1])
    other = hold_rows(postgres_engine, [device.id])

    def let_go() -> None:
        time.sleep(0.3)
        if holder_books_it:
            other.execute(update(Device).where(col(Device.id) == device.id).values(state=DeviceState.HIRED))
            other.commit()
        other.close()

    threading.Thread(target=let_go).start()
    with session_scope(postgres_engine) as session:
        chosen = placement.reserve(session, SETTINGS, spec(1).placement(), "test")
    if holder_books_it:
        assert chosen is None
    else:
        assert [c.device_id for c in chosen] == [device.id]
    assert device_state(postgres_engine, device.id) == DeviceState.HIRED


def test_offers_and_quotes_group_capacity_and_price_it(engine):
    with session_scope(engine) as session:
        market_with(session, [2, 2, 1])
        market_with(session, [4], price=1_500_000)
    with session_scope(engine) as session:
        offers = market.offers(session, SETTINGS, market.OfferFilters(gpu_model="H100-80GB"))
        # One group (model, country, tier), priced from the cheapest to the dearest device.
        assert [
            (o.devices, o.gpus, o.min_price_per_gpu_hour_micro, o.max_price_per_gpu_hour_micro)
            for o in offers
        ] == [(4, 9, 1_500_000, 2_000_000)]
        assert all(o.simulated and o.vram_mb == 81_559 for o in offers)
        assert all(o.new for o in offers)  # devices added just now: too young to judge
        assert market.offers(session, SETTINGS, market.OfferFilters(max_price_micro=1_600_000))[0].gpus == 4
        quote = market.quote(session, SETTINGS, spec(5).placement(), 3)
        # The 4-GPU device at 1.5 plus one 1-GPU device at 2.0 is the cheapest exact set.
        assert quote.available and quote.price_per_hour_micro == 4 * 1_500_000 + 2_000_000
        assert quote.total_micro == 3 * quote.price_per_hour_micro
        assert quote.fee_micro == quote.total_micro // 10
        assert sum(line["gpus"] for line in quote.breakdown) == 5
        short = market.quote(session, SETTINGS, spec(64).placement(), 1)
        assert not short.available and short.alternatives[0]["gpu_model"] == "H100-80GB"


# --- deploy ----------------------------------------------------------------------------------------


def test_deploy_books_devices_and_holds_escrow(engine):
    with session_scope(engine) as session:
        devices = market_with(session, [1, 1])
        customer = customer_with(session, 100_000_000)
        cluster = clusters.create(session, SETTINGS, customer, spec(2))
    with session_scope(engine) as session:
        assert all(session.get(Device, d.id).state == DeviceState.HIRED for d in devices)
        held = 2 * H100_PRICE * 2
        assert escrow.in_escrow(session, session.get(Cluster, cluster.id)) == held
        assert ledger.available_balance(session, customer) == 100_000_000 - held
        assert ledger.verify_books(session) == []


@pytest.mark.parametrize(
    ("credit", "gpus", "code"), [(1_000_000, 1, "insufficient_credit"), (100_000_000, 3, "capacity_short")]
)
def test_a_deploy_that_cannot_be_met_changes_nothing(engine, credit, gpus, code):
    with session_scope(engine) as session:
        devices = market_with(session, [1, 1])
        customer = customer_with(session, credit)
    with pytest.raises(Conflict) as refused, session_scope(engine) as session:
        clusters.create(session, SETTINGS, customer, spec(gpus))
    assert refused.value.code == code
    with session_scope(engine) as session:
        assert all(session.get(Device, d.id).state == DeviceState.READY for d in devices)
        assert session.exec(select(Cluster)).all() == []
        assert ledger.available_balance(session, customer) == credit


@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("gpu_count", {"gpu_count": 0}),
        ("duration_hours", {"duration_hours": 10_000}),
        ("countries", {"countries": ("Germany",)}),
        ("connectivity_tier", {"connectivity_tier": "warp"}),
        ("name", {"name": "  "}),
        ("max_workers", {"min_workers": 3, "max_workers": 1}),
    ],
)
def test_bad_specs_name_the_field(field, values):
    with pytest.raises(InvalidInput) as refused:
        clusters.validate(spec(1, **values))
    assert refused.value.details["field"] == field


# --- provisioning ----------------------------------------------------------------------------------


def deploy(engine, gpus_per_device: list[int], gpus: int, credit: int = 100_000_000):
    with session_scope(engine) as session:
        devices = market_with(session, gpus_per_device)
        customer = customer_with(session, credit)
        cluster = clusters.create(session, SETTINGS, customer, spec(gpus))
    return cluster.id, customer, devices


def start_commands(engine, cluster_id) -> dict[str, DeviceCommand]:
    """The latest start command of each of the cluster's devices, by the device's role."""
    with session_scope(engine) as session:
        found = {}
        for node in clusters.nodes_of(session, cluster_id):
            if node.command_id is not None:
                command = session.get(DeviceCommand, node.command_id)
                session.expunge(command)
                found[f"{node.role}:{node.device_id}"] = command
        return found


def test_head_and_workers_start_at_once_then_running_once_the_head_sees_every_node(engine):
    cluster_id, _, _ = deploy(engine, [1, 1, 1], 3)
    head = FakeHead()
    assert advance(engine, cluster_id, head) == ClusterState.PROVISIONING
    # One step asks every device: the portal allocated the head's GCS port, so workers know where to go.
    head_node, *worker_nodes = nodes(engine, cluster_id)
    assert [n.state for n in nodes(engine, cluster_id)] == [NodeState.STARTING] * 3
    sent = start_commands(engine, cluster_id)
    head_command = sent[f"head:{head_node.device_id}"]
    port = head_command.payload["gcs_port"]
    assert head_command.kind == "start_ray_head" and port in SETTINGS.ray_gcs_port_range
    for worker in worker_nodes:
        command = sent[f"worker:{worker.device_id}"]
        assert command.kind == "start_ray_worker"
        assert command.payload["head_address"] == f"127.0.0.1:{port}"
    with session_scope(engine) as session:
        assert session.get(Cluster, cluster_id).ray_address == f"127.0.0.1:{port}"
    # Workers may answer before their head: they joined once its GCS answered.
    for number, worker in enumerate(worker_nodes):
        agent_answers(engine, worker.device_id, node_id=f"worker-{number}")
    assert advance(engine, cluster_id, head) == ClusterState.PROVISIONING
    assert agent_answers(engine, head_node.device_id, node_id="head-id") == "start_ray_head"
    head.alive = {"head-id", "worker-0"}  # a worker has not reached the head yet
    assert advance(engine, cluster_id, head) == ClusterState.PROVISIONING
    head.alive = {"head-id", "worker-0", "worker-1"}
    assert advance(engine, cluster_id, head) == ClusterState.RUNNING
    with session_scope(engine) as session:
        cluster = session.get(Cluster, cluster_id)
        assert cluster.client_address == "ray://127.0.0.1:10001"
        assert cluster.expires_at - cluster.started_at == timedelta(hours=2)
        kinds = [e.kind for e in clusters.events_of(session, cluster_id)]
        assert kinds.count("node_joined") == 3 and kinds[-1] == "running"
    # Advancing again is harmless: no second start command.
    assert advance(engine, cluster_id, head) == ClusterState.RUNNING
    with session_scope(engine) as session:
        assert len(session.exec(select(DeviceCommand)).all()) == 3


def test_heads_on_one_host_never_share_a_gcs_port_and_a_full_range_starts_nodes_in_turn(engine):
    # Three ports, one of them PostgreSQL's (the portal's own on loopback): two heads fit, not three.
    settings = settings_for(ray_gcs_ports="5431-5433", node_start_timeout_s=30)
    ids = [deploy(engine, [1, 1], 2)[0] for _ in range(3)]
    for cluster_id in ids:
        state = provisioning.advance(engine, settings, MemoryWakeups(), cluster_id, FakeHead())
        assert state == ClusterState.PROVISIONING
    with session_scope(engine) as session:
        addresses = [session.get(Cluster, cluster_id).ray_address for cluster_id in ids]
    assert sorted(addresses[:2]) == ["127.0.0.1:5431", "127.0.0.1:5433"]  # every device is on 127.0.0.1
    # The third head picks its own port; its worker is asked only once the head has joined there.
    third = ids[2]
    head_node, worker_node = nodes(engine, third)
    assert worker_node.state == NodeState.ASSIGNED and addresses[2] is None
    assert "gcs_port" not in start_commands(engine, third)[f"head:{head_node.device_id}"].payload
    agent_answers(engine, head_node.device_id, node_id="third-head")
    provisioning.advance(engine, settings, MemoryWakeups(), third, FakeHead())
    worker_command = start_commands(engine, third)[f"worker:{worker_node.device_id}"]
    assert worker_command.payload["head_address"] == "127.0.0.1:6380"


def test_a_replaced_head_gets_a_new_address_and_its_workers_are_sent_there(engine):
    cluster_id, _, _ = deploy(engine, [1, 1, 1], 2)
    advance(engine, cluster_id)
    first_head, worker = nodes(engine, cluster_id)
    old = start_commands(engine, cluster_id)[f"worker:{worker.device_id}"]
    agent_answers(engine, worker.device_id, node_id="worker")  # it joined the first head
    agent_answers(engine, first_head.device_id, ok=False)
    assert advance(engine, cluster_id) == ClusterState.PROVISIONING
    dropped, worker, new_head = nodes(engine, cluster_id)
    assert dropped.state == NodeState.RELEASED and new_head.state == NodeState.STARTING
    sent = start_commands(engine, cluster_id)
    port = sent[f"head:{new_head.device_id}"].payload["gcs_port"]
    # The worker starts again, joining the new head (never the old address, which another head may take).
    again = sent[f"worker:{worker.device_id}"]
    assert worker.state == NodeState.STARTING and again.id != old.id
    assert again.payload["head_address"] == f"127.0.0.1:{port}" != old.payload["head_address"]
    head = FakeHead()
    agent_answers(engine, new_head.device_id, node_id="head")
    agent_answers(engine, worker.device_id, node_id="worker")
    head.alive = {"head", "worker"}
    assert advance(engine, cluster_id, head) == ClusterState.RUNNING


def run_to_running(engine, gpus_per_device: list[int], gpus: int):
    cluster_id, customer, devices = deploy(engine, gpus_per_device, gpus)
    head = FakeHead()
    advance(engine, cluster_id, head)
    for node in nodes(engine, cluster_id):
        advance(engine, cluster_id, head)
        agent_answers(engine, node.device_id, node_id=str(node.id))
        head.alive.add(str(node.id))
    assert advance(engine, cluster_id, head) == ClusterState.RUNNING
    return cluster_id, customer, devices


@pytest.mark.parametrize(("gpus_per_device", "gpus"), [([1], 1), ([2, 1], 3)])
def test_the_log_and_reasons_a_customer_reads_are_sentences_with_right_plurals(engine, gpus_per_device, gpus):
    """Issue 20: no command names (``start_ray_head sent``), no ``all 1 nodes joined``, no ``node(s)``."""
    cluster_id, _, devices = run_to_running(engine, gpus_per_device, gpus)
    with session_scope(engine) as session:
        cluster = session.get(Cluster, cluster_id)
        texts = [cluster.state_reason] + [e.message for e in clusters.events_of(session, cluster_id)]
        texts += [node.state_reason for node in clusters.nodes_of(session, cluster_id)]
        transitions = session.exec(select(StateTransition.reason)).all()
    for text in texts + list(transitions):
        assert "(s)" not in text and "start_ray" not in text and "all 1 " not in text, text
        assert " 1 nodes" not in text and " 1 GPUs" not in text, text
    running = [t for t in texts if t.startswith("Running on")]
    if gpus == 1:
        assert cluster.state_reason == "its node is up"
        assert running == ["Running on 1 node with 1 GPU; the Ray head sees every node."]
    else:
        assert cluster.state_reason == "all 2 nodes are up"
        assert running == ["Running on 2 nodes with 3 GPUs; the Ray head sees every node."]
    head = next(node for node in nodes(engine, cluster_id) if node.role == "head")
    head_name = next(device.name for device in devices if device.id == head.device_id)
    placed = f"Device {head_name} ({head.gpu_count} GPU{'s' if head.gpu_count > 1 else ''}, "
    assert any(t.startswith(placed) and "booked as head" in t for t in texts), texts
    assert any(t == "asked its device to start the Ray head" for t in transitions)
    assert any(t == "the Ray worker is up" for t in transitions) == (len(gpus_per_device) > 1)


def beat(engine, devices) -> None:
    """The devices' agents heartbeat now."""
    with session_scope(engine) as session:
        for device in devices:
            row = session.get(Device, device.id)
            row.last_heartbeat_at = utcnow()
            session.add(row)


def assert_charges_are_exact(session, cluster_id) -> None:
    """Each node's charges add up to its rate x GPUs x charged seconds, and its fees to 10% of that, each
    rounded down once, to the micro-unit."""
    for node in clusters.nodes_of(session, cluster_id):
        lines = session.exec(select(UsageRecord).where(UsageRecord.node_id == node.id)).all()
        seconds, amount = sum(u.seconds for u in lines), sum(u.amount_micro for u in lines)
        assert amount == node.rate_micro * node.gpu_count * seconds // 3600
        assert sum(u.fee_micro for u in lines) == amount * SETTINGS.platform_fee_bps // 10_000


def backdate(engine, cluster_id, seconds: int) -> None:
    """As if the cluster had been running for ``seconds`` more."""
    with session_scope(engine) as session:
        cluster = session.get(Cluster, cluster_id)
        cluster.started_at -= timedelta(seconds=seconds)
        cluster.expires_at -= timedelta(seconds=seconds)
        session.add(cluster)
        for node in clusters.nodes_of(session, cluster_id):
            node.joined_at -= timedelta(seconds=seconds)
            session.add(node)


def test_terminate_charges_uptime_returns_the_rest_and_frees_the_devices(engine):
    cluster_id, customer, devices = run_to_running(engine, [1, 1], 2)
    backdate(engine, cluster_id, 1800)  # half an hour of uptime on each node
    beat(engine, devices)
    with session_scope(engine) as session:
        assert clusters.request_termination(session, session.get(Cluster, cluster_id), "test")
    assert advance(engine, cluster_id) == ClusterState.TERMINATED
    with session_scope(engine) as session:
        cluster = session.get(Cluster, cluster_id)
        charged = escrow.charged(session, cluster)
        assert charged >= 2 * H100_PRICE // 2  # two GPUs for half an hour, and the seconds since
        assert charged < 2 * H100_PRICE // 2 + 2 * H100_PRICE // 60  # ...less than a minute more
        assert escrow.in_escrow(session, cluster) == 0
        assert ledger.available_balance(session, customer) == 100_000_000 - charged
        earned = ledger.get_account(session, AccountKind.PROVIDER_EARNED, devices[0].owner_id).balance_micro
        fees = ledger.get_account(session, AccountKind.PLATFORM_FEES).balance_micro
        assert earned + fees == charged
        assert_charges_are_exact(session, cluster_id)
        assert ledger.verify_books(session) == []
    # Devices stay hired until their agents confirm the stop.
    assert {device_state(engine, d.id) for d in devices} == {DeviceState.HIRED}
    for device in devices:
        assert agent_answers(engine, device.id) == "stop_ray"
    assert advance(engine, cluster_id) == ClusterState.TERMINATED
    assert {device_state(engine, d.id) for d in devices} == {DeviceState.READY}
    with session_scope(engine) as session:
        assert provisioning.unfinished(session) == []


def test_a_failed_device_is_replaced_and_too_many_failures_fail_the_deploy(engine):
    cluster_id, customer, _ = deploy(engine, [1, 1, 1], 1)
    advance(engine, cluster_id)
    (first,) = nodes(engine, cluster_id)
    agent_answers(engine, first.device_id, ok=False)
    assert advance(engine, cluster_id) == ClusterState.PROVISIONING
    dropped, second = nodes(engine, cluster_id)
    assert dropped.state == NodeState.RELEASED and second.state == NodeState.STARTING
    assert second.role == "head" and second.device_id != first.device_id
    agent_answers(engine, second.device_id, ok=False)
    # max_node_replacements=1: the second failure ends the deploy, with the escrow returned.
    assert advance(engine, cluster_id) == ClusterState.FAILED
    with session_scope(engine) as session:
        cluster = session.get(Cluster, cluster_id)
        log = " ".join(e.message for e in clusters.events_of(session, cluster_id))
        assert "could not start its Ray node: ray start failed" in log and "giving up" in log
        assert ledger.available_balance(session, customer) == 100_000_000
        assert escrow.in_escrow(session, cluster) == 0
        assert len(session.exec(select(FaultEvent).where(FaultEvent.cluster_id == cluster_id)).all()) == 2


def test_a_device_too_slow_to_start_is_replaced(engine):
    cluster_id, _, _ = deploy(engine, [1, 1], 1)
    advance(engine, cluster_id)
    with session_scope(engine) as session:
        node = clusters.nodes_of(session, cluster_id)[0]
        node.started_at -= timedelta(seconds=SETTINGS.node_start_timeout_s + 1)
        session.add(node)
    advance(engine, cluster_id)
    assert [n.state for n in nodes(engine, cluster_id)] == [NodeState.RELEASED, NodeState.STARTING]


def test_running_clusters_expire_when_their_time_runs_out(engine):
    cluster_id, _, _ = run_to_running(engine, [1], 1)
    wakeups = MemoryWakeups()
    with session_scope(engine) as session:
        assert provisioning.expired(session) == []
        cluster = session.get(Cluster, cluster_id)
        cluster.expires_at = utcnow() - timedelta(seconds=1)
        session.add(cluster)
    with session_scope(engine) as session:
        assert provisioning.expired(session) == [cluster_id]
    assert provisioning.expire(engine, SETTINGS, wakeups, cluster_id) == ClusterState.EXPIRED
    assert provisioning.expire(engine, SETTINGS, wakeups, cluster_id) == ClusterState.EXPIRED
    with session_scope(engine) as session:
        assert ledger.verify_books(session) == []
        assert escrow.in_escrow(session, session.get(Cluster, cluster_id)) == 0


def test_extend_moves_the_end_and_holds_more_escrow(engine):
    cluster_id, _, _ = run_to_running(engine, [1], 1)
    with session_scope(engine) as session:
        cluster = session.get(Cluster, cluster_id)
        before = cluster.expires_at
        clusters.extend(session, cluster, 3)
        assert cluster.expires_at - before == timedelta(hours=3)
        assert escrow.in_escrow(session, cluster) == H100_PRICE * 5
        with pytest.raises(InvalidInput):
            clusters.extend(session, cluster, 0)


def test_concurrent_deploys_never_book_a_device_twice(engine):
    with session_scope(engine) as session:
        market_with(session, [1] * 6)
        customers = [customer_with(session, 100_000_000) for _ in range(10)]
    outcomes: list[str] = []

    def deploy_one(customer: uuid.UUID) -> None:
        try:
            with session_scope(engine) as session:
                clusters.create(session, SETTINGS, customer, spec(1))
            outcomes.append("deployed")
        except Conflict as refused:
            outcomes.append(refused.code)

    threads = [threading.Thread(target=deploy_one, args=(c,)) for c in customers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["capacity_short"] * 4 + ["deployed"] * 6
    with session_scope(engine) as session:
        booked = [
            n.device_id for c in session.exec(select(Cluster)).all() for n in clusters.nodes_of(session, c.id)
        ]
        assert len(booked) == len(set(booked)) == 6
        assert ledger.verify_books(session) == []


def test_an_older_cluster_never_hands_back_a_device_a_newer_one_holds(engine):
    first, _, (device,) = run_to_running(engine, [1], 1)
    with session_scope(engine) as session:
        clusters.request_termination(session, session.get(Cluster, first), "test")
    advance(engine, first)
    assert agent_answers(engine, device.id) == "stop_ray"
    advance(engine, first)
    assert device_state(engine, device.id) == DeviceState.READY
    # A second cluster books the device and ends; its agent has not confirmed the stop yet.
    with session_scope(engine) as session:
        second = clusters.create(session, SETTINGS, customer_with(session, 10_000_000), spec(1)).id
    advance(engine, second)
    agent_answers(engine, device.id, node_id="n2")
    with session_scope(engine) as session:
        clusters.request_termination(session, session.get(Cluster, second), "test")
    advance(engine, second)
    assert advance(engine, first) == ClusterState.TERMINATED
    assert device_state(engine, device.id) == DeviceState.HIRED
    with session_scope(engine) as session:
        assert provisioning.unfinished(session) == [second]


def test_a_cluster_that_does_not_come_up_in_time_fails_and_is_refunded(engine):
    cluster_id, customer, _ = deploy(engine, [1], 1)
    advance(engine, cluster_id)
    with session_scope(engine) as session:
        cluster = session.get(Cluster, cluster_id)
        cluster.created_at -= timedelta(seconds=SETTINGS.node_start_timeout_s * 10)
        session.add(cluster)
    assert advance(engine, cluster_id) == ClusterState.FAILED
    with session_scope(engine) as session:
        assert ledger.available_balance(session, customer) == 100_000_000
        assert "did not come up within" in clusters.events_of(session, cluster_id)[-1].message


@pytest.mark.parametrize(
    "detail",
    [
        "[]",
        "1",
        '{"node_id": "x"}',
        '{"node_id": "x", "address": "a", "dashboard_url": "http://10.0.0.1:80/admin?x=1"}',
    ],
)
def test_a_start_result_the_portal_cannot_use_drops_the_device(engine, detail):
    cluster_id, _, _ = deploy(engine, [1, 1], 1)
    advance(engine, cluster_id)
    (head,) = nodes(engine, cluster_id)
    with session_scope(engine) as session:
        (command,) = commands.take(session, head.device_id)
        commands.complete(session, head.device_id, command.id, ok=True, detail=detail)
    assert advance(engine, cluster_id) == ClusterState.PROVISIONING
    dropped, replacement = nodes(engine, cluster_id)
    assert dropped.state == NodeState.RELEASED and "cannot use" in dropped.state_reason
    assert replacement.state == NodeState.STARTING


def test_a_device_that_served_clusters_keeps_its_record(engine):
    from portal.infra.cache import MemoryCache
    from portal.security.principal import RequestOrigin
    from portal.services.providers import devices as device_service

    cluster_id, _, (device,) = run_to_running(engine, [1], 1)
    with session_scope(engine) as session:
        clusters.request_termination(session, session.get(Cluster, cluster_id), "test")
    advance(engine, cluster_id)
    agent_answers(engine, device.id)
    advance(engine, cluster_id)
    with pytest.raises(Conflict) as refused, session_scope(engine) as session:
        device_service.remove_device(
            session, MemoryCache(), owner_id=device.owner_id, device_id=device.id, origin=RequestOrigin()
        )
    assert refused.value.code == "device_has_history"
    assert device_state(engine, device.id) == DeviceState.READY


def silence(engine, device_id) -> None:
    """The device's agent dies: no heartbeat for a minute."""
    with session_scope(engine) as session:
        device = session.get(Device, device_id)
        device.last_heartbeat_at = utcnow() - timedelta(minutes=1)
        session.add(device)


def test_a_lost_worker_is_replaced_and_the_cluster_heals(engine):
    cluster_id, _, _ = run_to_running(engine, [1, 1], 2)
    with session_scope(engine) as session:
        spare = market_with(session, [1])[0]  # a device that fits, free
        started_at = session.get(Cluster, cluster_id).started_at
    head_node, worker_node = nodes(engine, cluster_id)
    silence(engine, worker_node.device_id)
    head = FakeHead()
    head.alive = {str(head_node.id)}
    assert advance(engine, cluster_id, head) == ClusterState.DEGRADED
    lost, replacement = [n for n in nodes(engine, cluster_id) if n.role == "worker"]
    assert lost.state == NodeState.RELEASED and lost.ended_at is not None
    assert replacement.device_id == spare.id and replacement.state == NodeState.STARTING
    with session_scope(engine) as session:
        (command,) = session.exec(select(DeviceCommand).where(DeviceCommand.device_id == spare.id)).all()
        address = session.get(Cluster, cluster_id).ray_address
        assert command.kind == "start_ray_worker" and command.payload["head_address"] == address
    assert device_state(engine, lost.device_id) == DeviceState.OFFLINE  # its agent is gone
    agent_answers(engine, spare.id, node_id="fresh")
    head.alive.add("fresh")
    assert advance(engine, cluster_id, head) == ClusterState.RUNNING
    with session_scope(engine) as session:
        cluster = session.get(Cluster, cluster_id)
        assert cluster.started_at == started_at  # the paid window is unchanged
        kinds = [e.kind for e in clusters.events_of(session, cluster_id)]
    # The log tells the healing in order: lost, replaced, starting, joined, running again.
    healing = kinds[kinds.index("node_lost") :]
    assert [k for k in healing if k != "waiting"] == [
        "node_lost",
        "replaced",
        "placed",
        "node_starting",
        "node_joined",
        "running",
    ]


def test_while_the_portal_hears_no_agent_at_all_no_node_is_declared_lost(engine):
    """Its own restart or outage silences every agent at once: that is not every device failing."""
    cluster_id, _, devices = run_to_running(engine, [1, 1], 2)
    for device in devices:
        silence(engine, device.id)
    assert advance(engine, cluster_id) == ClusterState.RUNNING
    assert all(node.state == NodeState.JOINED for node in nodes(engine, cluster_id))
    # Heard again: the head's agent beats, the worker's does not. The worker is lost.
    head_node, _ = nodes(engine, cluster_id)
    beat(engine, [d for d in devices if d.id == head_node.device_id])
    assert advance(engine, cluster_id) == ClusterState.DEGRADED


def quiet(engine, device_id, seconds: float) -> None:
    """The device's agent has not been heard for ``seconds`` (other agents are)."""
    with session_scope(engine) as session:
        device = session.get(Device, device_id)
        device.last_heartbeat_at = utcnow() - timedelta(seconds=seconds)
        session.add(device)


def test_a_quiet_agent_whose_ray_node_the_head_still_sees_keeps_its_node_for_a_grace(engine):
    """A slow portal or a late agent (CI: a head's agent unheard for 6 s under load) must not end a cluster
    that Ray says is whole; past the grace, or once the head no longer sees the node, it is lost."""
    cluster_id, _, devices = run_to_running(engine, [1, 1], 2)
    head_node, worker_node = nodes(engine, cluster_id)
    head = FakeHead()
    head.alive = {head_node.ray_node_id, worker_node.ray_node_id}
    grace = provisioning.quiet_node_grace_s(SETTINGS)
    offline_after = SETTINGS.heartbeat_interval_s * MISSED_HEARTBEATS_OFFLINE
    assert grace > offline_after
    beat(engine, devices)  # the other agents are heard: the portal itself is not deaf
    quiet(engine, worker_node.device_id, offline_after + 1)
    assert advance(engine, cluster_id, head) == ClusterState.RUNNING
    assert all(node.state == NodeState.JOINED for node in nodes(engine, cluster_id))
    # The head no longer sees the worker: its quiet agent is not given the benefit of the doubt.
    head.alive = {head_node.ray_node_id}
    assert advance(engine, cluster_id, head) == ClusterState.DEGRADED
    # The head's agent quiet, its Ray node answering: the cluster goes on, until the grace has passed.
    beat(engine, [d for d in devices if d.id == worker_node.device_id])
    quiet(engine, head_node.device_id, offline_after + 1)
    assert advance(engine, cluster_id, head) == ClusterState.DEGRADED
    quiet(engine, head_node.device_id, grace + 1)
    assert advance(engine, cluster_id, head) == ClusterState.FAILED


def test_a_quiet_head_whose_dashboard_does_not_answer_is_lost_at_once(engine):
    cluster_id, _, devices = run_to_running(engine, [1, 1], 2)
    head_node, _ = nodes(engine, cluster_id)
    beat(engine, devices)
    quiet(engine, head_node.device_id, SETTINGS.heartbeat_interval_s * MISSED_HEARTBEATS_OFFLINE + 1)
    assert provisioning.advance(engine, SETTINGS, MemoryWakeups(), cluster_id, lambda url: None) == (
        ClusterState.FAILED
    )


def test_with_no_replacement_the_cluster_stays_degraded_and_says_so_once(engine):
    cluster_id, _, _ = run_to_running(engine, [1, 1], 2)
    _, worker_node = nodes(engine, cluster_id)
    silence(engine, worker_node.device_id)
    for _ in range(3):
        assert advance(engine, cluster_id) == ClusterState.DEGRADED
    with session_scope(engine) as session:
        kinds = [e.kind for e in clusters.events_of(session, cluster_id)]
    assert kinds.count("no_replacement") == 1


def test_losing_the_head_ends_the_cluster_and_returns_the_escrow(engine):
    cluster_id, _, _ = run_to_running(engine, [1, 1], 2)
    head_node, _ = nodes(engine, cluster_id)
    silence(engine, head_node.device_id)
    assert advance(engine, cluster_id) == ClusterState.FAILED
    with session_scope(engine) as session:
        cluster = session.get(Cluster, cluster_id)
        assert "cannot outlive its head" in cluster.state_reason
        assert escrow.in_escrow(session, cluster) == 0
        assert ledger.verify_books(session) == []


def test_deploy_and_terminate_commit_then_hand_the_cluster_to_its_actor_and_terminate_is_audited(engine):
    from portal.models import AuditLog

    with session_scope(engine) as session:
        market_with(session, [1])
        customer = customer_with(session, 100_000_000)
    followups = RecordedFollowUps()
    with session_scope(engine) as session:
        cluster = clusters.deploy(session, SETTINGS, followups, customer, spec(1))
    assert followups.handed == [("advance_cluster", cluster.id)]
    with session_scope(engine) as session:  # committed before the actor was told
        assert session.get(Cluster, cluster.id).state == ClusterState.PENDING
    # Another customer's cluster is not theirs to end.
    with session_scope(engine) as session, pytest.raises(NotFound):
        clusters.terminate(
            session, followups, cluster.id, owner_id=uuid.uuid4(), reason="x", actor_id="user:x"
        )
    with session_scope(engine) as session:
        clusters.terminate(
            session, followups, cluster.id, owner_id=customer, reason="done", actor_id=f"user:{customer}"
        )
    assert followups.handed[-1] == ("advance_cluster", cluster.id) and len(followups.handed) == 2
    with session_scope(engine) as session:
        assert session.get(Cluster, cluster.id).state == ClusterState.TERMINATING
        (entry,) = session.exec(select(AuditLog).where(AuditLog.action == "cluster.terminate")).all()
        assert entry.actor_id == f"user:{customer}" and entry.target_id == str(cluster.id)
