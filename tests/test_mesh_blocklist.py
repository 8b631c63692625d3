"""Revoked overlay certificates are blocklisted: a blocked or removed device's, an ended cluster's
customers' connections and devices' older ones, until they expire; at the lighthouses (``portal mesh``) and
on every node that renews.

Fingerprints are checked against ``nebula-cert print``; the refusal against a real Nebula lighthouse and a
real agent (both without TUN devices, on loopback).
"""

import json
import signal
import socket
import subprocess
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlmodel import select

import gpu_pool.mesh as agent_mesh
from portal.infra.db import session_scope
from portal.models import Cluster, ClusterState, Device, MeshCertificate, Role
from portal.models.base import utcnow
from portal.services.mesh import certificates, lighthouse, revocations
from portal.services.mesh.portal_node import PortalNode
from portal.services.providers import device_admin
from portal.services.rentals import clusters, provisioning
from tests.conftest import require_program
from tests.factories import RecordedFollowUps, access_token_for, make_user
from tests.test_mesh_certificates import (
    MESH,
    agent_of,
    certify,
    keygen,
    portal_with,
    printed,
    running_cluster,
)

ADMIN = uuid.uuid4()


@pytest.fixture
def nebula_cert() -> str:
    return require_program("nebula-cert", "nebula")


@pytest.fixture
def mesh(tmp_path):
    client, parts = portal_with(tmp_path, **MESH)
    with client:
        yield client, parts
    parts.engine.dispose()


def rows(parts, **where) -> list[MeshCertificate]:
    with session_scope(parts.engine) as session:
        query = select(MeshCertificate)
        for name, value in where.items():
            query = query.where(getattr(MeshCertificate, name) == value)
        return list(session.exec(query).all())


def block(parts, device_id: uuid.UUID) -> None:
    with session_scope(parts.engine) as session:
        device_admin.block(session, RecordedFollowUps(), device_id, "test", admin_id=ADMIN)


def test_every_certificate_is_recorded_by_nebulas_fingerprint(mesh, nebula_cert, tmp_path):
    client, parts = mesh
    device_id, headers = agent_of(parts)
    answer = certify(client, headers, keygen(nebula_cert, tmp_path))

    shown = printed(nebula_cert, tmp_path, answer["certificate"])
    assert revocations.fingerprint(answer["certificate"]) == shown["fingerprint"]
    [row] = rows(parts, device_id=device_id)
    assert row.fingerprint == shown["fingerprint"]
    assert (row.groups, row.cluster_id, row.revoked_at) == ("device", None, None)
    assert row.expires_at == datetime.fromisoformat(answer["expires_at"])
    assert answer["blocklist"] == []


def test_a_blocked_or_removed_devices_certificates_are_blocklisted_until_they_expire(
    mesh, nebula_cert, tmp_path
):
    client, parts = mesh
    blocked, blocked_headers = agent_of(parts)
    with session_scope(parts.engine) as session:
        provider = make_user(session, Role.PROVIDER)
        owner = {"Authorization": f"Bearer {access_token_for(session, provider)}"}
    removed, removed_headers = agent_of(parts, provider.id)
    _, other_headers = agent_of(parts)
    public_key = keygen(nebula_cert, tmp_path)
    revoked = [certify(client, blocked_headers, public_key)["certificate"] for _ in range(2)]
    revoked.append(certify(client, removed_headers, public_key)["certificate"])
    certify(client, other_headers, public_key)

    block(parts, blocked)
    assert client.delete(f"/api/v1/devices/{removed}", headers=owner).status_code == 204

    fingerprints = sorted({revocations.fingerprint(pem) for pem in revoked})  # one second: one cert
    assert revocations.blocklist(parts.engine) == fingerprints
    # Every node gets it with its next certificate.
    assert certify(client, other_headers, public_key)["blocklist"] == fingerprints
    assert all(row.device_id == removed for row in rows(parts, device_id=removed))  # kept past the device
    # Expired certificates drop out (Nebula refuses them anyway), after a margin for skewed clocks.
    expiry = max(row.expires_at for row in rows(parts, device_id=blocked))
    assert revocations.blocklist(parts.engine, expiry) == fingerprints
    assert revocations.blocklist(parts.engine, expiry + revocations.EXPIRY_MARGIN) == []


