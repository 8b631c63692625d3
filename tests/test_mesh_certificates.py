"""The portal as the overlay's certificate authority: agents send a Nebula public key and get a short-lived
certificate with their device's stable overlay address and the group of the cluster they serve now.

Certificates are checked with Debian's ``nebula-cert`` itself (``print -json`` and ``verify``); address
allocation is raced on SQLite and PostgreSQL.
"""

import base64
import ipaddress
import json
import stat
import subprocess
import threading
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from solders.keypair import Keypair
from sqlmodel import select

from portal.api.app import create_api
from portal.config import SettingsError, load_settings
from portal.infra import migrations
from portal.infra.cache import MemoryCache
from portal.infra.db import build_engine, session_scope
from portal.infra.wakeups import MemoryWakeups
from portal.models import Cluster, ClusterState, Device, DeviceState, Role, User
from portal.models.base import utcnow
from portal.parts import AppParts
from portal.security.secrets import keyed_hash
from portal.services.errors import Conflict
from portal.services.mesh import addresses
from portal.services.money import ledger
from portal.services.rentals import clusters, provisioning
from tests.conftest import require_program, settings_for
from tests.factories import access_token_for, api_key_for, device_token_for, make_device, make_user

LIGHTHOUSE = {"overlay_ip": "100.64.0.2", "public_address": "lighthouse.example.net:4242"}
MESH = {"mesh": "nebula", "lighthouses": [LIGHTHOUSE], "rate_limit_per_minute": 100_000}
CERTIFICATE = "/api/v1/worker/mesh/certificate"


@pytest.fixture
def nebula_cert() -> str:
    return require_program("nebula-cert", "nebula")


def portal_with(tmp_path: Path, **settings: object) -> tuple[TestClient, AppParts]:
    url = f"sqlite:///{tmp_path / 'portal.db'}"
    migrations.upgrade(url)
    parts = AppParts(
        settings_for(data_dir=tmp_path / "data", **settings),
        build_engine(url),
        MemoryCache(),
        MemoryWakeups(),
    )
    return TestClient(create_api(parts), raise_server_exceptions=False), parts


@pytest.fixture
def mesh(tmp_path):
    client, parts = portal_with(tmp_path, **MESH)
    with client:
        yield client, parts
    parts.engine.dispose()


def agent_of(parts: AppParts, owner_id: uuid.UUID | None = None) -> tuple[uuid.UUID, dict[str, str]]:
    """A device and its agent's headers."""
    with session_scope(parts.engine) as session:
        owner_id = owner_id or make_user(session, Role.PROVIDER).id
        token = device_token_for(session, owner_id)
        device_id = session.exec(select(Device.id).where(Device.token_hash == keyed_hash(token))).one()
    return device_id, {"Authorization": f"Bearer {token}"}


def keygen(nebula_cert: str, directory: Path) -> str:
    """A key pair as an agent makes it; returns the public key's PEM."""
    directory.mkdir(parents=True, exist_ok=True)
    key, pub = directory / f"{uuid.uuid4().hex}.key", directory / f"{uuid.uuid4().hex}.pub"
    subprocess.run([nebula_cert, "keygen", "-out-key", str(key), "-out-pub", str(pub)], check=True)
    return pub.read_text()


def printed(nebula_cert: str, directory: Path, certificate: str) -> dict:
    path = directory / f"{uuid.uuid4().hex}.crt"
    path.write_text(certificate)
    shown = subprocess.run(
        [nebula_cert, "print", "-json", "-path", str(path)], check=True, capture_output=True, text=True
    )
    return json.loads(shown.stdout)


def verifies(nebula_cert: str, directory: Path, ca: str, certificate: str) -> bool:
    (directory / "ca.crt").write_text(ca)
    (directory / "device.crt").write_text(certificate)
    checked = subprocess.run(
        [nebula_cert, "verify", "-ca", str(directory / "ca.crt"), "-crt", str(directory / "device.crt")],
        capture_output=True,
    )
    return checked.returncode == 0


