"""Autoscaling, the portal's side: the head of an autoscaled cluster gets Ray's autoscaler config, and its
device (only it) lists, adds and releases the cluster's workers within max_workers, at the quoted rate,
with escrow held, on SQLite and PostgreSQL. The real Ray autoscaler growing and shrinking a cluster of
real Ray nodes is in ``test_autoscaling_ray.py``.

Agents are played as in ``test_clusters.py``: their commands are answered as an agent would answer.
"""

from __future__ import annotations

import pathlib
import uuid

import httpx
import pytest
import yaml
from sqlmodel import select

from gpu_pool import autoscaler
from portal.infra.db import session_scope
from portal.infra.wakeups import MemoryWakeups
from portal.models import (
    AccountKind,
    Cluster,
    ClusterState,
    Device,
    DeviceCommand,
    DeviceState,
    NodeState,
    UsageRecord,
)
from portal.security.secrets import DEVICE_TOKEN_PREFIX, keyed_hash, new_token
from portal.services.errors import Conflict, NotFound
from portal.services.money import escrow, ledger, metering
from portal.services.rentals import autoscaling, clusters
from tests.test_clusters import (
    SETTINGS,
    FakeHead,
    advance,
    agent_answers,
    assert_charges_are_exact,
    backdate,
    beat,
    customer_with,
    device_state,
    market_with,
    nodes,
    spec,
)


def autoscaled(engine, gpus_per_device: list[int], *, min_workers=0, max_workers=2, credit=100_000_000):
    """A running autoscaled cluster of one head (the first device); the rest of the market is free."""
    with session_scope(engine) as session:
        market_with(session, gpus_per_device)
        customer = customer_with(session, credit)
        cluster = clusters.create(
            session, SETTINGS, customer, spec(1, min_workers=min_workers, max_workers=max_workers)
        )
    head = FakeHead()
    advance(engine, cluster.id, head)
    (head_node,) = nodes(engine, cluster.id)
    with session_scope(engine) as session:
        (command,) = session.exec(
            select(DeviceCommand).where(DeviceCommand.device_id == head_node.device_id)
        ).all()
        start = command.payload
    agent_answers(engine, head_node.device_id, node_id="head")
    head.alive.add("head")
    assert advance(engine, cluster.id, head) == ClusterState.RUNNING
    return cluster.id, customer, head_node.device_id, head, start


def token_of(engine, device_id) -> str:
    """A fresh token for the device, as its agent holds it (the database keeps only its hash)."""
    token = new_token(DEVICE_TOKEN_PREFIX)
    with session_scope(engine) as session:
        device = session.get(Device, device_id)
        device.token_hash = keyed_hash(token)
        session.add(device)
    return token


def scale_up(engine, device_id, count=1):
    return autoscaling.scale_up(engine, SETTINGS, MemoryWakeups(), device_id, count)


def scale_down(engine, device_id, node_id):
    autoscaling.scale_down(engine, SETTINGS, MemoryWakeups(), device_id, node_id)


def balance(engine, kind, owner_id) -> int:
    with session_scope(engine) as session:
        return ledger.get_account(session, kind, owner_id).balance_micro


def last_event(engine, cluster_id):
    with session_scope(engine) as session:
        return clusters.events_of(session, cluster_id)[-1]


def test_the_head_of_an_autoscaled_cluster_is_started_with_the_autoscaler_config(engine):
    cluster_id, _, head_device, _, start = autoscaled(engine, [1, 1], min_workers=1, max_workers=3)
    cpus = start["autoscaling"]["head_resources"]["CPU"]
    assert cpus >= 1 and start["autoscaling"] == {
        "min_workers": 1,
        "max_workers": 3,
        "idle_timeout_s": SETTINGS.autoscale_idle_timeout_s,
        "head_resources": {"CPU": cpus, "GPU": 1.0},
        "worker_resources": {"CPU": cpus, "GPU": 1.0},
    }
    assert start["node_id"] and start["cluster_id"] == str(cluster_id)
    with session_scope(engine) as session:
        found = autoscaling.nodes(session, head_device)
    assert found.cluster_id == cluster_id and (found.min_workers, found.max_workers) == (1, 3)
    assert [(n.role, n.state) for n in found.nodes] == [("head", NodeState.JOINED)]


