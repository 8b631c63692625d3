"""The rentals' way out to the internet on the overlay (``gpu_pool/rental_egress.py``): the rule set from its
inputs (no root needed), then the real thing in a few seconds on namespaces of its own: a "host" namespace
(where the agent's code runs, as it runs in the provider's) behind a "router" namespace that also holds a
server on a public address. The rentals' namespace reaches that server only: not the host's services, its
home network, its router's LAN side. Made twice, the rules are there once; removed, nothing is left; an
agent that crashed leaves rules that the next start removes once their namespace is gone; without egress
the namespace has no way out. The whole product on the mesh is ``tests/test_isolation_mesh.py``.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpu_pool import rental_egress
from gpu_pool.cli import app
from gpu_pool.isolation import ContainerIsolation
from gpu_pool.rental_netns import NamespaceError, RentalNamespace
from tests.conftest import PROJECT_ROOT, require_program
from tests.netns import require_namespaces

# --- the rule set, from its inputs ---------------------------------------------------------------------

NETWORK = ipaddress.IPv4Network
# What `ip -j -4 route show table all` says on a provider's machine: a home LAN, Docker's bridge, a VPN with
# a default route of scope link, a network behind a gateway, and the local table's entries.
ROUTES = [
    {"dst": "default", "gateway": "192.168.1.1", "dev": "eth0"},
    {"dst": "192.168.1.0/24", "dev": "eth0", "protocol": "kernel", "scope": "link", "prefsrc": "192.168.1.5"},
    {"dst": "172.17.0.0/16", "dev": "docker0", "protocol": "kernel", "scope": "link"},
    {"dst": "default", "dev": "wg0", "scope": "link", "table": "51820"},
    {"dst": "81.2.69.0/28", "dev": "eth1", "protocol": "kernel", "scope": "link"},
    {"dst": "10.8.0.0/24", "gateway": "192.168.1.254", "dev": "eth0"},
    {"type": "local", "dst": "192.168.1.5", "dev": "eth0", "table": "local", "scope": "host"},
    {"type": "broadcast", "dst": "192.168.1.255", "dev": "eth0", "table": "local", "scope": "link"},
]


def test_connected_networks_are_the_hosts_scope_link_routes():
    assert rental_egress.connected_networks(ROUTES) == [
        NETWORK("192.168.1.0/24"),
        NETWORK("172.17.0.0/16"),
        NETWORK("81.2.69.0/28"),  # a public network the machine sits on is refused too: its neighbours
    ]


def test_the_rule_set_refuses_the_host_its_networks_and_every_range_that_is_not_the_internet():
    refused = rental_egress.refused_networks(rental_egress.connected_networks(ROUTES))
    plan = rental_egress.Plan("gp-0123456789ab", NETWORK("169.254.7.4/30"), refused)
    text = rental_egress.rules(plan)
    lines = text.splitlines()
    out = [line for line in lines if line.startswith("-A gp-0123456789ab-out ")]
    # Refused before the one ACCEPT, which comes last; invalid packets dropped first.
    assert out[0] == "-A gp-0123456789ab-out -m conntrack --ctstate INVALID -j DROP"
    assert out[-1] == "-A gp-0123456789ab-out -j ACCEPT"
    denied = [NETWORK(line.split()[3]) for line in out[1:-1]]
    assert all(line.endswith("-j REJECT --reject-with icmp-admin-prohibited") for line in out[1:-1])
    for network in (
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # RFC 1918 (Docker's bridge and the LAN inside)
        "100.64.0.0/10",  # CGNAT and the overlay: reached through the TUN only
        "169.254.0.0/16",  # link-local: 169.254.169.254 metadata and the transfer subnets
        "224.0.0.0/4", "240.0.0.0/4", "127.0.0.0/8", "0.0.0.0/8",
        "81.2.69.0/28",  # the machine's own public segment
    ):  # fmt: skip
        assert any(NETWORK(network).subnet_of(refused) for refused in denied), network
    assert not any(NETWORK("1.1.1.1/32").subnet_of(refused) for refused in denied)
    # The host itself: answers to its own flows only; nothing opens a flow into the namespace.
    assert "-A gp-0123456789ab-in -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT" in lines
    assert lines[
        lines.index("-A gp-0123456789ab-in -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT") + 1
    ] == ("-A gp-0123456789ab-in -j REJECT --reject-with icmp-admin-prohibited")
    assert [line for line in lines if line.startswith("-A gp-0123456789ab-back ")] == [
        "-A gp-0123456789ab-back -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A gp-0123456789ab-back -j DROP",
    ]
    assert "-A gp-0123456789ab-nat -j MASQUERADE" in lines
    assert rental_egress.jumps(plan) == [
        ("filter", "INPUT", ["-i", "gpe0123456789ab", "-j", "gp-0123456789ab-in"]),
        ("filter", "FORWARD", ["-i", "gpe0123456789ab", "-j", "gp-0123456789ab-out"]),
        ("filter", "FORWARD", ["-o", "gpe0123456789ab", "-j", "gp-0123456789ab-back"]),
        (
            "nat",
            "POSTROUTING",
            ["-s", "169.254.7.4/30", "!", "-o", "gpe0123456789ab", "-j", "gp-0123456789ab-nat"],
        ),
    ]


def test_the_transfer_subnet_is_link_local_below_the_metadata_address_and_free_on_the_host():
    subnet = rental_egress.transfer_subnet("gp-0123456789ab", [])
    assert subnet.prefixlen == 30 and subnet.subnet_of(NETWORK("169.254.0.0/16"))
    first, last = ipaddress.IPv4Address("169.254.1.0"), ipaddress.IPv4Address("169.254.127.255")
    assert first <= subnet.network_address and subnet.broadcast_address <= last
    assert subnet == rental_egress.transfer_subnet("gp-0123456789ab", [])  # the device's own, every time
    assert subnet != rental_egress.transfer_subnet("gp-ba9876543210", [])
    # Taken by a route of the host (another agent's veth, a provider's odd network): the next free one.
    other = rental_egress.transfer_subnet("gp-0123456789ab", [subnet])
    assert other != subnet and not other.overlaps(subnet) and other.prefixlen == 30


def test_names_are_checked_and_the_host_link_fits_linuxs_limit():
    assert rental_egress.host_link_for("gp-0123456789ab") == "gpe0123456789ab"
    assert len(rental_egress.host_link_for("gp-0123456789ab")) <= 15
    for hostile in ("gp-../../etc", "gp-0123456789abc", "gp-a b", "x-0123", "gp-"):
        with pytest.raises(rental_egress.EgressError):
            rental_egress.host_link_for(hostile)
    with pytest.raises(NamespaceError, match="cannot have a way out"):
        RentalNamespace("gp-a.b-c", egress=True)
    RentalNamespace("gp-a.b-c")  # without a way out any namespace name the overlay accepts


def test_rentals_get_public_name_servers_not_the_hosts_private_or_loopback_ones():
    assert rental_egress.resolvers("nameserver 127.0.0.53\nnameserver 192.168.1.1\n") == [
        "1.1.1.1",
        "9.9.9.9",
    ]
    mixed = "# x\nnameserver 8.8.4.4\nnameserver 10.0.0.2\nnameserver 2001:4860::8888\n"
    assert rental_egress.resolvers(mixed) == ["8.8.4.4"]
    assert ContainerIsolation.dns_args(False) == []
    assert all(flag.startswith("--dns=") for flag in ContainerIsolation.dns_args(True))


def test_the_worker_takes_internet_or_none():
    given = ["worker", "--portal", "http://127.0.0.1:9", "--token", "t", "--simulate", "1xH100-80GB"]
    refused = CliRunner().invoke(app, [*given, "--rental-egress", "everywhere"])
    assert refused.exit_code == 2 and "internet or none" in refused.output


# --- the real thing, on namespaces of this test's own ----------------------------------------------------

SERVER = "198.51.100.7"  # on the internet, behind the host's router
LAN = ("192.0.2.1", "192.0.2.2")  # the router's LAN side, the host at home
HOST_SERVICE, ROUTER_SERVICE, WEB = 7070, 7071, 8080
_LISTEN = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
while True:
    server.accept()[0].close()
"""
# Run in the host's namespace with the machine's mounts (as the agent runs): one action, JSON out.
_AGENT = """
import json, subprocess, sys
from gpu_pool import rental_egress
from gpu_pool.rental_netns import RentalNamespace
action, name, egress = sys.argv[1], sys.argv[2], sys.argv[3] == "internet"
namespace = RentalNamespace(name, egress=egress)
if action == "adopt":
    print(namespace.adopt(sys.argv[4], 1300))
elif action == "probe":
    print(json.dumps([namespace.connects(host, int(port)) for host, port in json.loads(sys.argv[4])]))
elif action == "remove":
    namespace.remove()
elif action == "stale":
    print(json.dumps(rental_egress.remove_stale()))
elif action == "doctor":
    print(json.dumps(rental_egress.diagnose(internet=egress)))
elif action == "keep":  # the supervisor's check: a TUN left outside after Nebula came up is moved in
    from pathlib import Path
    from gpu_pool.mesh import Mesh
    mesh = Mesh(None, Path("/nonexistent"), tun_device=sys.argv[4], namespace=namespace)
    mesh.tunnels.interface_up.set()
    mesh._keep_in_namespace()
    mesh._keep_in_namespace()  # moved in already: nothing to do
"""


