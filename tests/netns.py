"""A small internet made of Linux network namespaces, for the mesh tests (issue 18).

``with small_internet() as net:`` builds, in well under a second, and always tears down::

    public segment 203.0.113.0/24, a bridge in the ``public`` namespace (the lighthouse is 203.0.113.1)
    ├── portal        203.0.113.2                     the portal's machine: public, no NAT
    ├── router-a      203.0.113.11 ── provider-a      192.0.2.2    home NAT
    ├── router-b      203.0.113.12 ── provider-b      192.0.2.18   home NAT
    ├── router-c      203.0.113.13 ── provider-c      192.0.2.34   symmetric NAT: hole punching fails
    └── router-d      203.0.113.14 ── customer        192.0.2.50   home NAT

Every address is in a documentation range and lives only in these namespaces; nothing is added to the
machine's own namespace (veth pairs are created straight into theirs), and deleting the namespaces deletes
their links, bridge and iptables rules with them.

A home NAT is ``MASQUERADE`` (it keeps a flow's source port when it can, as home routers do) with no inbound
port: the router forwards from the internet only what answers a flow its side began, and accepts nothing
itself. The symmetric NAT maps every new flow to a random port (``--random-fully``), so the port the
lighthouse saw is never the one a peer's punch must hit: only a relay connects it. Each router counts, per
public address, the packets it let in from there (``admitted_from``), which tells a punched path from a
relayed one at the network level.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import IN_CI, require_program

PUBLIC_PREFIX = 24
LAN_PREFIX = 28
LIGHTHOUSE_ADDRESS = "203.0.113.1"
PORTAL_ADDRESS = "203.0.113.2"
COMMAND_TIMEOUT_S = 10.0
LISTEN_TIMEOUT_S = 30.0  # a Python echo server starting on a loaded machine
# The segment's hosts behind a router: (router, its public address, host, the router's LAN address, host's).
NATTED = {
    "provider-a": ("router-a", "203.0.113.11", "192.0.2.1", "192.0.2.2"),
    "provider-b": ("router-b", "203.0.113.12", "192.0.2.17", "192.0.2.18"),
    "provider-c": ("router-c", "203.0.113.13", "192.0.2.33", "192.0.2.34"),
    "customer": ("router-d", "203.0.113.14", "192.0.2.49", "192.0.2.50"),
}
SYMMETRIC = {"router-c"}

# A TCP echo server (one line back per connection) and its client, run inside a namespace.
_LISTEN = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])), backlog=64)
print("listening", flush=True)
while True:
    peer, _ = server.accept()
    with peer:
        peer.settimeout(5)
        try:
            peer.sendall(peer.recv(64))
        except OSError:
            pass
"""
_CONNECT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as s:
        s.settimeout(float(sys.argv[3]))
        s.sendall(b"ping\\n")
        sys.exit(0 if s.recv(64) == b"ping\\n" else 1)
except OSError:
    sys.exit(1)
"""


def require_namespaces() -> None:
    """Root, ``ip``, ``iptables`` and a TUN device: skipped without them, failed under CI=true."""
    require_program("ip", "iproute2")
    require_program("iptables", "iptables")
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces and iptables)")
    if not Path("/dev/net/tun").exists():
        missing.append("/dev/net/tun")
    if missing:
        message = f"the namespace tests need {' and '.join(missing)}"
        if IN_CI:
            pytest.fail(f"{message}; under CI=true they must run")
        pytest.skip(message)


def _run(
    command: list[str], *, stdin: str | None = None, check: bool = True, timeout_s: float = COMMAND_TIMEOUT_S
) -> subprocess.CompletedProcess:
    done = subprocess.run(
        command, input=stdin, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


@dataclass
class Process:
    """A long-lived process in a namespace, its output in ``log``."""

    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, timeout_s: float = 5) -> None:
        """SIGTERM, then SIGKILL; its process group (it leads one) goes with it."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait()