def test_a_cluster_without_bounds_gets_no_autoscaler_and_no_device_can_scale_it(engine):
    with session_scope(engine) as session:
        devices = market_with(session, [1, 1])
        customer = customer_with(session, 100_000_000)
        cluster = clusters.create(session, SETTINGS, customer, spec(1))
    advance(engine, cluster.id)
    with session_scope(engine) as session:
        (command,) = session.exec(select(DeviceCommand).where(DeviceCommand.kind == "start_ray_head")).all()
        assert "autoscaling" not in command.payload
        head_device = command.device_id
    for device in (head_device, devices[1].id):
        with session_scope(engine) as session, pytest.raises(NotFound):
            autoscaling.nodes(session, device)
        with pytest.raises(NotFound):
            scale_up(engine, device)


def test_the_autoscaler_adds_a_worker_that_joins_the_running_cluster_and_is_metered(engine):
    cluster_id, customer, head_device, head, _ = autoscaled(engine, [1, 1, 2])
    available = balance(engine, AccountKind.CUSTOMER_AVAILABLE, customer)
    added = scale_up(engine, head_device, count=1)
    (node,) = added.nodes
    assert (node.role, node.gpu_count) == ("worker", 1)
    with session_scope(engine) as session:
        cluster = session.get(Cluster, cluster_id)
        row = next(n for n in clusters.nodes_of(session, cluster_id) if n.id == node.id)
        # The one-GPU device (the two-GPU one does not make a one-GPU node), at no more than the quote.
        assert row.gpu_count == 1 and row.rate_micro <= cluster.price_per_gpu_hour_micro
        assert row.state == NodeState.STARTING  # the head is up: its worker start went out at once
        (command,) = session.exec(select(DeviceCommand).where(DeviceCommand.device_id == row.device_id)).all()
        assert command.kind == "start_ray_worker" and command.payload["node_id"] == str(node.id)
        assert cluster.gpu_count == 2 and cluster.state == ClusterState.RUNNING
        held = escrow.in_escrow(session, cluster)
        remaining_s = (cluster.expires_at - row.created_at).total_seconds()
    # Escrow for the worker's remaining time (2 h less the seconds the test took) left the credit.
    hold = available - balance(engine, AccountKind.CUSTOMER_AVAILABLE, customer)
    assert hold == pytest.approx(row.rate_micro * remaining_s / 3600, abs=row.rate_micro * 2 / 3600)
    assert held > hold
    (scaled,) = [e for e in clusters_events(engine, cluster_id) if e.kind == "scaled_up"]
    assert "asked for 1 more worker: 1 booked" in scaled.message
    agent_answers(engine, row.device_id, node_id="added")
    head.alive.add("added")
    assert advance(engine, cluster_id, head) == ClusterState.RUNNING
    (joined,) = [n for n in nodes(engine, cluster_id) if n.id == node.id]
    assert joined.state == NodeState.JOINED and joined.joined_at is not None
    with session_scope(engine) as session:
        assert [n.id for n in autoscaling.nodes(session, head_device).nodes][1:] == [node.id]
    # Ten minutes on, heartbeating: the added worker is charged like any other node.
    backdate(engine, cluster_id, 600)
    with session_scope(engine) as session:
        beat(engine, [session.get(Device, n.device_id) for n in clusters.nodes_of(session, cluster_id)])
    with session_scope(engine) as session:
        metering.meter_cluster(session, SETTINGS, session.get(Cluster, cluster_id))
    with session_scope(engine) as session:
        lines = session.exec(select(UsageRecord).where(UsageRecord.node_id == node.id)).all()
        assert sum(u.seconds for u in lines) == pytest.approx(600, abs=3)
        assert_charges_are_exact(session, cluster_id)


def clusters_events(engine, cluster_id):
    with session_scope(engine) as session:
        return clusters.events_of(session, cluster_id)


