"""A way out to the internet for the rentals' namespace on the overlay (``gpu_pool.rental_netns``), and only
to the internet.

The namespace ``gp-<device>`` holds Nebula's TUN; ``open_egress`` gives it a veth pair to the agent's own
network namespace (the host: ``gpe<device>`` there, ``egress`` inside), a transfer subnet (a /30 of link-local
169.254.1.0-169.254.127.255 chosen from the device id: never routed beyond a link, so it cannot clash with
a network the provider uses, and clear of the cloud metadata addresses at 169.254.169.x/170.x), a default
route inside via the host's end, and MASQUERADE on the host. The overlay's own routes stay on the TUN (more
specific than the default route), so cluster traffic never leaves through the host.

The policy, in chains of the device's own (``gp-<device>-in|out|back|nat``) jumped to from INPUT,
FORWARD and POSTROUTING: from the namespace, new connections reach public addresses only. Refused (REJECT,
so that a customer's code fails at once instead of hanging): the host itself (anything arriving at the host
from the veth that does not answer the host's own flow), every network the host is directly connected to
(its connected routes when the rules were made: the provider's home LAN, its router, other bridges),
RFC 1918, CGNAT 100.64.0.0/10 (the overlay is reached through the TUN, never the host), link-local
169.254.0.0/16 (cloud metadata included), multicast and the other ranges that are never the internet.
Nothing from outside opens a connection into the namespace (only answers come back). IPv6 is switched off
on both ends of the veth: the namespace has no IPv6 way out (the rules are IPv4 only), its loopback keeps
``::1``.

Order matters (fail closed): the rules are in place before the namespace gets its default route; if they
cannot be made, the route is taken away and the rentals have no way out. ``close`` removes the veth, the
chains and the jumps; ``remove_stale`` removes chains whose namespace is gone (an agent that crashed).
Needs root (CAP_NET_ADMIN), iproute2's ``ip`` and ``iptables`` (iptables-nft or legacy); turns on IPv4
forwarding on the host, as Docker and Podman do.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("gpu_pool.rental_egress")

NETNS_DIR = Path("/run/netns")
# Namespaces that may get a way out: gp- and at most 12 characters that can be part of an interface name.
NAMESPACE = re.compile(r"^gp-([a-zA-Z0-9_]{1,12})$")
CHAIN = re.compile(r"^(gp-[a-zA-Z0-9_]{1,12})-(in|out|back|nat)$")
INSIDE = "egress"  # the veth's end in the namespace: the only link there besides lo and the TUN
# 169.254.1.0-169.254.127.255 in /30s: link-local (RFC 3927 keeps .0.x and .255.x), below 169.254.169.254.
TRANSFER_FIRST = int(ipaddress.IPv4Address("169.254.1.0"))
TRANSFER_SUBNETS = (127 * 256) // 4
# Never the internet, whatever the host's routes say.
NOT_INTERNET = tuple(
    ipaddress.IPv4Network(network)
    for network in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # RFC 1918
        "100.64.0.0/10",  # CGNAT, and the overlay (reached through the TUN only)
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local: cloud metadata (169.254.169.254), the transfer subnets
        "172.16.0.0/12",  # RFC 1918
        "192.168.0.0/16",  # RFC 1918
        "198.18.0.0/15",  # benchmarking; local proxies' fake addresses
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the broadcast address
    )
)
FALLBACK_RESOLVERS = ("1.1.1.1", "9.9.9.9")
COMMAND_TIMEOUT_S = 15
CLONE_NEWNET = 0x40000000


class EgressError(Exception):
    """The way out could not be made or removed; the message says what failed."""


@dataclass(frozen=True)
class Plan:
    """Everything the rules are made from: the namespace, the transfer subnet, what is refused."""

    namespace: str
    subnet: ipaddress.IPv4Network
    refused: tuple[ipaddress.IPv4Network, ...]

    @property
    def host_link(self) -> str:
        return host_link_for(self.namespace)

    @property
    def host_address(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 1

    @property
    def inside_address(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 2

    def chain(self, kind: str) -> str:
        return f"{self.namespace}-{kind}"


def host_link_for(namespace: str) -> str:
    """The veth's end on the host: gpe and the device's part of the name (15 characters at most)."""
    found = NAMESPACE.fullmatch(namespace)
    if found is None:
        raise EgressError(f"{namespace!r} is not a rentals' namespace name")
    return "gpe" + found[1]


def transfer_subnet(namespace: str, taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The namespace's /30: from a hash of its name (the device's id), the next free one when a route of
    the host covers it (another agent's, a network of the provider's)."""
    start = int.from_bytes(hashlib.sha256(namespace.encode()).digest()[:4], "big") % TRANSFER_SUBNETS
    for step in range(TRANSFER_SUBNETS):
        index = (start + step) % TRANSFER_SUBNETS
        subnet = ipaddress.IPv4Network((TRANSFER_FIRST + 4 * index, 30))
        if not any(subnet.overlaps(other) for other in taken):
            return subnet
    raise EgressError("every transfer subnet in 169.254.1.0-169.254.127.255 is taken on this host")