def test_a_clusters_end_revokes_connections_at_once_and_devices_older_certificates_after_renewal(
    mesh, nebula_cert, tmp_path
):
    client, parts = mesh
    cluster_id, _, owner, _ = running_cluster(parts)
    with session_scope(parts.engine) as session:
        device_id = session.exec(select(Device.id).where(Device.overlay_ip.is_not(None))).one()
    public_key = keygen(nebula_cert, tmp_path)
    issued = certificates.issue(parts.engine, parts.settings, device_id, public_key)
    assert issued.groups == ["device", f"cluster-{cluster_id}"]
    connected = client.post(
        f"/api/v1/clusters/{cluster_id}/connect", json={"public_key": public_key}, headers=owner
    )
    assert connected.status_code == 200, connected.text
    _, bystander_headers = agent_of(parts)
    bystander = certify(client, bystander_headers, public_key)["certificate"]

    with session_scope(parts.engine) as session:
        assert clusters.request_termination(session, session.get_one(Cluster, cluster_id), "test")
    ended = provisioning.advance(parts.engine, parts.settings, parts.wakeups, cluster_id, lambda _: set())
    assert ended == ClusterState.TERMINATED
    renewed = certificates.issue(parts.engine, parts.settings, device_id, public_key)  # on stop_ray
    assert renewed.groups == ["device"]

    customer = revocations.fingerprint(connected.json()["certificate"])
    device = revocations.fingerprint(issued.certificate)
    now = utcnow()
    assert revocations.blocklist(parts.engine, now) == [customer]
    # The device's older certificate only once it had the time to renew (the agent does on stop_ray).
    later = now + revocations.DEVICE_RENEWAL_GRACE + timedelta(seconds=1)
    assert revocations.blocklist(parts.engine, later) == sorted([customer, device])
    assert revocations.fingerprint(renewed.certificate) not in revocations.blocklist(parts.engine, later)
    assert revocations.fingerprint(bystander) not in revocations.blocklist(parts.engine, later)


def test_a_certificate_signed_as_its_cluster_ends_is_revoked_too(mesh, nebula_cert, tmp_path):
    """Its groups were read before the end, its record comes after: it is revoked as the end would have."""
    _, parts = mesh
    cluster_id, _, _, _ = running_cluster(parts)
    with session_scope(parts.engine) as session:
        device_id = session.exec(select(Device.id).where(Device.overlay_ip.is_not(None))).one()
        session.get_one(Cluster, cluster_id).ended_at = utcnow()
    issued = certificates.issue(parts.engine, parts.settings, device_id, keygen(nebula_cert, tmp_path))
    assert issued.groups == ["device", f"cluster-{cluster_id}"]
    [row] = rows(parts, device_id=device_id)
    assert row.revoked_at is not None and row.revoked_at <= utcnow() + revocations.DEVICE_RENEWAL_GRACE


def test_the_lighthouse_config_carries_the_blocklist(mesh, nebula_cert, tmp_path):
    client, parts = mesh
    device_id, headers = agent_of(parts)
    revoked = certify(client, headers, keygen(nebula_cert, tmp_path))["certificate"]
    prepared = lighthouse.prepare(parts.settings, listen_port=free_udp_port(), hours=1)
    assert yaml.safe_load(prepared.config_path.read_text())["pki"]["blocklist"] == []

    assert lighthouse.refresh_blocklist(parts.engine, prepared.config_path) is False  # nothing revoked
    block(parts, device_id)
    assert lighthouse.refresh_blocklist(parts.engine, prepared.config_path) is True  # portal mesh: SIGHUP
    pki = yaml.safe_load(prepared.config_path.read_text())["pki"]
    assert pki["blocklist"] == [revocations.fingerprint(revoked)]
    assert pki["disconnect_invalid"] is True
    assert lighthouse.refresh_blocklist(parts.engine, prepared.config_path) is False
    # A restart keeps the last blocklist until the database answers again.
    again = lighthouse.prepare(parts.settings, listen_port=free_udp_port(), hours=1)
    assert yaml.safe_load(again.config_path.read_text())["pki"]["blocklist"] == pki["blocklist"]


def test_the_portals_node_renders_the_blocklist_at_each_renewal(mesh, nebula_cert, tmp_path):
    client, parts = mesh
    device_id, headers = agent_of(parts)
    revoked = revocations.fingerprint(certify(client, headers, keygen(nebula_cert, tmp_path))["certificate"])
    block(parts, device_id)
    node = PortalNode(parts.settings, engine=parts.engine)
    assert node.install(node.request())
    assert yaml.safe_load(node.config_path.read_text())["pki"]["blocklist"] == [revoked]


# --- real Nebula ------------------------------------------------------------------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class InProcessPortal:
    """The agent's PortalClient, answered by the portal's certificate service in this process."""

    def __init__(self, parts, device_id: uuid.UUID) -> None:
        self.parts, self.device_id = parts, device_id

    def mesh_certificate(self, public_key: str) -> dict:
        issued = certificates.issue(self.parts.engine, self.parts.settings, self.device_id, public_key)
        return {
            "certificate": issued.certificate,
            "ca": issued.ca,
            "lighthouses": [
                {"overlay_ip": str(lh.overlay_ip), "public_address": lh.public_address}
                for lh in issued.lighthouses
            ],
            "overlay_ip": str(issued.overlay_ip),
            "overlay_cidr": issued.overlay_cidr,
            "portal_overlay_ip": str(issued.portal_overlay_ip),
            "groups": issued.groups,
            "expires_at": issued.expires_at.isoformat(),
            "blocklist": issued.blocklist,
        }