def test_no_more_than_max_workers_and_a_refusal_changes_nothing(engine):
    cluster_id, customer, head_device, _, _ = autoscaled(engine, [1, 1, 1, 1], max_workers=2)
    added = scale_up(engine, head_device, count=5)  # asks for 5: 2 fit under max_workers
    assert len(added.nodes) == 2
    available = balance(engine, AccountKind.CUSTOMER_AVAILABLE, customer)
    with pytest.raises(Conflict) as refused:
        scale_up(engine, head_device)
    assert refused.value.code == "max_workers"
    assert balance(engine, AccountKind.CUSTOMER_AVAILABLE, customer) == available
    assert len([n for n in nodes(engine, cluster_id) if n.state != NodeState.RELEASED]) == 3


def test_no_capacity_or_short_credit_is_refused_saying_why_once(engine):
    cluster_id, customer, head_device, _, _ = autoscaled(engine, [1])  # no free device
    for _ in range(3):  # the autoscaler retries; the customer reads it once
        with pytest.raises(Conflict) as refused:
            scale_up(engine, head_device)
    assert "no H100-80GB device is available" in refused.value.message
    events = [e for e in clusters_events(engine, cluster_id) if e.kind == "scale_refused"]
    assert len(events) == 1 and "no H100-80GB device" in events[0].message

    with session_scope(engine) as session:
        (spare,) = market_with(session, [1])
    # Spend the customer's credit down to less than the escrow one more worker needs.
    with session_scope(engine) as session:
        available = ledger.get_account(session, AccountKind.CUSTOMER_AVAILABLE, customer)
        spent = available.balance_micro - 1_000
        other = ledger.get_account(session, AccountKind.CUSTOMER_ESCROW, customer)
        ledger.post(
            session,
            kind="escrow_hold",
            idempotency_key=f"test-spend:{uuid.uuid4()}",
            legs=[ledger.Leg(available, -spent), ledger.Leg(other, spent)],
            description="spent elsewhere",
        )
    with pytest.raises(Conflict) as refused:
        scale_up(engine, head_device)
    assert "credit is short" in refused.value.message
    assert device_state(engine, spare.id) == DeviceState.READY  # the booking was undone
    assert balance(engine, AccountKind.CUSTOMER_AVAILABLE, customer) == 1_000


def test_releasing_an_idle_worker_stops_it_and_its_charges_and_returns_its_device(engine):
    cluster_id, _, head_device, head, _ = autoscaled(engine, [1, 1])
    (node,) = scale_up(engine, head_device).nodes
    worker = next(n for n in nodes(engine, cluster_id) if n.id == node.id)
    agent_answers(engine, worker.device_id, node_id="added")
    head.alive.add("added")
    advance(engine, cluster_id, head)
    scale_down(engine, head_device, node.id)
    released = next(n for n in nodes(engine, cluster_id) if n.id == node.id)
    assert released.state == NodeState.RELEASED and released.ended_at is not None
    with session_scope(engine) as session:
        cluster = session.get(Cluster, cluster_id)
        assert cluster.gpu_count == 1 and cluster.state == ClusterState.RUNNING
        assert autoscaling.nodes(session, head_device).nodes[-1].role == "head"
    assert "released an idle worker" in last_event(engine, cluster_id).message
    scale_down(engine, head_device, node.id)  # the autoscaler's retry: a harmless repeat
    assert agent_answers(engine, worker.device_id) == "stop_ray"
    assert advance(engine, cluster_id, head) == ClusterState.RUNNING  # not degraded: nothing was lost
    assert device_state(engine, worker.device_id) == DeviceState.READY
    (head_node,) = [n for n in nodes(engine, cluster_id) if n.role == "head"]
    with pytest.raises(Conflict):
        scale_down(engine, head_device, head_node.id)
    with pytest.raises(NotFound):
        scale_down(engine, head_device, uuid.uuid4())


