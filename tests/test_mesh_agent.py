"""The agent on the overlay: its own key pair, a certificate from a real portal, a Nebula config rendered from
it (checked by ``nebula -test``), renewal and reload, the mesh state in heartbeats, and one real overlay on
this host: a lighthouse (``portal mesh``'s) and three agents' Nebula processes on loopback, two of one
cluster reaching each other over TCP and a third refused by their firewall.

On one host every overlay address is a local one, so the kernel would carry a plain connect over ``lo``;
the end-to-end test binds its client socket to its agent's TUN device (and lets the TUN devices accept local
sources), so every byte goes through Nebula. Nebula needs root for its TUN devices there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from solders.keypair import Keypair
from sqlmodel import select

from gpu_pool.agent import Agent
from gpu_pool.client import PortalClient
from gpu_pool.mesh import Certificate, Mesh, Tunnels, firewall, ping, tun_name
from portal.infra import migrations
from portal.infra.cache import MemoryCache
from portal.infra.db import build_engine, session_scope
from portal.infra.wakeups import MemoryWakeups
from portal.models import Device, DeviceState, Role, User
from portal.models.base import utcnow
from portal.parts import AppParts
from portal.services.mesh import lighthouse
from portal.services.money import ledger
from portal.services.providers import agents, liveness
from portal.services.rentals import clusters
from tests.conftest import IN_CI, require_program, settings_for, wait_until
from tests.factories import device_token_for, make_user
from tests.servers import ServerThread, free_port, portal_app

CLUSTER = f"cluster-{uuid.UUID(int=7)}"


@pytest.fixture
def nebula() -> str:
    require_program("nebula-cert", "nebula")
    return require_program("nebula", "nebula")


def overlay_portal(parts: AppParts, tmp_path: Path, lighthouse_port: int = 4242) -> AppParts:
    settings = settings_for(
        data_dir=tmp_path / "portal-data",
        mesh="nebula",
        overlay_cidr="100.64.0.0/16",
        lighthouses=[{"overlay_ip": "100.64.0.2", "public_address": f"127.0.0.1:{lighthouse_port}"}],
        rate_limit_per_minute=100_000,
        heartbeat_interval_s=1,
    )
    return AppParts(settings, parts.engine, parts.cache, parts.wakeups)


@pytest.fixture
def mesh_api(parts, tmp_path, nebula):
    served = overlay_portal(parts, tmp_path)
    with ServerThread(portal_app(served)) as url:
        yield url, served


def new_agent(parts: AppParts) -> tuple[uuid.UUID, str]:
    with session_scope(parts.engine) as session:
        owner = make_user(session, Role.PROVIDER)
        token = device_token_for(session, owner.id)
        device_id = session.exec(select(Device.id).where(Device.owner_id == owner.id)).one()
    return device_id, token


def answer(groups: list[str], *, hours: float = 12, now: datetime | None = None) -> Certificate:
    now = now or datetime.now(UTC)
    return Certificate(
        certificate="CERT",
        ca="CA",
        lighthouses=[{"overlay_ip": "100.64.0.2", "public_address": "lh.example.net:4242"}],
        overlay_ip="100.64.0.9",
        overlay_cidr="100.64.0.0/16",
        portal_overlay_ip="100.64.0.1",
        groups=groups,
        expires_at=now + timedelta(hours=hours),
        received_at=now,
    )


# --- the config -----------------------------------------------------------------------------------------


def test_an_agent_gets_a_certificate_for_its_own_key_and_a_config_nebula_accepts(mesh_api, nebula, tmp_path):
    url, parts = mesh_api
    device_id, token = new_agent(parts)
    mesh = Mesh(PortalClient(url, token), tmp_path / "agent", tun_device=tun_name(str(device_id)))
    certificate = mesh.request()
    mesh.install(certificate)

    assert stat.S_IMODE((tmp_path / "agent" / "host.key").stat().st_mode) == 0o600
    assert "PRIVATE" not in certificate.certificate  # only the public key went out
    assert certificate.overlay_ip.startswith("100.64.") and certificate.groups == ["device"]
    rendered = yaml.safe_load(mesh.config_path.read_text())
    assert rendered["static_host_map"] == {"100.64.0.2": ["127.0.0.1:4242"]}
    assert rendered["lighthouse"] == {"am_lighthouse": False, "interval": 60, "hosts": ["100.64.0.2"]}
    assert rendered["relay"] == {"am_relay": False, "use_relays": True, "relays": ["100.64.0.2"]}
    # Punching back at once keeps NATed pairs off the relay wherever a direct path exists.
    assert rendered["punchy"] == {"punch": True, "respond": True, "delay": "0s"}
    assert rendered["tun"]["dev"] == tun_name(str(device_id)) and len(rendered["tun"]["dev"]) <= 15
    checked = subprocess.run(
        [nebula, "-test", "-config", str(mesh.config_path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_firewall_lets_in_only_the_current_cluster_and_the_portals_node():
    serving = firewall(answer(["device", CLUSTER]))
    assert serving["outbound"] == [{"port": "any", "proto": "any", "host": "any"}]
    assert serving["inbound"] == [
        {"port": "any", "proto": "icmp", "host": "any"},
        {"port": "any", "proto": "tcp", "cidr": "100.64.0.1/32"},
        {"port": "any", "proto": "udp", "cidr": "100.64.0.1/32"},
        {"port": "any", "proto": "tcp", "group": CLUSTER},
        {"port": "any", "proto": "udp", "group": CLUSTER},
    ]
    idle = firewall(answer(["device"]))["inbound"]
    assert all("group" not in rule for rule in idle) and len(idle) == 3
    # A group that is not a cluster's (or not well formed) never opens the firewall.
    assert firewall(answer(["device", "cluster-*", "lighthouse"]))["inbound"] == idle


def test_a_certificate_is_renewed_at_half_its_life():
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert answer(["device"], hours=12, now=now).renew_at() == now + timedelta(hours=6)
    assert answer(["device"], hours=1, now=now).renew_at() == now + timedelta(minutes=30)


def test_a_renewal_reloads_nebula_a_change_of_groups_restarts_it_and_the_same_one_does_neither(tmp_path):
    """A renewal with the same groups is a SIGHUP; a change of groups restarts Nebula, since Nebula 1.6 keeps
    a tunnel's old certificate (and so its old groups, at the peer's firewall) for the tunnel's life."""
    reloads = tmp_path / "reloads"
    stand_in = subprocess.Popen(  # stands in for nebula: counts its SIGHUPs
        [
            sys.executable,
            "-c",
            "import signal, sys, time\n"
            f"signal.signal(signal.SIGHUP, lambda *_: open({str(reloads)!r}, 'a').write('x'))\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    mesh = Mesh(PortalClient("http://127.0.0.1:9", "t"), tmp_path, tun_device="gptest0")
    try:
        assert stand_in.stdout is not None and stand_in.stdout.readline() == "ready\n"
        (tmp_path / "host.key").write_text("key")
        assert mesh.install(answer(["device"]))
        mesh.process = stand_in  # type: ignore[assignment]
        assert not mesh.install(answer(["device"]))  # the same certificate: nothing to reload
        renewed = Certificate(**{**answer(["device"]).__dict__, "certificate": "CERT renewed"})
        assert mesh.install(renewed)
        wait_until(reloads.exists, timeout_s=5, what="the SIGHUP")
        assert reloads.read_text() == "x" and stand_in.poll() is None

        joined = answer(["device", CLUSTER])
        joined = Certificate(**{**joined.__dict__, "certificate": "CERT serving the cluster"})
        assert mesh.install(joined)
        assert stand_in.wait(timeout=5) is not None  # stopped, not signalled: a new Nebula took its place
        assert reloads.read_text() == "x" and mesh.process is not stand_in
        assert {"group": CLUSTER, "port": "any", "proto": "tcp"} in yaml.safe_load(
            mesh.config_path.read_text()
        )["firewall"]["inbound"]
    finally:
        mesh.stop()
        stand_in.kill()
        stand_in.wait()


def test_nebulas_log_says_connected_and_punched_or_relayed():
    tunnels = Tunnels(["100.64.0.2"])
    assert tunnels.state() == "connecting" and tunnels.relayed() is None
    done = '{"msg":"Handshake message received","handshake":{"stage":2},"certName":"%s","vpnIp":"%s"%s}'
    tunnels.feed(done % ("lh", "100.64.0.2", ',"udpAddr":{"ip":"192.0.2.1","port":4242}'))
    assert tunnels.state() == "connected" and tunnels.relayed() is None
    tunnels.feed(done % ("b", "100.64.0.7", ',"udpAddr":{"ip":"192.0.2.9","port":5000}'))
    assert tunnels.relayed() is False
    tunnels.feed(done % ("c", "100.64.0.8", ""))  # completed without a UDP address: through the relay
    assert tunnels.relayed() is True
    tunnels.feed('{"msg":"Close tunnel received","vpnIp":"100.64.0.8"}')
    tunnels.feed("not json")
    assert tunnels.relayed() is False


# --- with the portal ------------------------------------------------------------------------------------


def test_without_the_overlay_the_agent_stays_on_loopback(portal_api, tmp_path):
    server, parts = portal_api
    device_id, token = new_agent(parts)
    agent = Agent(PortalClient(server.url, token), None, mesh_dir=tmp_path)
    agent.device_id = str(device_id)
    assert not agent.join_mesh()
    assert agent.mesh is None and agent.ray_ip == "127.0.0.1"
    assert not list(tmp_path.glob("mesh-*/nebula.yml"))


def test_heartbeats_carry_the_mesh_state_to_the_device(mesh_api):
    url, parts = mesh_api
    device_id, token = new_agent(parts)
    client = PortalClient(url, token)
    client.heartbeat([], {"state": "none"}, {"state": "connected", "relayed": True})
    with session_scope(parts.engine) as session:
        liveness.flush(session, parts.cache)
    with session_scope(parts.engine) as session:
        device = session.get_one(Device, device_id)
        assert (device.mesh_state, device.mesh_relayed) == ("connected", True)
    # A beat without ``mesh`` (an agent off the overlay) leaves what was reported.
    with session_scope(parts.engine) as session:
        agents.heartbeat(session, parts.cache, device_id, samples=[], ray={"state": "none"})
    with session_scope(parts.engine) as session:
        device = session.get_one(Device, device_id)
        assert (device.mesh_state, device.mesh_relayed) == ("connected", True)


# --- one real overlay on this host ----------------------------------------------------------------------


def cluster_of_two(parts: AppParts) -> tuple[list[tuple[uuid.UUID, str]], uuid.UUID]:
    """Two ready devices booked by one cluster; their tokens."""
    devices = [new_agent(parts) for _ in range(2)]
    with session_scope(parts.engine) as session:
        for device_id, _ in devices:
            device = session.get_one(Device, device_id)
            device.state, device.verified_at, device.last_heartbeat_at = DeviceState.READY, utcnow(), utcnow()
            session.get_one(User, device.owner_id).wallet_address = str(Keypair().pubkey())
        customer = make_user(session, Role.CUSTOMER)
        ledger.grant_credits(
            session,
            user_id=customer.id,
            amount_micro=100_000_000,
            reason="test",
            idempotency_key="mesh-agent",
        )
        model = session.get_one(Device, devices[0][0]).gpu_model
        spec = clusters.ClusterSpec(name="c", gpu_model=model, gpu_count=2, duration_hours=1)
        cluster = clusters.create(session, parts.settings, customer.id, spec)
    return devices, cluster.id


def overlay_connect(tun_device: str, address: str, port: int, timeout_s: float = 3.0) -> bytes | str:
    """Connect from ``tun_device``'s side of the overlay (bound to it, so never through ``lo``)."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, tun_device.encode())
    client.settimeout(timeout_s)
    try:
        client.connect((address, port))
        return client.recv(16)
    except OSError as error:
        return f"{type(error).__name__}: {error}"
    finally:
        client.close()


def accept_local(tun_device: str) -> None:
    """Let the TUN device take packets whose source is another local (overlay) address."""
    for name, value in (("accept_local", "1"), ("rp_filter", "0")):
        Path(f"/proc/sys/net/ipv4/conf/{tun_device}/{name}").write_text(value)


@pytest.mark.slow
def test_two_agents_of_one_cluster_reach_each_other_over_the_overlay_and_a_third_is_refused(
    parts, tmp_path, nebula
):
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("Nebula's TUN devices need root; under CI=true this test must run")
        pytest.skip("Nebula's TUN devices need root")
    port = free_port()
    served = overlay_portal(parts, tmp_path, lighthouse_port=port)
    prepared = lighthouse.prepare(served.settings, listen_port=port, listen_host="127.0.0.1", hours=1)
    beacon = lighthouse.run_nebula(prepared.config_path)
    meshes: list[Mesh] = []
    listener = socket.socket()
    try:
        with ServerThread(portal_app(served)) as url:
            (first, second), _ = cluster_of_two(served)
            outsider = new_agent(served)
            for n, (_, token) in enumerate((first, second, outsider)):
                device = f"gpmesh{os.getpid() % 10000}{n}"
                mesh = Mesh(PortalClient(url, token), tmp_path / f"agent{n}", tun_device=device)
                meshes.append(mesh)
                assert mesh.start()
                accept_local(mesh.tun_device)
            head, worker, stranger = meshes
            assert head.certificate and worker.certificate and stranger.certificate
            assert head.certificate.cluster_group is not None
            assert head.certificate.cluster_group == worker.certificate.cluster_group
            assert stranger.certificate.cluster_group is None

            listener.bind((head.overlay_ip, 0))
            listener.listen()
            serving = threading.Thread(target=_serve, args=(listener,), daemon=True)
            serving.start()
            listen_port = listener.getsockname()[1]

            reached = None
            deadline = time.monotonic() + 20
            while reached != b"hello" and time.monotonic() < deadline:
                reached = overlay_connect(worker.tun_device, head.overlay_ip, listen_port)
            assert reached == b"hello", reached
            # The lighthouse answers pings over the overlay (what gpu-pool doctor checks).
            assert ping("100.64.0.2") is not None
            # Not of the cluster: Nebula's firewall on the head drops it.
            refused = overlay_connect(stranger.tun_device, head.overlay_ip, listen_port, 2.0)
            assert isinstance(refused, str) and "timed out" in refused, refused
            deadline = time.monotonic() + 10
            while head.status()["state"] != "connected" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert head.status() == {"state": "connected", "relayed": False}
            # Supervised: Nebula killed is Nebula restarted.
            killed = head.process
            assert killed is not None
            killed.kill()
            deadline = time.monotonic() + 15
            while (
                head.process is killed or head.status()["state"] == "down"
            ) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert head.process is not killed and head.status()["state"] in ("connecting", "connected")
    finally:
        listener.close()
        for mesh in meshes:
            mesh.stop()
        beacon.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            beacon.wait(timeout=5)
        if beacon.poll() is None:
            beacon.kill()
            beacon.wait()
    for mesh in meshes:
        assert not Path(f"/sys/class/net/{mesh.tun_device}").exists()


def _serve(listener: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while True:
            connection, _ = listener.accept()
            with connection:
                connection.sendall(b"hello")


def test_the_mesh_state_is_flushed_on_postgresql_too(postgres_url):
    migrations.upgrade(postgres_url)
    pg = AppParts(settings_for(), build_engine(postgres_url), MemoryCache(), MemoryWakeups())
    try:
        (on, _), (off, _) = new_agent(pg), new_agent(pg)
        now = utcnow()
        mesh = {"state": "connecting", "relayed": None}
        liveness.record(pg.cache, on, samples=[], ray={"state": "none"}, now=now, sweep_s=600, mesh=mesh)
        liveness.record(pg.cache, off, samples=[], ray={"state": "none"}, now=now, sweep_s=600)
        with session_scope(pg.engine) as session:
            liveness.flush(session, pg.cache)
        with session_scope(pg.engine) as session:
            first, second = session.get_one(Device, on), session.get_one(Device, off)
            assert (first.mesh_state, first.mesh_relayed) == ("connecting", None)
            assert (second.mesh_state, second.mesh_relayed) == ("none", None)  # a beat without mesh
    finally:
        pg.engine.dispose()
