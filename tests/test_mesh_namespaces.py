"""The overlay across NATs (issue 18), on a small internet of network namespaces (``tests/netns.py``).

Real Nebula processes, each with a certificate signed by the portal's own CA code and the groups the portal
issues (``device``, ``cluster-<id>``), and the firewall the product gives a node: inbound TCP only from its
cluster's group and from the portal's node. A lighthouse that is also the relay sits on the public segment
with the portal's node; providers and a customer sit behind home NATs, one provider behind a symmetric NAT.
Every check opens a real TCP connection to a listener on an overlay address.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from portal.config import Settings
from portal.services.mesh import ca, keys
from portal.services.mesh.certificates import DEVICE_GROUP, cluster_group
from tests.conftest import require_program, settings_for, wait_until
from tests.netns import LIGHTHOUSE_ADDRESS, Internet, Process, leftovers, small_internet

pytestmark = pytest.mark.slow

LIGHTHOUSE_PORT = 4242
LIGHTHOUSE_OVERLAY_IP = "100.64.0.2"
ECHO_PORT = 7000
CLUSTER, OTHER_CLUSTER = uuid.uuid4(), uuid.uuid4()
# Devices: their namespace, overlay address and the cluster they serve.
DEVICES = {
    "provider-a": ("100.64.0.11", CLUSTER),
    "provider-b": ("100.64.0.12", CLUSTER),
    "provider-c": ("100.64.0.13", CLUSTER),  # behind the symmetric NAT
    "customer": ("100.64.0.14", OTHER_CLUSTER),  # a node of another cluster, behind NAT too
}
PKI_FILES = {"ca": "ca.crt", "cert": "host.crt", "key": "host.key"}
UP_S = 15  # a tunnel comes up in well under a second here, punched or relayed
PROBE_S = 1.5  # a refused connection is a dropped SYN: how long a probe waits for an answer
# Nebula 1.6 asks the relay for a path at a handshake's first attempt and never moves a relayed tunnel to a
# direct one; with the default punch delay (1 s) the relay wins every race, and two home NATs stay relayed.
# Punching back at once lets the direct path win wherever one exists.
PUNCH_DELAY = "0s"
TCP_EXCHANGE_PACKETS = 3  # at least, inbound at either end: SYN-ACK or ACK, the echoed line, FIN


@dataclass
class Node:
    role: str
    overlay_ip: str
    process: Process


def keygen(nebula_cert: str, directory: Path) -> str:
    """The node's key pair, made where it runs, as an agent makes it; the public key's PEM."""
    made = ["-out-key", str(directory / "host.key"), "-out-pub", str(directory / "host.pub")]
    subprocess.run([nebula_cert, "keygen", *made], check=True, capture_output=True)
    return (directory / "host.pub").read_text()


def device_firewall(settings: Settings, cluster_id: uuid.UUID) -> dict:
    """A device's Nebula firewall as the product sets it: TCP in from its cluster and the portal's node."""
    portal = f"{settings.portal_overlay_ip}/32"
    return {
        "outbound": [{"port": "any", "proto": "any", "host": "any"}],
        "inbound": [
            {"port": "any", "proto": "tcp", "group": cluster_group(cluster_id)},
            {"port": "any", "proto": "tcp", "cidr": portal},
            {"port": "any", "proto": "icmp", "cidr": portal},
        ],
    }


def nebula_config(directory: Path, *, lighthouse: bool, firewall: dict) -> dict:
    """A node's config: the lighthouse is also the relay; every other node finds peers through it and may
    be reached through it when no hole can be punched."""
    common = {
        "pki": {name: str(directory / file) for name, file in PKI_FILES.items()},
        "tun": {"dev": "nebula1", "mtu": 1300},
        "punchy": {"punch": True, "respond": True, "delay": PUNCH_DELAY},
        "logging": {"level": "info", "format": "json"},
        "firewall": firewall,
    }
    if lighthouse:
        return {
            **common,
            "static_host_map": {},
            "lighthouse": {"am_lighthouse": True},
            "listen": {"host": "0.0.0.0", "port": LIGHTHOUSE_PORT},
            "relay": {"am_relay": True, "use_relays": False},
        }
    return {
        **common,
        "static_host_map": {LIGHTHOUSE_OVERLAY_IP: [f"{LIGHTHOUSE_ADDRESS}:{LIGHTHOUSE_PORT}"]},
        "lighthouse": {"am_lighthouse": False, "hosts": [LIGHTHOUSE_OVERLAY_IP]},
        "listen": {"host": "0.0.0.0", "port": 0},
        "relay": {"relays": [LIGHTHOUSE_OVERLAY_IP], "am_relay": False, "use_relays": True},
    }


def start_node(
    net: Internet,
    settings: Settings,
    authority: ca.Authority,
    role: str,
    *,
    name: str,
    overlay_ip: str,
    groups: list[str],
    firewall: dict,
    lighthouse: bool = False,
) -> Node:
    nebula_cert = require_program("nebula-cert", "nebula")
    directory = net.workdir / role
    directory.mkdir()
    public_key = keys.public_key_pem(keys.parse_public_key(keygen(nebula_cert, directory)))
    (directory / "host.crt").write_text(
        ca.sign(
            authority,
            public_key_pem=public_key,
            name=name,
            ip_cidr=f"{overlay_ip}/{settings.overlay_network.prefixlen}",
            groups=groups,
            hours=1,
        )
    )
    (directory / "ca.crt").write_text(authority.cert_pem)
    config = directory / "config.yml"  # JSON is YAML
    config.write_text(json.dumps(nebula_config(directory, lighthouse=lighthouse, firewall=firewall)))
    process = net.start(role, [require_program("nebula", "nebula"), "-config", str(config)], f"nebula-{role}")
    return Node(role, overlay_ip, process)


def has_address(net: Internet, node: Node) -> bool:
    shown = net[node.role].run("ip", "-o", "-4", "addr", "show", "dev", "nebula1", check=False)
    return f"inet {node.overlay_ip}/" in shown.stdout


@dataclass(repr=False)
class Overlay:
    net: Internet
    lighthouse: Node
    portal: Node
    devices: dict[str, Node]

    def __repr__(self) -> str:
        return f"<overlay in {self.net.workdir}>"

    def reaches(self, source: str, target: str, timeout_s: float = PROBE_S) -> bool:
        """A TCP connection from ``source``'s namespace to the echo listener on ``target``'s overlay IP."""
        return self.net[source].connects(self.ip(target), ECHO_PORT, timeout_s)

    def ip(self, role: str) -> str:
        return self.portal.overlay_ip if role == "portal" else self.devices[role].overlay_ip

    def log(self, role: str) -> list[dict]:
        node = {"public": self.lighthouse, "portal": self.portal}.get(role) or self.devices[role]
        lines = node.process.output().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.fixture(scope="module")
def overlay(tmp_path_factory) -> Iterator[Overlay]:
    require_program("nebula", "nebula")
    require_program("nebula-cert", "nebula")
    workdir = tmp_path_factory.mktemp("mesh-namespaces")
    settings = settings_for(
        mesh="nebula",
        data_dir=workdir / "portal-data",
        lighthouses=[
            {"overlay_ip": LIGHTHOUSE_OVERLAY_IP, "public_address": f"{LIGHTHOUSE_ADDRESS}:{LIGHTHOUSE_PORT}"}
        ],
    )
    authority = ca.authority(settings)  # made on first use, as the portal makes it
    with small_internet(workdir) as net:
        closed = {"outbound": [{"port": "any", "proto": "any", "host": "any"}], "inbound": []}
        lighthouse = start_node(
            net,
            settings,
            authority,
            "public",
            name="lighthouse",
            overlay_ip=LIGHTHOUSE_OVERLAY_IP,
            groups=["lighthouse"],
            firewall=closed,
            lighthouse=True,
        )
        portal = start_node(
            net,
            settings,
            authority,
            "portal",
            name="portal",
            overlay_ip=str(settings.portal_overlay_ip),
            groups=["portal"],
            firewall=closed,
        )
        devices = {
            role: start_node(
                net,
                settings,
                authority,
                role,
                name=f"device-{uuid.uuid4()}",
                overlay_ip=overlay_ip,
                groups=[DEVICE_GROUP, cluster_group(cluster_id)],
                firewall=device_firewall(settings, cluster_id),
            )
            for role, (overlay_ip, cluster_id) in DEVICES.items()
        }
        for node in [lighthouse, portal, *devices.values()]:
            wait_until(
                lambda node=node: has_address(net, node) or not node.process.alive(),
                timeout_s=10,
                what=f"nebula's interface in {node.role}",
            )
            assert node.process.alive(), node.process.output()
        for node in devices.values():
            net.listen_tcp(node.role, node.overlay_ip, ECHO_PORT)
        yield Overlay(net, lighthouse, portal, devices)
        suffix = net.suffix
    assert leftovers(suffix) == []


def reached(overlay: Overlay, source: str, target: str) -> None:
    """Wait until ``source`` opens a TCP connection to ``target``'s listener over the overlay."""
    wait_until(
        lambda: overlay.reaches(source, target),
        timeout_s=UP_S,
        every_s=0.2,
        what=f"a TCP connection from {source} to {target} over the overlay",
    )