def certify(client: TestClient, headers: dict[str, str], public_key: str) -> dict:
    response = client.post(CERTIFICATE, json={"public_key": public_key}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


# --- signing ---------------------------------------------------------------------------------------


def test_an_agent_gets_a_certificate_that_nebula_verifies(mesh, nebula_cert, tmp_path):
    client, parts = mesh
    device_id, headers = agent_of(parts)
    public_key = keygen(nebula_cert, tmp_path / "agent")
    answer = certify(client, headers, public_key)

    details = printed(nebula_cert, tmp_path, answer["certificate"])["details"]
    assert details["name"] == f"device-{device_id}"
    assert details["ips"] == [f"{answer['overlay_ip']}/10"]
    assert details["groups"] == ["device"]
    assert details["isCa"] is False
    raw_key = base64.b64decode(public_key.splitlines()[1])
    assert details["publicKey"] == raw_key.hex()  # the agent's key; the private key never left it
    not_after = datetime.fromisoformat(details["notAfter"].replace("Z", "+00:00"))
    expires_at = datetime.fromisoformat(answer["expires_at"])
    assert timedelta(0) <= not_after - expires_at < timedelta(seconds=5)
    assert expires_at - utcnow() > timedelta(hours=11, minutes=59)  # PORTAL_MESH_CERT_HOURS=12
    assert verifies(nebula_cert, tmp_path, answer["ca"], answer["certificate"])

    assert answer["lighthouses"] == [LIGHTHOUSE]
    assert answer["portal_overlay_ip"] == "100.64.0.1" and answer["overlay_cidr"] == "100.64.0.0/10"
    assert answer["overlay_ip"] not in {"100.64.0.0", "100.64.0.1", "100.64.0.2", "100.127.255.255"}
    # The CA was made on first use in the data dir: its directory and key are the portal's alone.
    home = parts.settings.data_dir / "mesh-ca"
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "ca.key").stat().st_mode) == 0o600
    assert (home / "ca.crt").read_text() == answer["ca"]


def test_the_owner_sees_the_overlay_address_and_mesh_state(mesh, nebula_cert, tmp_path):
    client, parts = mesh
    with session_scope(parts.engine) as session:
        provider = make_user(session, Role.PROVIDER)
        owner = {"Authorization": f"Bearer {access_token_for(session, provider)}"}
    device_id, headers = agent_of(parts, provider.id)
    before = client.get(f"/api/v1/devices/{device_id}", headers=owner).json()
    assert before["overlay_ip"] is None and before["mesh"] == {"state": "none", "relayed": None}

    answer = certify(client, headers, keygen(nebula_cert, tmp_path))
    after = client.get(f"/api/v1/devices/{device_id}", headers=owner).json()
    assert after["overlay_ip"] == answer["overlay_ip"]
    assert after["mesh"] == {"state": "certified", "relayed": None}


def test_renewals_and_registrations_keep_the_overlay_address(mesh, nebula_cert, tmp_path):
    client, parts = mesh
    _, headers = agent_of(parts)
    first = certify(client, headers, keygen(nebula_cert, tmp_path))
    registered = client.post(
        "/api/v1/worker/register",
        headers=headers,
        json={
            "agent_version": "1.0.0",
            "gpus": [{"index": 0, "uuid": "GPU-1", "model": "H100-80GB", "memory_mb": 81_559}],
            "simulated": True,
        },
    )
    assert registered.status_code == 200, registered.text
    renewed = certify(client, headers, keygen(nebula_cert, tmp_path))  # a new key pair, even
    assert renewed["overlay_ip"] == first["overlay_ip"]
    assert renewed["certificate"] != first["certificate"]


def test_two_devices_never_share_an_address(mesh, nebula_cert, tmp_path):
    client, parts = mesh
    public_key = keygen(nebula_cert, tmp_path)
    answers = [certify(client, agent_of(parts)[1], public_key) for _ in range(3)]
    assert len({answer["overlay_ip"] for answer in answers}) == 3