@dataclass
class Machine:
    host: str
    router: str
    processes: list[subprocess.Popen]

    def agent(
        self, action: str, name: str, egress: str = "internet", *more: str, without_net_admin: bool = False
    ) -> str:
        enter = ["nsenter", f"--net=/run/netns/{self.host}", "--"]
        if without_net_admin:  # root still, but as a container without --cap-add NET_ADMIN runs it
            enter += ["setpriv", "--bounding-set=-net_admin", "--"]
        done = subprocess.run(
            [*enter, sys.executable, "-c", _AGENT, action, name, egress, *more],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def reaches(self, name: str, targets: list[tuple[str, int]]) -> list[bool]:
        return json.loads(self.agent("probe", name, "internet", json.dumps(targets)))

    def host_rules(self) -> str:
        """The host's rules, both tables."""
        return "".join(
            _ip_netns(self.host, "iptables", "-w", "5", "-t", table, "-S") for table in ("filter", "nat")
        )

    def tun(self, name: str) -> str:
        """A TUN as Nebula leaves it on the host, with an overlay address."""
        _ip_netns(self.host, "ip", "tuntap", "add", "mode", "tun", "name", name)
        _ip_netns(self.host, "ip", "addr", "add", "100.64.9.9/16", "dev", name)
        return name


def _ip_netns(namespace: str, *command: str) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, *command], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def machine() -> Iterator[Machine]:
    require_namespaces()
    suffix = secrets.token_hex(3)
    host, router = f"gpeg{suffix}-host", f"gpeg{suffix}-router"
    made: list[str] = []
    processes: list[subprocess.Popen] = []
    try:
        for namespace in (host, router):
            subprocess.run(["ip", "netns", "add", namespace], check=True, timeout=10)
            made.append(namespace)
            _ip_netns(namespace, "ip", "link", "set", "lo", "up")
        pair = ["eth0", "netns", host, "type", "veth", "peer", "name", "lan", "netns", router]
        subprocess.run(["ip", "link", "add", *pair], check=True, timeout=10)
        _ip_netns(router, "ip", "addr", "add", f"{LAN[0]}/28", "dev", "lan")
        _ip_netns(router, "ip", "addr", "add", f"{SERVER}/32", "dev", "lo")
        _ip_netns(host, "ip", "addr", "add", f"{LAN[1]}/28", "dev", "eth0")
        for namespace, link in ((router, "lan"), (host, "eth0")):
            _ip_netns(namespace, "ip", "link", "set", link, "up")
        _ip_netns(host, "ip", "route", "add", "default", "via", LAN[0])
        for namespace, address, port in (
            (host, "0.0.0.0", HOST_SERVICE),
            (router, LAN[0], ROUTER_SERVICE),
            (router, SERVER, WEB),
        ):
            process = subprocess.Popen(
                ["ip", "netns", "exec", namespace, sys.executable, "-c", _LISTEN, address, str(port)],
                stdout=subprocess.PIPE,
                text=True,
            )
            processes.append(process)
            assert process.stdout is not None and process.stdout.readline().strip() == "listening"
        yield Machine(host, router, processes)
    finally:
        for process in processes:
            process.kill()
            process.wait()
        for name in Path("/run/netns").glob(f"gp-eg{suffix}*"):
            subprocess.run(["ip", "netns", "delete", name.name], check=False, timeout=10)
        for namespace in made:
            subprocess.run(["ip", "netns", "delete", namespace], check=False, timeout=10)