def let_in(overlay: Overlay, behind: str, source: str, exchange: Callable[[], None]) -> int:
    """Packets the router in front of ``behind`` let in from the public address of ``source`` (a host, or
    ``public`` for the lighthouse and relay) while ``exchange`` ran."""
    address = overlay.net.public_address(source)
    before = overlay.net.admitted_from(behind, address)
    exchange()
    return overlay.net.admitted_from(behind, address) - before


# --- tests ---------------------------------------------------------------------------------------------


def test_providers_behind_two_home_nats_connect_through_a_punched_hole(overlay):
    reached(overlay, "provider-a", "provider-b")
    reached(overlay, "provider-b", "provider-a")

    def exchange() -> None:
        assert overlay.reaches("provider-a", "provider-b") and overlay.reaches("provider-b", "provider-a")

    # The connections' packets came in straight from the other provider's router, not from the relay.
    direct = let_in(overlay, "provider-a", "provider-b", exchange)
    assert direct >= 2 * TCP_EXCHANGE_PACKETS, f"{direct} packets came from provider-b's router: not punched"
    relayed = let_in(overlay, "provider-a", "public", exchange)
    assert relayed < TCP_EXCHANGE_PACKETS, f"{relayed} packets came from the relay"
    direct = let_in(overlay, "provider-b", "provider-a", exchange)
    assert direct >= 2 * TCP_EXCHANGE_PACKETS, f"{direct} packets came from provider-a's router: not punched"