def connected_networks(routes: list[dict[str, Any]]) -> list[ipaddress.IPv4Network]:
    """The networks the host reaches without a gateway, from ``ip -j -4 route show table all``: its
    unicast routes of scope link (a default route through a tunnel is not a network)."""
    found = []
    for route in routes:
        destination = str(route.get("dst", ""))
        if route.get("type", "unicast") != "unicast" or route.get("scope") != "link":
            continue
        if destination in ("", "default") or route.get("gateway"):
            continue
        try:
            network = ipaddress.IPv4Network(destination, strict=False)
        except ValueError:
            continue
        if network.prefixlen > 0:
            found.append(network)
    return found


def refused_networks(connected: list[ipaddress.IPv4Network]) -> tuple[ipaddress.IPv4Network, ...]:
    """What the namespace may not reach through the host: never-internet ranges and the host's networks."""
    return tuple(ipaddress.collapse_addresses([*NOT_INTERNET, *connected]))


def rules(plan: Plan) -> str:
    """``iptables-restore --noflush`` input that (re)makes the device's chains, emptied first."""
    inside, outside, back, nat = (plan.chain(kind) for kind in ("in", "out", "back", "nat"))
    answers = "-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
    refuse = "-j REJECT --reject-with icmp-admin-prohibited"
    lines = [
        "*filter",
        f":{inside} - [0:0]",
        f":{outside} - [0:0]",
        f":{back} - [0:0]",
        # To the host itself (any of its addresses): only answers to what the host began.
        f"-A {inside} {answers}",
        f"-A {inside} {refuse}",
        f"-A {outside} -m conntrack --ctstate INVALID -j DROP",
        *(f"-A {outside} -d {network} {refuse}" for network in plan.refused),
        f"-A {outside} -j ACCEPT",
        # Into the namespace from anywhere: answers only.
        f"-A {back} {answers}",
        f"-A {back} -j DROP",
        "COMMIT",
        "*nat",
        f":{nat} - [0:0]",
        f"-A {nat} -j MASQUERADE",
        "COMMIT",
    ]
    return "\n".join(lines) + "\n"


def jumps(plan: Plan) -> list[tuple[str, str, list[str]]]:
    """(table, built-in chain, rule) of the jumps into the device's chains, each inserted first, once."""
    link = plan.host_link
    return [
        ("filter", "INPUT", ["-i", link, "-j", plan.chain("in")]),
        ("filter", "FORWARD", ["-i", link, "-j", plan.chain("out")]),
        ("filter", "FORWARD", ["-o", link, "-j", plan.chain("back")]),
        ("nat", "POSTROUTING", ["-s", str(plan.subnet), "!", "-o", link, "-j", plan.chain("nat")]),
    ]