def test_a_rentals_namespace_reaches_the_internet_only_and_leaves_no_rule_behind(machine: Machine):
    name = f"gp-eg{machine.host[4:10]}a"
    tun = machine.tun(f"gpt{machine.host[4:10]}")
    assert machine.agent("adopt", name, "internet", tun) == "100.64.9.9"
    host_link = rental_egress.host_link_for(name)
    inside = _ip_netns(machine.host, "ip", "-n", name, "-4", "route")
    assert "default via 169.254." in inside and "dev egress" in inside
    assert "100.64.0.0/16 dev " + tun in inside  # the overlay stays on the TUN
    gateway = inside.split("default via ", 1)[1].split()[0]
    # From the rentals' namespace: the server on the internet, nothing of the host or its home.
    targets = [
        (SERVER, WEB),
        (LAN[1], HOST_SERVICE),  # the host's address at home
        (gateway, HOST_SERVICE),  # the host's end of the veth
        (LAN[0], ROUTER_SERVICE),  # the router's LAN side
        ("127.0.0.1", HOST_SERVICE),  # the namespace's own loopback, not the host's
    ]
    assert machine.reaches(name, targets) == [True, False, False, False, False]
    assert _ip_netns(machine.host, "cat", f"/proc/sys/net/ipv6/conf/{host_link}/disable_ipv6") == "1\n"
    assert "inet6" not in _ip_netns(machine.host, "ip", "-n", name, "addr", "show", "egress")

    # Made again (Nebula restarted, the agent restarted after a crash): the same rules, once.
    rules = machine.host_rules()
    assert rules.count(f"-j {name}-") == 4 and rules.count(f"-N {name}-") == 4, rules
    machine.agent("adopt", name, "internet", tun)
    assert machine.host_rules() == rules

    # --rental-egress none on the same namespace: the way out a run with internet made goes.
    machine.agent("adopt", name, "none", tun)
    assert "default" not in _ip_netns(machine.host, "ip", "-n", name, "-4", "route")
    assert name not in machine.host_rules()
    assert host_link not in _ip_netns(machine.host, "ip", "-o", "link")
    assert machine.reaches(name, [(SERVER, WEB)]) == [False]

    machine.agent("adopt", name, "internet", tun)
    assert machine.reaches(name, [(SERVER, WEB)]) == [True]
    machine.agent("remove", name)
    assert not Path(f"/run/netns/{name}").exists()
    assert name not in machine.host_rules()
    assert host_link not in _ip_netns(machine.host, "ip", "-o", "link")