def test_a_device_carries_its_clusters_group_only_while_it_serves_it(mesh, nebula_cert, tmp_path):
    client, parts = mesh
    device_id, headers = agent_of(parts)
    with session_scope(parts.engine) as session:
        device = session.get_one(Device, device_id)
        device.state, device.verified_at, device.last_heartbeat_at = DeviceState.READY, utcnow(), utcnow()
        provider = session.get_one(User, device.owner_id)
        provider.wallet_address = str(Keypair().pubkey())
        customer = make_user(session, Role.CUSTOMER)
        ledger.grant_credits(
            session, user_id=customer.id, amount_micro=100_000_000, reason="test", idempotency_key="mesh"
        )
        spec = clusters.ClusterSpec(name="c", gpu_model=device.gpu_model, gpu_count=1, duration_hours=1)
        cluster = clusters.create(session, parts.settings, customer.id, spec)
    public_key = keygen(nebula_cert, tmp_path)

    serving = certify(client, headers, public_key)
    assert serving["groups"] == ["device", f"cluster-{cluster.id}"]
    details = printed(nebula_cert, tmp_path, serving["certificate"])["details"]
    assert details["groups"] == ["device", f"cluster-{cluster.id}"]

    with session_scope(parts.engine) as session:
        assert clusters.request_termination(session, session.get_one(Cluster, cluster.id), "test")
    ended = provisioning.advance(parts.engine, parts.settings, parts.wakeups, cluster.id, lambda _: set())
    assert ended == ClusterState.TERMINATED
    after = certify(client, headers, public_key)
    assert after["groups"] == ["device"]
    assert printed(nebula_cert, tmp_path, after["certificate"])["details"]["groups"] == ["device"]
    assert after["overlay_ip"] == serving["overlay_ip"]