def test_an_added_worker_that_fails_to_start_is_dropped_without_degrading_the_cluster(engine):
    cluster_id, _, head_device, head, _ = autoscaled(engine, [1, 1])
    (node,) = scale_up(engine, head_device).nodes
    worker = next(n for n in nodes(engine, cluster_id) if n.id == node.id)
    agent_answers(engine, worker.device_id, ok=False)
    assert advance(engine, cluster_id, head) == ClusterState.RUNNING
    dropped = next(n for n in nodes(engine, cluster_id) if n.id == node.id)
    assert dropped.state == NodeState.RELEASED
    with session_scope(engine) as session:
        assert session.get(Cluster, cluster_id).gpu_count == 1
        assert [n.role for n in autoscaling.nodes(session, head_device).nodes] == ["head"]


def test_the_routes_answer_the_head_device_only(parts, api_client):
    cluster_id, _, head_device, _, _ = autoscaled(parts.engine, [1, 1])
    token = token_of(parts.engine, head_device)
    headers = {"Authorization": f"Bearer {token}"}
    listed = api_client.get("/api/v1/worker/autoscaler/nodes", headers=headers)
    assert listed.status_code == 200 and listed.json()["cluster_id"] == str(cluster_id)
    added = api_client.post("/api/v1/worker/autoscaler/nodes", json={"count": 1}, headers=headers)
    assert added.status_code == 201, added.text
    (node,) = added.json()["nodes"]
    assert (
        api_client.post("/api/v1/worker/autoscaler/nodes", json={"count": 0}, headers=headers).status_code
        == 422
    )
    refused = api_client.post("/api/v1/worker/autoscaler/nodes", json={"count": 1}, headers=headers)
    assert refused.status_code == 409 and "available" in refused.json()["error"]["message"]
    gone = api_client.delete(f"/api/v1/worker/autoscaler/nodes/{node['id']}", headers=headers)
    assert gone.status_code == 204
    assert api_client.delete("/api/v1/worker/autoscaler/nodes/nope", headers=headers).status_code == 422


def test_the_node_provider_speaks_to_the_portal_through_the_agents_relay_and_keeps_its_list_through_an_outage(
    portal_api, tmp_path, monkeypatch
):
    """Ray's autoscaler sees the cluster through ``PortalNodeProvider``, which asks the agent's relay on a
    Unix socket (the node never holds the device's token): the head and the workers with their kinds and
    types, nodes it creates and terminates; while the portal is down it keeps the last list (an empty one
    would read as every node gone) and a launch fails with the reason."""
    from ray.autoscaler.tags import TAG_RAY_NODE_KIND, TAG_RAY_NODE_STATUS, TAG_RAY_USER_NODE_TYPE

    from gpu_pool import node_provider, ray_node

    server, parts = portal_api
    _, _, head_device, _, start = autoscaled(parts.engine, [1, 1])
    spec = ray_node.NodeSpec(
        role="head",
        num_gpus=1,
        resources={},
        autoscaling=autoscaler.config(
            cluster_id=start["cluster_id"],
            min_workers=0,
            max_workers=2,
            idle_timeout_s=60,
            head_resources={"CPU": 1, "GPU": 1},
            worker_resources={"CPU": 1, "GPU": 1},
        ),
        portal_url=server.url,
        autoscaler_token=token_of(parts.engine, head_device),
    )
    folder = tmp_path / "relay"
    folder.mkdir()
    # As a container's head sees it: the provider's module beside the config, no token anywhere.
    relay, config_path = ray_node.serve_autoscaler(spec, folder, seen_as=pathlib.Path("/run/gpu-pool"))
    try:
        config = yaml.safe_load((folder / "autoscaling.yaml").read_text())
        assert config_path == pathlib.Path("/run/gpu-pool/autoscaling.yaml")
        assert config["provider"]["socket"] == "/run/gpu-pool/autoscaler.sock"
        assert config["provider"]["module"] == "portal_node_provider.PortalNodeProvider"
        # The module stands alone in a container: it names the node types as the agent does.
        assert (node_provider.HEAD_TYPE, node_provider.WORKER_TYPE) == (
            ray_node.HEAD_TYPE,
            ray_node.WORKER_TYPE,
        )
        assert (folder / "portal_node_provider.py").read_text() == pathlib.Path(
            node_provider.__file__
        ).read_text()
        assert not [p for p in folder.iterdir() if p.is_file() and spec.autoscaler_token in p.read_text()]
        provider = node_provider.PortalNodeProvider(
            {**config["provider"], "socket": str(relay.socket_path)}, "test"
        )

        (head_id,) = provider.non_terminated_nodes({})
        assert provider.node_tags(head_id) == {
            TAG_RAY_NODE_KIND: "head",
            TAG_RAY_USER_NODE_TYPE: "head",
            TAG_RAY_NODE_STATUS: "up-to-date",
        }
        created = provider.create_node({}, {TAG_RAY_USER_NODE_TYPE: "gpu_worker"}, 1)
        (worker_id,) = created
        assert provider.non_terminated_nodes({TAG_RAY_NODE_KIND: "worker"}) == [worker_id]
        assert provider.node_tags(worker_id)[TAG_RAY_NODE_STATUS] == "uninitialized"  # starting, not joined
        assert provider.is_running(worker_id) and not provider.is_terminated(worker_id)

        server.stop()
        try:
            monkeypatch.setattr(node_provider, "LIST_TTL_S", 0.0)  # stale: the next read asks the portal
            assert sorted(provider.non_terminated_nodes({})) == sorted([head_id, worker_id])
            with pytest.raises(RuntimeError, match="502: the portal cannot be reached"):
                provider.create_node({}, {TAG_RAY_USER_NODE_TYPE: "gpu_worker"}, 1)
        finally:
            server.start()

        with pytest.raises(RuntimeError, match="no H100-80GB device is available"):
            provider.create_node({}, {TAG_RAY_USER_NODE_TYPE: "gpu_worker"}, 1)
        provider.terminate_node(worker_id)
        assert provider.non_terminated_nodes({}) == [head_id]
        assert provider.is_terminated(worker_id)
    finally:
        relay.close()
    assert not relay.socket_path.exists()