def log_entries(path: Path) -> list[dict]:
    entries = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def wait_for(what: str, check, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_lighthouse_refuses_a_revoked_certificate_and_the_agent_gets_back_with_a_new_one(
    tmp_path, nebula_cert, monkeypatch
):
    require_program("nebula", "nebula")
    port = free_udp_port()
    lighthouses = [{"overlay_ip": "100.64.0.2", "public_address": f"127.0.0.1:{port}"}]
    client, parts = portal_with(tmp_path, **{**MESH, "lighthouses": lighthouses})
    client.close()
    # No TUN device (no root): the tunnels' handshakes are all this checks; lighthouse updates every second,
    # so the lighthouse's connection manager looks at the tunnel (and tears down a revoked one) at once.
    render = agent_mesh.config

    def without_tun(*args, **kwargs):
        rendered = render(*args, **kwargs)
        rendered["tun"] = {"disabled": True}
        rendered["lighthouse"]["interval"] = 1
        return rendered

    monkeypatch.setattr(agent_mesh, "config", without_tun)
    prepared = lighthouse.prepare(parts.settings, listen_port=port, listen_host="127.0.0.1", hours=1)
    home = prepared.config_path.parent
    processes: list[subprocess.Popen] = []
    revoked_id, _ = agent_of(parts)
    other_id, _ = agent_of(parts)
    agents = [
        agent_mesh.Mesh(InProcessPortal(parts, device_id), tmp_path / name, tun_device=name)
        for device_id, name in ((revoked_id, "revoked"), (other_id, "other"))
    ]
    revoked, other = agents
    revoked.lighthouse_lost_s = 1.0
    try:
        with (home / "nebula.log").open("w") as log:
            processes.append(
                subprocess.Popen(
                    [lighthouse.nebula(), "-config", str(prepared.config_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        for agent in agents:
            assert agent.start()
        for agent in agents:
            wait_for("the lighthouse", lambda agent=agent: agent.status()["state"] == "connected")
        first = revoked.certificate
        assert first is not None

        # Revoked as an ended cluster revokes a device that missed its renewal (it stays unblocked).
        with session_scope(parts.engine) as session:
            assert revocations.revoke_device(session, revoked_id) == 1
        assert lighthouse.refresh_blocklist(parts.engine, prepared.config_path)
        processes[0].send_signal(signal.SIGHUP)  # as portal mesh does
        fingerprint = revocations.fingerprint(first.certificate)

        def torn_down() -> bool:
            return any(
                entry.get("msg") == "Remote certificate is no longer valid, tearing down the tunnel"
                and entry.get("fingerprint") == fingerprint
                for entry in log_entries(home / "nebula.log")
            )

        wait_for("the revoked tunnel's teardown", torn_down)
        # The agent reaches no lighthouse, asks for a new certificate, and is back.
        wait_for("a new certificate", lambda: revoked.certificate is not first, timeout_s=30)
        wait_for("the lighthouse again", lambda: revoked.status()["state"] == "connected")
        assert revoked.certificate is not None and revoked.certificate.blocklist == [fingerprint]
        assert yaml.safe_load(revoked.config_path.read_text())["pki"]["blocklist"] == [fingerprint]

        # A node that still holds the revoked certificate is refused at the handshake; the other is not.
        stale = tmp_path / "stale"
        stale.mkdir()
        for name in ("host.key", "ca.crt"):
            (stale / name).write_bytes((tmp_path / "revoked" / name).read_bytes())
        (stale / "host.crt").write_text(first.certificate)
        config = without_tun(
            first,
            ca_path=stale / "ca.crt",
            cert_path=stale / "host.crt",
            key_path=stale / "host.key",
            tun_device="stale",
        )
        (stale / "nebula.yml").write_text(yaml.safe_dump(config))
        with (stale / "nebula.log").open("w") as log:
            processes.append(
                subprocess.Popen(
                    [lighthouse.nebula(), "-config", str(stale / "nebula.yml")],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

        def refused() -> bool:
            return any(
                entry.get("msg") == "Invalid certificate from host"
                and "certificate has been blocked" in str(entry.get("error"))
                and (entry.get("cert") or {}).get("fingerprint") == fingerprint
                for entry in log_entries(home / "nebula.log")
            )

        wait_for("the stale certificate's refusal", refused)
        assert other.status()["state"] == "connected"
        other_ip = other.overlay_ip
        assert not any(
            entry.get("msg") == "Remote certificate is no longer valid, tearing down the tunnel"
            and entry.get("vpnIp") == other_ip
            for entry in log_entries(home / "nebula.log")
        )
    finally:
        for agent in agents:
            agent.stop()
        for process in processes:
            process.terminate()
            process.wait(timeout=10)
        parts.engine.dispose()