def resolvers(resolv_conf: str) -> list[str]:
    """Name servers for the rentals' containers: the host's public IPv4 ones (a home router's or a
    loopback resolver is out of the namespace's reach), else public fallbacks."""
    found = []
    for line in resolv_conf.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                address = ipaddress.ip_address(fields[1])
            except ValueError:
                continue
            if address.version == 4 and address.is_global and str(address) not in found:
                found.append(str(address))
    return found[:3] or list(FALLBACK_RESOLVERS)


def host_resolvers() -> list[str]:
    try:
        return resolvers(Path("/etc/resolv.conf").read_text(errors="replace"))
    except OSError:
        return list(FALLBACK_RESOLVERS)


# --- the machine -------------------------------------------------------------------------------------


def _run(program: str, *args: str, stdin: str | None = None, check: bool = True) -> str:
    path = shutil.which(program)
    if path is None:
        package = "iproute2" if program == "ip" else "iptables"
        raise EgressError(f"{program} is not installed (apt-get install {package})")
    try:
        done = subprocess.run(
            [path, *args], input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise EgressError(f"{program} {' '.join(args[:3])}: {error}") from None
    if check and done.returncode != 0:
        raise EgressError(f"{program} {' '.join(args)} failed: {done.stderr.strip()[:300]}")
    return done.stdout if done.returncode == 0 else ""


def _succeeds(program: str, *args: str) -> bool:
    """Whether the command exits with 0 (``iptables -C``: whether the rule is there)."""
    path = shutil.which(program)
    if path is None:
        return False
    try:
        done = subprocess.run([path, *args], capture_output=True, timeout=COMMAND_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _iptables(*args: str, check: bool = True) -> str:
    return _run("iptables", "-w", "5", *args, check=check)


def _in_namespace(namespace: str, action: Callable[[], None]) -> None:
    """Run ``action`` in a thread that alone enters the namespace (setns moves the calling thread only)."""
    failed: list[str] = []

    def enter() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            with (NETNS_DIR / namespace).open() as handle:
                if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                    failed.append(f"setns: errno {ctypes.get_errno()}")
                    return
            action()
        except OSError as error:
            failed.append(str(error))

    thread = threading.Thread(target=enter, daemon=True, name="netns-egress")
    thread.start()
    thread.join(COMMAND_TIMEOUT_S)
    if failed:
        raise EgressError(f"in {namespace}: {failed[0]}")


def _switch_off_ipv6(link: str) -> None:
    """No IPv6 on this link (of the calling thread's namespace); nothing when the kernel has no IPv6."""
    setting = Path(f"/proc/sys/net/ipv6/conf/{link}/disable_ipv6")
    if setting.parent.exists():
        setting.write_text("1")


def _links(*namespace: str) -> dict[str, dict[str, Any]]:
    listed = _run("ip", *namespace, "-j", "-4", "addr", "show", check=False)
    return {link["ifname"]: link for link in json.loads(listed or "[]")}


def _subnet_of(link: dict[str, Any]) -> ipaddress.IPv4Network | None:
    for info in link.get("addr_info", []):
        if info.get("family") == "inet":
            return ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False)
    return None


def plan_for(namespace: str) -> Plan:
    """The plan from this host's state now: the veth's subnet if it is there, else a free one; the
    refused networks from the host's connected routes."""
    if not NAMESPACE.fullmatch(namespace):
        raise EgressError(f"{namespace!r} is not a rentals' namespace name")
    routes = json.loads(_run("ip", "-j", "-4", "route", "show", "table", "all") or "[]")
    connected = connected_networks(routes)
    existing = _links().get(host_link_for(namespace))
    subnet = _subnet_of(existing) if existing else None
    if subnet is None or subnet.prefixlen != 30:
        taken = [
            network for route in routes if (network := _route_network(route)) is not None
        ]  # every route, not only connected ones: a /30 routed anywhere is not free
        subnet = transfer_subnet(namespace, taken)
    return Plan(namespace, subnet, refused_networks(connected))


def _route_network(route: dict[str, Any]) -> ipaddress.IPv4Network | None:
    destination = str(route.get("dst", ""))
    if destination in ("", "default") or route.get("type", "unicast") not in ("unicast", "local"):
        return None
    try:
        network = ipaddress.IPv4Network(destination, strict=False)
    except ValueError:
        return None
    return network if network.prefixlen > 0 else None


def open_egress(namespace: str) -> Plan:
    """Give the namespace its way out (or refresh it: the host's networks may have changed); idempotent.
    Raises EgressError with the namespace left without a default route."""
    plan = plan_for(namespace)
    try:
        _make_link(plan)
        _run("iptables-restore", "-w", "5", "--noflush", stdin=rules(plan))
        for table, chain, rule in jumps(plan):
            if not _succeeds("iptables", "-w", "5", "-t", table, "-C", chain, *rule):
                _iptables("-t", table, "-I", chain, "1", *rule)
        _forwarding_on()
        _run(
            "ip", "-n", namespace, "route", "replace", "default", "via", str(plan.host_address), "dev", INSIDE
        )
    except EgressError:
        _run("ip", "-n", namespace, "route", "delete", "default", check=False)
        raise
    logger.info(
        "rentals in %s reach the internet through %s (%s), %d networks refused",
        namespace,
        plan.host_link,
        plan.subnet,
        len(plan.refused),
    )
    return plan


def _make_link(plan: Plan) -> None:
    """The veth pair with its addresses, IPv6 off on both ends; made again if half of it is missing."""
    host, inside = _links(), _links("-n", plan.namespace)
    if (
        plan.host_link in host
        and INSIDE in inside
        and _subnet_of(host[plan.host_link]) == plan.subnet == _subnet_of(inside[INSIDE])
    ):
        return
    _run("ip", "link", "delete", plan.host_link, check=False)
    _run("ip", "-n", plan.namespace, "link", "delete", INSIDE, check=False)
    _run(
        "ip", "link", "add", plan.host_link, "type", "veth",
        "peer", "name", INSIDE, "netns", plan.namespace,
    )  # fmt: skip
    _switch_off_ipv6(plan.host_link)
    _in_namespace(plan.namespace, lambda: _switch_off_ipv6(INSIDE))
    prefix = plan.subnet.prefixlen
    _run("ip", "addr", "replace", f"{plan.host_address}/{prefix}", "dev", plan.host_link)
    _run("ip", "-n", plan.namespace, "addr", "replace", f"{plan.inside_address}/{prefix}", "dev", INSIDE)
    _run("ip", "link", "set", plan.host_link, "up")
    _run("ip", "-n", plan.namespace, "link", "set", INSIDE, "up")


def _forwarding_on() -> None:
    setting = Path("/proc/sys/net/ipv4/ip_forward")
    try:
        if setting.read_text().strip() != "1":
            setting.write_text("1")
            logger.info("IPv4 forwarding turned on (the rentals' way out goes through this host)")
    except OSError as error:
        raise EgressError(f"cannot turn on IPv4 forwarding ({error.strerror})") from None


def close_egress(namespace: str) -> None:
    """Remove the way out: the namespace's default route, the veth, the device's chains and their jumps.
    Nothing when they are not there."""
    if not NAMESPACE.fullmatch(namespace):
        return
    if shutil.which("ip"):
        if (NETNS_DIR / namespace).exists():
            _run("ip", "-n", namespace, "route", "delete", "default", check=False)
        _run("ip", "link", "delete", host_link_for(namespace), check=False)
    if shutil.which("iptables"):
        _remove_chains({namespace})


def _remove_chains(namespaces: set[str] | None) -> list[str]:
    """Remove the chains of these namespaces (None: of every namespace that is gone) and every rule that
    jumps to them; the chains removed."""
    removed = []
    for table in ("filter", "nat"):
        listed = _iptables("-t", table, "-S", check=False).splitlines()
        chains = [line.split()[1] for line in listed if line.startswith("-N ")]
        ours = []
        for chain in chains:
            found = CHAIN.fullmatch(chain)
            if found is None:
                continue
            owner = found[1]
            if (owner in namespaces) if namespaces is not None else not (NETNS_DIR / owner).exists():
                ours.append(chain)
        for line in listed:
            fields = line.split()
            if fields[:1] == ["-A"] and fields[-2:-1] == ["-j"] and fields[-1] in ours:
                _iptables("-t", table, "-D", *fields[1:], check=False)
        for chain in ours:
            _iptables("-t", table, "-F", chain, check=False)
            _iptables("-t", table, "-X", chain, check=False)
            removed.append(f"{table}/{chain}")
    return removed


def remove_stale() -> list[str]:
    """At the agent's start: the chains (and jumps) of rentals' namespaces that are gone, e.g. after a
    crash of an agent whose namespace was deleted since; the chains removed."""
    if shutil.which("iptables") is None:
        return []
    removed = _remove_chains(None)
    if removed:
        logger.info("removed the egress rules of namespaces that are gone: %s", removed)
    return removed


# --- gpu-pool doctor ---------------------------------------------------------------------------------

CAP_NET_ADMIN = 12


def _holds_net_admin() -> bool:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return False
    found = re.search(r"^CapEff:\s*([0-9a-f]+)", status, re.MULTILINE)
    return bool(found and int(found[1], 16) & (1 << CAP_NET_ADMIN))


def diagnose(internet: bool = True) -> list[tuple[bool, str, str]]:
    """``gpu-pool doctor``'s checks for rentals on the overlay: what their namespace needs, and with
    ``internet`` what their way out needs. (ok, what was found, how to fix it)."""
    root_fix = "run the agent as root (sudo gpu-pool worker …), or give it CAP_NET_ADMIN"
    admin = _holds_net_admin()
    checks = [
        (
            admin,
            "Rentals on the overlay: "
            + ("CAP_NET_ADMIN held" if admin else "not root and no CAP_NET_ADMIN: no namespace, no overlay"),
            root_fix,
        )
    ]
    trial = f"gp-doctor{os.getpid() % 100000}"
    works = admin and _succeeds("ip", "netns", "add", trial)
    if works:
        works = _succeeds("ip", "netns", "delete", trial)
    checks.append(
        (
            works,
            "Rentals on the overlay: `ip netns` "
            + ("makes and deletes a namespace" if works else "cannot make a namespace here"),
            "install iproute2 (apt-get install iproute2) and run as root, with /run writable",
        )
    )
    if not internet:
        return [*checks, (True, "Rentals' internet: off (--rental-egress none), not checked", "")]
    listed = admin and _succeeds("iptables", "-w", "5", "-S")
    version = ""
    if shutil.which("iptables"):
        with contextlib.suppress(EgressError):
            version = _run("iptables", "--version", check=False).strip()
    checks.append(
        (
            listed,
            f"Rentals' internet: iptables {'answers' if listed else 'does not answer'}"
            + (f" ({version})" if version else " (not installed)"),
            "apt-get install iptables, run as root; or --rental-egress none (rentals without internet)",
        )
    )
    forwarding = Path("/proc/sys/net/ipv4/ip_forward")
    try:
        already = forwarding.read_text().strip() == "1"
    except OSError:
        already = False
    can = already or (admin and os.access(forwarding, os.W_OK))
    checks.append(
        (
            can,
            "Rentals' internet: IPv4 forwarding "
            + ("is on" if already else "can be turned on" if can else "cannot be turned on here"),
            "run as root; in a container give it a writable /proc/sys (or sysctl net.ipv4.ip_forward=1)",
        )
    )
    return checks