def test_a_tun_left_outside_the_rentals_namespace_is_moved_in_by_the_supervisors_check(machine: Machine):
    """A restart's move that failed (CI, under load: the namespace held lo and the way out, not the TUN)
    is made good by the supervisor's next look, without waiting for another restart."""
    name = f"gp-eg{machine.host[4:10]}k"
    machine.agent("adopt", name, "none", machine.tun(f"gpt{machine.host[4:10]}j"))
    tun = machine.tun(f"gpt{machine.host[4:10]}k")  # Nebula's new TUN, not moved in
    machine.agent("keep", name, "none", tun)
    assert tun not in _ip_netns(machine.host, "ip", "-o", "link")
    assert "100.64.9.9" in _ip_netns(machine.host, "ip", "-n", name, "-4", "addr", "show", "dev", tun)


def test_rules_of_a_namespace_that_is_gone_are_removed_at_the_next_start(machine: Machine):
    name, alive = f"gp-eg{machine.host[4:10]}b", f"gp-eg{machine.host[4:10]}c"
    for namespace, tun in ((name, f"gpt{machine.host[4:10]}b"), (alive, f"gpt{machine.host[4:10]}c")):
        machine.agent("adopt", namespace, "internet", machine.tun(tun))
    # The agent crashed and its namespace was deleted since (a reboot keeps no namespace, nor rules, but a
    # provider's `ip netns delete` does just this): the next start removes that one's rules only.
    subprocess.run(["ip", "netns", "delete", name], check=True, timeout=10)
    removed = json.loads(machine.agent("stale", alive))
    assert sorted(removed) == sorted(
        [f"filter/{name}-in", f"filter/{name}-out", f"filter/{name}-back", f"nat/{name}-nat"]
    )
    rules = machine.host_rules()
    assert name not in rules and rules.count(f"-j {alive}-") == 4
    assert machine.reaches(alive, [(SERVER, WEB)]) == [True]


def test_doctor_says_what_rentals_on_the_overlay_need_and_how_to_fix_it(machine: Machine):
    require_program("setpriv", "util-linux")
    checks = json.loads(machine.agent("doctor", "gp-doctor"))
    assert [ok for ok, _, _ in checks] == [True] * 4, checks
    assert [what.split(":")[0] for _, what, _ in checks] == ["Rentals on the overlay"] * 2 + [
        "Rentals' internet"
    ] * 2
    assert "iptables answers" in checks[2][1] and "forwarding" in checks[3][1]
    assert (
        len(json.loads(machine.agent("doctor", "gp-doctor", "none"))) == 3
    )  # no internet: nothing more to check

    refused = json.loads(machine.agent("doctor", "gp-doctor", without_net_admin=True))
    assert [ok for ok, _, _ in refused[:3]] == [False] * 3, refused
    # Forwarding already on (new namespaces take the machine's setting) needs no right to turn it on.
    assert refused[3][0] == ("forwarding is on" in refused[3][1]), refused
    assert "no CAP_NET_ADMIN" in refused[0][1] and "run the agent as root" in refused[0][2]
    assert "apt-get install iptables" in refused[2][2]