@dataclass
class Namespace:
    name: str  # the kernel's name (unique per run); ``role`` is the one tests use
    role: str
    address: str  # on the public segment, or on its LAN behind a router

    def run(
        self,
        *command: str,
        check: bool = True,
        stdin: str | None = None,
        timeout_s: float = COMMAND_TIMEOUT_S,
    ) -> subprocess.CompletedProcess:
        return _run(
            ["ip", "netns", "exec", self.name, *command], stdin=stdin, check=check, timeout_s=timeout_s
        )

    def start(self, command: list[str], log: Path, host_mounts: bool = False) -> Process:
        """Start ``command`` in this namespace; ``ip netns exec`` execs it, so the PID is the program's.
        ``host_mounts``: enter the network namespace only (nsenter), keeping the machine's mounts, which
        ``ip netns exec`` changes (its /sys has no cgroups, which a container engine needs)."""
        enter = (
            ["nsenter", f"--net=/run/netns/{self.name}", "--"]
            if host_mounts
            else ["ip", "netns", "exec", self.name]
        )
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [*enter, *command],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return Process(popen, log)

    def listen_tcp(self, address: str, port: int, log: Path) -> Process:
        """A TCP echo server on ``address:port`` in this namespace (the address must be there already),
        returned once it listens: a probe right after must not race its start (CI, under load)."""
        started = log.stat().st_size if log.exists() else 0
        process = self.start([sys.executable, "-c", _LISTEN, address, str(port)], log)
        deadline = time.monotonic() + LISTEN_TIMEOUT_S
        while b"listening" not in log.read_bytes()[started:]:
            if not process.alive() or time.monotonic() > deadline:
                process.stop()
                raise RuntimeError(
                    f"no listener on {address}:{port} in {self.role}: {log.read_text()[-500:]}"
                )
            time.sleep(0.05)
        return process

    def connects(self, address: str, port: int, timeout_s: float = 1.5) -> bool:
        """Whether a TCP connection from this namespace to ``address:port`` is accepted and echoes."""
        probe = [sys.executable, "-c", _CONNECT, address, str(port), str(timeout_s)]
        return self.run(*probe, check=False).returncode == 0


@dataclass(repr=False)
class Internet:
    suffix: str
    workdir: Path
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"<small internet gp{self.suffix}-* in {self.workdir}>"

    def __getitem__(self, role: str) -> Namespace:
        return self.namespaces[role]

    def public_address(self, role: str) -> str:
        """Where a host is seen from the internet: its router's address, or its own on the segment."""
        if role in NATTED:
            return NATTED[role][1]
        return self.namespaces[role].address

    def start(self, role: str, command: list[str], name: str, host_mounts: bool = False) -> Process:
        """A long-lived process in ``role``'s namespace, stopped at teardown if not before."""
        process = self.namespaces[role].start(command, self.workdir / f"{name}.log", host_mounts)
        self.processes.append(process)
        return process

    def listen_tcp(self, role: str, address: str, port: int) -> Process:
        process = self.namespaces[role].listen_tcp(address, port, self.workdir / f"listen-{role}-{port}.log")
        self.processes.append(process)
        return process

    def uplink(self, role: str) -> str:
        """The bridge port of a host or its router: the cable to the internet."""
        return f"up-{NATTED[role][0] if role in NATTED else role}"

    def cut(self, role: str) -> None:
        """Pull the cable between a host (or its router) and the internet."""
        _run(["ip", "-n", self["public"].name, "link", "set", self.uplink(role), "down"])

    def reconnect(self, role: str) -> None:
        _run(["ip", "-n", self["public"].name, "link", "set", self.uplink(role), "up"])

    def admitted_from(self, role: str, source: str) -> int:
        """Packets ``role``'s router let in from the public address ``source`` (answers to its own flows)."""
        router = self.namespaces[NATTED[role][0]]
        listed = router.run("iptables", "-w", "-n", "-v", "-x", "-L", "admitted").stdout
        for line in listed.splitlines()[2:]:
            fields = line.split()
            if len(fields) == 8 and fields[6] == source:  # pkts bytes prot opt in out source destination
                return int(fields[0])
        raise LookupError(f"{router.role} does not count packets from {source}")

    def teardown(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):
                process.stop()
        for namespace in self.namespaces.values():
            _run(["ip", "netns", "delete", namespace.name], check=False)