def test_a_provider_behind_a_symmetric_nat_is_reached_through_the_relay(overlay):
    c, a, b = (overlay.ip(role) for role in ("provider-c", "provider-a", "provider-b"))
    reached(overlay, "provider-c", "provider-a")
    reached(overlay, "provider-a", "provider-c")
    reached(overlay, "provider-b", "provider-c")

    def exchange() -> None:
        assert overlay.reaches("provider-c", "provider-a") and overlay.reaches("provider-a", "provider-c")

    # Everything came in from the relay; no packet of a provider ever got through the symmetric NAT.
    relayed = let_in(overlay, "provider-c", "public", exchange)
    assert relayed >= 2 * TCP_EXCHANGE_PACKETS, f"only {relayed} packets came from the relay"
    assert overlay.net.admitted_from("provider-c", overlay.net.public_address("provider-a")) == 0
    assert overlay.net.admitted_from("provider-c", overlay.net.public_address("provider-b")) == 0
    relays = {
        frozenset((entry["relayFrom"], entry["relayTarget"]))
        for entry in overlay.log("public")
        if entry["msg"] == "handleCreateRelayRequest"
    }
    assert frozenset((c, a)) in relays and frozenset((c, b)) in relays  # the lighthouse relays both


def test_a_node_of_another_cluster_cannot_open_a_connection_either_way(overlay):
    stranger, a = "customer", "provider-a"  # cluster-<other> and cluster-<this>, each behind its NAT
    assert not overlay.reaches(stranger, a, PROBE_S)  # this first try also brings their tunnel up
    wait_until(
        lambda: any(
            entry["msg"] == "Handshake message received" and entry.get("vpnIp") == overlay.ip(a)
            for entry in overlay.log(stranger)
        ),
        timeout_s=UP_S,
        what="a tunnel between the stranger and provider-a",
    )
    # The tunnel is up and certificates check out: it is the firewall in each node that refuses.
    assert not overlay.reaches(stranger, a, PROBE_S)
    assert not overlay.reaches(a, stranger, PROBE_S)
    assert not overlay.reaches(stranger, "provider-b", PROBE_S)
    # Members of the same cluster reach each other, and the portal's node reaches every device.
    reached(overlay, "provider-b", a)
    reached(overlay, a, "provider-b")
    reached(overlay, "portal", a)
    reached(overlay, "portal", stranger)


def test_a_providers_cut_link_stops_its_tunnel_and_its_return_restores_it(overlay):
    a, b = "provider-a", "provider-b"
    reached(overlay, a, b)
    overlay.net.cut(b)
    try:
        assert not overlay.reaches(a, b, PROBE_S)
        assert not overlay.reaches(b, a, PROBE_S)
    finally:
        overlay.net.reconnect(b)
    reached(overlay, a, b)
    reached(overlay, b, a)

    def exchange() -> None:
        assert overlay.reaches(a, b)

    direct = let_in(overlay, a, b, exchange)
    assert direct >= TCP_EXCHANGE_PACKETS, (
        f"{direct} packets came from provider-b's router: not punched again"
    )