def test_the_relay_lets_through_only_the_autoscalers_three_requests(portal_api, tmp_path):
    """What a customer's code on the head can send the relay: anything but listing the nodes, asking for
    1 to 1000 more and releasing one by id is refused there, and nothing reaches the portal for it."""
    from gpu_pool.autoscaler_relay import AutoscalerRelay

    server, parts = portal_api
    cluster_id, _, head_device, _, _ = autoscaled(parts.engine, [1, 1])
    token = token_of(parts.engine, head_device)
    relay = AutoscalerRelay(tmp_path, server.url, token)
    try:
        agent = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(relay.socket_path)), base_url="http://agent"
        )
        listed = agent.get("/autoscaler/nodes")
        assert listed.status_code == 200 and listed.json()["cluster_id"] == str(cluster_id)
        refused = {
            "another route": agent.get("/devices/me"),
            "the worker API": agent.post("/api/v1/worker/heartbeat", json={}),
            "a path escape": agent.get("/autoscaler/nodes/../../devices/me"),
            "no body": agent.post("/autoscaler/nodes"),
            "not JSON": agent.post("/autoscaler/nodes", content=b"count=1"),
            "no count": agent.post("/autoscaler/nodes", json={"n": 1}),
            "a zero count": agent.post("/autoscaler/nodes", json={"count": 0}),
            "a huge count": agent.post("/autoscaler/nodes", json={"count": 10**9}),
            "a fractional count": agent.post("/autoscaler/nodes", json={"count": 1.5}),
            "a boolean count": agent.post("/autoscaler/nodes", json={"count": True}),
            "a big body": agent.post("/autoscaler/nodes", content=b"{" + b" " * 5000 + b"}"),
            "a bad node id": agent.delete("/autoscaler/nodes/nope"),
            "another method": agent.put("/autoscaler/nodes", json={"count": 1}),
        }
        for what, reply in refused.items():
            assert 400 <= reply.status_code < 500, (what, reply.status_code, reply.text)
            assert token not in reply.text and "Bearer" not in reply.text, what
        assert agent.get("/autoscaler/nodes").json()["nodes"] == listed.json()["nodes"]  # nothing changed
        agent.close()
    finally:
        relay.close()