def _router_rules(others: list[str], symmetric: bool) -> str:
    """iptables-restore input for a router: NAT out of ``wan``, nothing in but answers, counted per source."""
    counted = "\n".join(f"-A admitted -s {address}/32" for address in others)
    return f"""*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -o wan -j MASQUERADE{" --random-fully" if symmetric else ""}
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:admitted - [0:0]
-A INPUT -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A INPUT -i wan -j DROP
-A FORWARD -i lan -o wan -j ACCEPT
-A FORWARD -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED -j admitted
{counted}
-A admitted -j ACCEPT
COMMIT
"""


def _build(net: Internet) -> None:
    def add(role: str, address: str) -> Namespace:
        namespace = Namespace(f"gp{net.suffix}-{role}", role, address)
        _run(["ip", "netns", "add", namespace.name])
        net.namespaces[role] = namespace  # from here on, teardown deletes it
        _run(["ip", "-n", namespace.name, "link", "set", "lo", "up"])
        return namespace

    def veth(left: Namespace, left_name: str, right: Namespace, right_name: str) -> None:
        _run([
            "ip", "link", "add", left_name, "netns", left.name,
            "type", "veth", "peer", "name", right_name, "netns", right.name,
        ])  # fmt: skip

    def address(namespace: Namespace, device: str, cidr: str) -> None:
        _run(["ip", "-n", namespace.name, "addr", "add", cidr, "dev", device])
        _run(["ip", "-n", namespace.name, "link", "set", device, "up"])

    public = add("public", LIGHTHOUSE_ADDRESS)
    _run(["ip", "-n", public.name, "link", "add", "br0", "type", "bridge"])
    address(public, "br0", f"{LIGHTHOUSE_ADDRESS}/{PUBLIC_PREFIX}")

    def on_segment(namespace: Namespace, device: str, public_address: str) -> None:
        port = f"up-{namespace.role}"
        veth(namespace, device, public, port)
        _run(["ip", "-n", public.name, "link", "set", port, "master", "br0", "up"])
        address(namespace, device, f"{public_address}/{PUBLIC_PREFIX}")

    on_segment(add("portal", PORTAL_ADDRESS), "eth0", PORTAL_ADDRESS)
    segment = [LIGHTHOUSE_ADDRESS, PORTAL_ADDRESS] + [wan for _, wan, _, _ in NATTED.values()]
    for role, (router_role, wan, gateway, host_address) in NATTED.items():
        router = add(router_role, wan)
        on_segment(router, "wan", wan)
        host = add(role, host_address)
        veth(router, "lan", host, "eth0")
        address(router, "lan", f"{gateway}/{LAN_PREFIX}")
        address(host, "eth0", f"{host_address}/{LAN_PREFIX}")
        _run(["ip", "-n", host.name, "route", "add", "default", "via", gateway])
        router.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        others = [other for other in segment if other != wan]
        router.run("iptables-restore", stdin=_router_rules(others, router_role in SYMMETRIC))


@contextlib.contextmanager
def small_internet(workdir: Path) -> Iterator[Internet]:
    """Build the namespaces (names unique to this run) and tear them down however the block ends."""
    require_namespaces()
    net = Internet(secrets.token_hex(3), workdir)
    try:
        _build(net)
        yield net
    finally:
        net.teardown()


def leftovers(suffix: str) -> list[str]:
    """Namespaces of the run ``suffix`` still on the machine (none after teardown)."""
    listed = _run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in listed.splitlines() if line.startswith(f"gp{suffix}-")]
