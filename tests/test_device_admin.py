"""Admins across every provider's devices: list and filter, block with a reason its owner sees (a cluster it
serves replaces it), unblock (it proves its compute again), and the network's fault list."""

from __future__ import annotations

import uuid

from sqlmodel import select

from portal.infra.db import session_scope
from portal.models import AuditLog, ClusterState, DeviceCommand, DeviceState, NodeState, Role, User
from portal.models.base import utcnow
from portal.services.providers import device_admin
from tests.factories import RecordedFollowUps, access_token_for, make_user
from tests.test_clusters import FakeHead, advance, device_state, market_with, nodes, run_to_running

ADMIN = uuid.uuid4()  # audited as this admin


def headers(session, user) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token_for(session, user)}"}


def test_an_admin_blocks_a_device_its_owner_sees_why_and_an_unblock_sends_it_to_prove_itself(
    parts, api_client
):
    with session_scope(parts.engine) as session:
        device = market_with(session, [1])[0]
        device.last_heartbeat_at = utcnow()
        session.add(device)
        admin = headers(session, make_user(session, Role.ADMIN))
        owner = headers(session, session.get(User, device.owner_id))
        device_id, name = device.id, device.name
    listed = api_client.get("/api/v1/admin/devices", params={"q": name}, headers=admin).json()
    assert [d["id"] for d in listed["items"]] == [str(device_id)] and listed["items"][0]["owner_email"]
    assert (
        api_client.get("/api/v1/admin/devices", params={"state": "blocked"}, headers=admin).json()["total"]
        == 0
    )

    blocked = api_client.post(
        f"/api/v1/admin/devices/{device_id}/block", json={"reason": "double-renting seen"}, headers=admin
    )
    assert blocked.status_code == 200 and blocked.json()["state"] == "blocked"
    mine = api_client.get(f"/api/v1/devices/{device_id}", headers=owner).json()
    assert not mine["hireable"]
    assert "Blocked by an admin: double-renting seen" in [c["message"] for c in mine["eligibility"]]
    (fault,) = api_client.get("/api/v1/admin/faults", params={"kind": "blocked"}, headers=admin).json()[
        "items"
    ]
    assert fault["device_name"] == name and "double-renting seen" in fault["message"]
    assert api_client.get("/api/v1/market/offers").json() == []
    again = api_client.post(
        f"/api/v1/admin/devices/{device_id}/block", json={"reason": "again!"}, headers=admin
    )
    assert again.status_code == 409
    assert (
        api_client.post(
            f"/api/v1/admin/devices/{uuid.uuid4()}/block", json={"reason": "nope"}, headers=admin
        ).status_code
        == 404
    )
    assert (
        api_client.post(
            f"/api/v1/admin/devices/{device_id}/block", json={"reason": ""}, headers=admin
        ).status_code
        == 422
    )

    unblocked = api_client.post(f"/api/v1/admin/devices/{device_id}/unblock", headers=admin)
    assert unblocked.status_code == 200 and unblocked.json()["state"] == "verifying"
    assert api_client.post(f"/api/v1/admin/devices/{device_id}/unblock", headers=admin).status_code == 409
    with session_scope(parts.engine) as session:
        (command,) = session.exec(select(DeviceCommand).where(DeviceCommand.device_id == device_id)).all()
        assert command.kind == "verify"
        actions = session.exec(select(AuditLog.action).where(AuditLog.target_id == str(device_id))).all()
        assert sorted(actions) == ["device.block", "device.unblock"]


def test_blocking_a_device_under_a_running_cluster_replaces_its_node(engine):
    cluster_id, _, _ = run_to_running(engine, [1, 1], 2)
    with session_scope(engine) as session:
        spare = market_with(session, [1])[0]
    head_node, worker_node = nodes(engine, cluster_id)
    followups = RecordedFollowUps()
    with session_scope(engine) as session:
        device_admin.block(session, followups, worker_node.device_id, "failed a spot check", admin_id=ADMIN)
    # Committed, then the clusters are reconciled at once rather than at the next pass.
    assert followups.handed == [("reconcile_clusters", None)]
    head = FakeHead()
    head.alive = {str(head_node.id)}
    assert advance(engine, cluster_id, head) == ClusterState.DEGRADED
    lost, replacement = [n for n in nodes(engine, cluster_id) if n.role == "worker"]
    assert (
        lost.state == NodeState.RELEASED and "blocked by an admin: failed a spot check" in lost.state_reason
    )
    assert replacement.device_id == spare.id
    assert device_state(engine, lost.device_id) == DeviceState.BLOCKED  # never handed back to the market


def test_the_fault_list_filters_by_device_kind_and_severity(engine):
    with session_scope(engine) as session:
        first, second = market_with(session, [1, 1])
        device_admin.block(session, RecordedFollowUps(), first.id, "reason one", admin_id=ADMIN)
        device_admin.block(session, RecordedFollowUps(), second.id, "reason two", admin_id=ADMIN)
    with session_scope(engine) as session:
        rows, total = device_admin.search_faults(session, device_id=first.id, limit=10, offset=0)
        assert total == 1 and rows[0][1] == first.name
        assert device_admin.search_faults(session, severity="warning", limit=10, offset=0)[1] == 0
        assert device_admin.search_faults(session, kind="blocked", limit=1, offset=1)[1] == 2