def operator_ca(nebula_cert: str, directory: Path, name: str) -> tuple[str, str]:
    """A CA made by the operator, as a secret store would hand over its key and certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    made = ["-out-crt", str(directory / f"{name}.crt"), "-out-key", str(directory / f"{name}.key")]
    subprocess.run([nebula_cert, "ca", "-name", name, *made], check=True)
    return (directory / f"{name}.key").read_text(), (directory / f"{name}.crt").read_text()


def test_the_operators_ca_from_a_setting_signs(tmp_path, nebula_cert):
    key, cert = operator_ca(nebula_cert, tmp_path / "vault", "operator")
    client, parts = portal_with(tmp_path, **MESH, mesh_ca_key=key, mesh_ca_cert=cert)
    with client:
        answer = certify(client, agent_of(parts)[1], keygen(nebula_cert, tmp_path))
    parts.engine.dispose()
    assert answer["ca"] == cert
    assert verifies(nebula_cert, tmp_path, cert, answer["certificate"])
    assert not (parts.settings.data_dir / "mesh-ca").exists()


def test_a_ca_that_cannot_sign_fails_without_showing_its_key(tmp_path, nebula_cert, caplog):
    _, cert = operator_ca(nebula_cert, tmp_path / "vault", "operator")
    wrong_key, _ = operator_ca(nebula_cert, tmp_path / "vault", "other")
    client, parts = portal_with(tmp_path, **MESH, mesh_ca_key=wrong_key, mesh_ca_cert=cert)
    with client:
        refused = client.post(
            CERTIFICATE, json={"public_key": keygen(nebula_cert, tmp_path)}, headers=agent_of(parts)[1]
        )
    parts.engine.dispose()
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "mesh_ca_failed"
    assert "does not match" in caplog.text  # the operator's log says why...
    secret = wrong_key.splitlines()[1]
    assert secret not in refused.text and secret not in caplog.text  # ...and shows no key
    assert secret not in repr(parts.settings)


# --- refusals --------------------------------------------------------------------------------------

KEY_32 = base64.b64encode(bytes(range(1, 33))).decode()


def pem(label: str, body: str) -> str:
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"


@pytest.mark.parametrize(
    ("public_key", "says"),
    [
        (pem("NEBULA ED25519 PRIVATE KEY", KEY_32), "NEBULA ED25519 PRIVATE KEY"),
        (pem("NEBULA ED25519 PUBLIC KEY", KEY_32), "not a 'NEBULA X25519 PUBLIC KEY'"),
        (pem("NEBULA X25519 PUBLIC KEY", base64.b64encode(bytes(31)).decode()), "holds 31 bytes"),
        (pem("NEBULA X25519 PUBLIC KEY", base64.b64encode(b"\x01" * 33).decode()), "holds 33 bytes"),
        (pem("NEBULA X25519 PUBLIC KEY", base64.b64encode(bytes(32)).decode()), "all-zero"),
        (pem("NEBULA X25519 PUBLIC KEY", "not*base64*at*all="), "not one PEM block"),
        (pem("NEBULA X25519 PUBLIC KEY", KEY_32[:-1]), "not valid base64"),
        (pem("NEBULA X25519 PUBLIC KEY", KEY_32) * 2, "not one PEM block"),
        ("garbage \x00\x01 ☃", "not one PEM block"),
        ("-----BEGIN NEBULA X25519 PUBLIC KEY-----\n" + "A" * 400, "not one PEM block"),
        (pem("NEBULA X25519 PUBLIC KEY", "A" * 20_000), "String should have at most 512 characters"),
        ("", "String should have at least 1 character"),
    ],
    ids=[
        "private-key",
        "ed25519-label",
        "31-bytes",
        "33-bytes",
        "zero-point",
        "not-base64",
        "bad-padding",
        "two-blocks",
        "garbage",
        "unterminated",
        "huge",
        "empty",
    ],
)
def test_a_bad_public_key_is_refused_with_what_is_wrong(mesh, public_key, says):
    client, parts = mesh
    device_id, headers = agent_of(parts)
    response = client.post(CERTIFICATE, json={"public_key": public_key}, headers=headers)
    assert response.status_code == 422, response.text
    assert says in response.text
    with session_scope(parts.engine) as session:
        assert session.get_one(Device, device_id).overlay_ip is None  # nothing allocated for it


def test_fields_besides_the_public_key_are_refused(mesh):
    client, parts = mesh
    body = {"public_key": pem("NEBULA X25519 PUBLIC KEY", KEY_32), "ip": "100.64.0.9"}
    assert client.post(CERTIFICATE, json=body, headers=agent_of(parts)[1]).status_code == 422


def test_without_the_mesh_there_is_no_certificate(tmp_path):
    client, parts = portal_with(tmp_path, rate_limit_per_minute=100_000)
    with client:
        response = client.post(
            CERTIFICATE,
            json={"public_key": pem("NEBULA X25519 PUBLIC KEY", KEY_32)},
            headers=agent_of(parts)[1],
        )
    parts.engine.dispose()
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "mesh_off"
    assert "PORTAL_MESH" in response.json()["error"]["message"]


def test_a_blocked_device_gets_no_certificate(mesh):
    client, parts = mesh
    device_id, headers = agent_of(parts)
    with session_scope(parts.engine) as session:
        session.get_one(Device, device_id).state = DeviceState.BLOCKED
    response = client.post(
        CERTIFICATE, json={"public_key": pem("NEBULA X25519 PUBLIC KEY", KEY_32)}, headers=headers
    )
    assert response.status_code == 409 and response.json()["error"]["code"] == "device_blocked"


# --- addresses -------------------------------------------------------------------------------------


def test_concurrent_allocations_never_share_an_address_and_a_full_network_says_so(engine):
    """A /27 holds 21 devices here (its first 24 addresses, the last quarter being customers', less the
    network, portal and lighthouse addresses); 15 devices and 6 requests of one more race for them, so random
    picks collide and are retried."""
    settings = settings_for(
        mesh="nebula",
        overlay_cidr="10.77.0.0/27",
        lighthouses=[{"overlay_ip": "10.77.0.2", "public_address": "203.0.113.7:4242"}],
    )
    with session_scope(engine) as session:
        owner = make_user(session, Role.PROVIDER).id
        devices = [make_device(session, owner, state=DeviceState.READY).id for _ in range(22)]
    racers, shared = devices[:15], devices[15]
    got: dict[int, str] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(21)

    def allocate(slot: int, device_id: uuid.UUID) -> None:
        try:
            start.wait()
            got[slot] = str(addresses.assign(engine, settings, device_id))
        except BaseException as error:  # reported below, with the others
            errors.append(error)

    threads = [threading.Thread(target=allocate, args=(n, d)) for n, d in enumerate(racers)]
    threads += [threading.Thread(target=allocate, args=(100 + n, shared)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({got[n] for n in range(15)}) == 15
    assert len({got[100 + n] for n in range(6)}) == 1  # one device, one address, however often it asks
    assert got[100] not in {got[n] for n in range(15)}
    assert not {"10.77.0.0", "10.77.0.1", "10.77.0.2", "10.77.0.31"} & set(got.values())
    assert all(int(address.rsplit(".", 1)[1]) < 24 for address in got.values())  # never a customer's

    for device_id in devices[16:21]:  # the last 5 free addresses
        addresses.assign(engine, settings, device_id)
    with pytest.raises(Conflict) as full:
        addresses.assign(engine, settings, devices[21])
    assert full.value.code == "overlay_full"
    with session_scope(engine) as session:
        held = session.exec(select(Device.overlay_ip).where(Device.overlay_ip.is_not(None))).all()
    assert len(held) == len(set(held)) == 21


def test_an_address_a_lighthouse_now_takes_is_given_up_for_another(engine):
    settings = settings_for(mesh="nebula", overlay_cidr="10.78.0.0/29")
    with session_scope(engine) as session:
        device_id = make_device(session, make_user(session, Role.PROVIDER).id, state=DeviceState.READY).id
    first = addresses.assign(engine, settings, device_id)
    moved = settings_for(
        mesh="nebula",
        overlay_cidr="10.78.0.0/29",
        lighthouses=[{"overlay_ip": str(first), "public_address": "203.0.113.7:4242"}],
    )
    second = addresses.assign(engine, moved, device_id)
    assert second != first and second in moved.overlay_network
    assert addresses.assign(engine, moved, device_id) == second


# --- settings --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "says"),
    [
        ({"PORTAL_MESH": "wireguard"}, "PORTAL_MESH"),
        ({"PORTAL_OVERLAY_CIDR": "100.64.0.1/10"}, "host bits set"),
        ({"PORTAL_OVERLAY_CIDR": "fd00::/64"}, "IPv4"),
        ({"PORTAL_OVERLAY_CIDR": "10.0.0.0/30"}, "/29 or larger"),
        ({"PORTAL_LIGHTHOUSES": '[{"overlay_ip": "10.1.2.3", "public_address": "a.b:1"}]'}, "outside"),
        ({"PORTAL_LIGHTHOUSES": '[{"overlay_ip": "100.64.0.1", "public_address": "a.b:1"}]'}, "taken"),
        ({"PORTAL_LIGHTHOUSES": '[{"overlay_ip": "100.64.0.5", "public_address": "a.b"}]'}, "host:port"),
        ({"PORTAL_LIGHTHOUSES": '[{"overlay_ip": "100.64.0.5", "public_address": "a:70000"}]'}, "host:port"),
        ({"PORTAL_LIGHTHOUSES": "not json"}, "PORTAL_LIGHTHOUSES: not valid JSON"),
        ({"PORTAL_MESH_CA_KEY": "-----BEGIN X-----"}, "go together"),
    ],
)
def test_mesh_settings_are_checked_at_start(monkeypatch, variables, says):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=says):
        load_settings()


def test_the_mesh_is_off_unless_asked_for(monkeypatch):
    monkeypatch.setenv("PORTAL_MESH", "")
    settings = load_settings()
    assert settings.mesh == "none" and str(settings.portal_overlay_ip) == "100.64.0.1"
    assert settings.mesh_cert_hours == 12 and settings.lighthouses == []


# --- a customer's machine on their cluster's network ---------------------------------------------------


def running_cluster(parts: AppParts) -> tuple[uuid.UUID, str, dict[str, str], dict[str, str]]:
    """A running cluster whose head is on a device with its overlay address; the cluster, that address, and
    the owner's and another customer's headers."""
    device_id, _ = agent_of(parts)
    head_ip = str(addresses.assign(parts.engine, parts.settings, device_id))
    with session_scope(parts.engine) as session:
        device = session.get_one(Device, device_id)
        device.state, device.verified_at, device.last_heartbeat_at = DeviceState.READY, utcnow(), utcnow()
        session.get_one(User, device.owner_id).wallet_address = str(Keypair().pubkey())
        owner, other = make_user(session, Role.CUSTOMER), make_user(session, Role.CUSTOMER)
        ledger.grant_credits(
            session, user_id=owner.id, amount_micro=100_000_000, reason="test", idempotency_key="connect"
        )
        spec = clusters.ClusterSpec(name="c", gpu_model=device.gpu_model, gpu_count=1, duration_hours=2)
        cluster = clusters.create(session, parts.settings, owner.id, spec)
        cluster.state, cluster.expires_at = ClusterState.RUNNING, utcnow() + timedelta(hours=2)
        cluster.client_address = f"ray://{head_ip}:10001"
        headers = [{"Authorization": f"Bearer {access_token_for(session, user)}"} for user in (owner, other)]
        return cluster.id, head_ip, headers[0], headers[1]


def test_the_owner_connects_their_machine_to_the_clusters_network_alone(mesh, nebula_cert, tmp_path):
    client, parts = mesh
    cluster_id, head_ip, owner, other = running_cluster(parts)
    public_key = keygen(nebula_cert, tmp_path)

    answer = client.post(
        f"/api/v1/clusters/{cluster_id}/connect", json={"public_key": public_key}, headers=owner
    )
    assert answer.status_code == 200, answer.text
    joined = answer.json()
    assert (joined["head_overlay_ip"], joined["ray_client_address"]) == (head_ip, f"ray://{head_ip}:10001")
    assert joined["groups"] == ["customer", f"cluster-{cluster_id}"]
    assert verifies(nebula_cert, tmp_path, joined["ca"], joined["certificate"])
    details = printed(nebula_cert, tmp_path, joined["certificate"])["details"]
    assert details["groups"] == ["customer", f"cluster-{cluster_id}"]
    # An address of the overlay's last quarter (customers'), never a device's; it ends with the cluster.
    network = parts.settings.overlay_network
    address = details["ips"][0].split("/")[0]
    assert address == joined["overlay_ip"] and address != head_ip
    offset = int(ipaddress.IPv4Address(address)) - int(network.network_address)
    assert offset >= network.num_addresses * 3 // 4
    with session_scope(parts.engine) as session:
        ends = session.get_one(Cluster, cluster_id).expires_at
    assert datetime.fromisoformat(details["notAfter"]) <= ends
    assert datetime.fromisoformat(joined["expires_at"]) == ends.replace(microsecond=0)
    # Asked again, with an API key (whose use is written as it authenticates): the same address.
    with session_scope(parts.engine) as session:
        key = api_key_for(session, session.get_one(User, session.get_one(Cluster, cluster_id).owner_id))
    again = client.post(
        f"/api/v1/clusters/{cluster_id}/connect",
        json={"public_key": public_key},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert again.status_code == 200, again.text
    assert again.json()["overlay_ip"] == address

    # Anyone else: 404; a bad key: 422; after the cluster ended: 409.
    refused = client.post(
        f"/api/v1/clusters/{cluster_id}/connect", json={"public_key": public_key}, headers=other
    )
    assert refused.status_code == 404
    bad = client.post(f"/api/v1/clusters/{cluster_id}/connect", json={"public_key": "x"}, headers=owner)
    assert bad.status_code == 422
    with session_scope(parts.engine) as session:
        session.get_one(Cluster, cluster_id).state = ClusterState.TERMINATED
    ended = client.post(
        f"/api/v1/clusters/{cluster_id}/connect", json={"public_key": public_key}, headers=owner
    )
    assert (ended.status_code, ended.json()["error"]["code"]) == (409, "cluster_not_running")


def test_without_the_mesh_a_customer_cannot_connect(tmp_path, nebula_cert):
    client, parts = portal_with(tmp_path, rate_limit_per_minute=100_000)
    with client:
        with session_scope(parts.engine) as session:
            owner = make_user(session, Role.CUSTOMER)
            headers = {"Authorization": f"Bearer {access_token_for(session, owner)}"}
        answer = client.post(
            f"/api/v1/clusters/{uuid.uuid4()}/connect",
            json={"public_key": keygen(nebula_cert, tmp_path)},
            headers=headers,
        )
    assert (answer.status_code, answer.json()["error"]["code"]) == (409, "mesh_off")
