"""The overlay's cost on the wire, timed: ``python -m bench.overlay``.

Two network namespaces joined by a veth pair (documentation addresses, nothing on the machine's own
network), each running Nebula from Debian with a certificate from the portal's CA code (one of them is also
the lighthouse). A TCP stream of bulk data and a ping-pong of one-byte messages go once over the plain veth
path and once over the overlay between the same two namespaces, in the same run: the ratio is what Nebula
(userspace TUN, encryption) costs two providers' Ray nodes. Needs root, ``ip`` and ``nebula``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from bench.sizes import size
from portal.config import Settings
from portal.services.mesh import ca, keys

STREAM_BYTES = size(256 * 2**20, 16 * 2**20)
ROUND_TRIPS = size(2_000, 200)
VETH = ("198.51.100.1", "198.51.100.2")
OVERLAY = ("100.64.0.1", "100.64.0.2")
PORT = 7100

# Run in the receiving namespace: accept one stream and count it, then echo one byte at a time.
_SERVE = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
for _ in range(2):
    peer, _ = server.accept()
    with peer:
        peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        kind = peer.recv(1)
        if kind == b"s":
            while peer.recv(1 << 20):
                pass
            peer.sendall(b"k")
        else:
            while (byte := peer.recv(1)):
                peer.sendall(byte)
"""
# Run in the sending namespace: the stream's seconds, then each round trip's, as one line of numbers.
_SEND = """
import socket, sys, time
host, port, total, trips = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
chunk = b"x" * (1 << 20)
with socket.create_connection((host, port), timeout=60) as s:
    s.sendall(b"s")
    started = time.perf_counter()
    for _ in range(total // len(chunk)):
        s.sendall(chunk)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    stream = time.perf_counter() - started
times = []
with socket.create_connection((host, port), timeout=60) as s:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"p")
    for _ in range(trips):
        started = time.perf_counter()
        s.sendall(b"."); s.recv(1)
        times.append(time.perf_counter() - started)
print(stream, *times)
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextlib.contextmanager
def _namespaces() -> Iterator[tuple[str, str]]:
    suffix = secrets.token_hex(3)
    names = (f"gpb{suffix}-a", f"gpb{suffix}-b")
    try:
        for name in names:
            _ip("netns", "add", name)
            _ip("-n", name, "link", "set", "lo", "up")
        _ip(
            "link",
            "add",
            "eth0",
            "netns",
            names[0],
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            names[1],
        )
        for name, address in zip(names, VETH, strict=True):
            _ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
        yield names
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=10)


def _node_config(home: Path, index: int) -> Path:
    lighthouse = index == 0
    config = {
        "pki": {"ca": str(home / "ca.crt"), "cert": str(home / "host.crt"), "key": str(home / "host.key")},
        "static_host_map": {} if lighthouse else {OVERLAY[0]: [f"{VETH[0]}:4242"]},
        "lighthouse": {"am_lighthouse": lighthouse, "hosts": [] if lighthouse else [OVERLAY[0]]},
        "listen": {"host": "0.0.0.0", "port": 4242 if lighthouse else 0},
        "punchy": {"punch": True, "respond": True, "delay": "0s"},
        "tun": {"dev": "nebula1", "mtu": 1300},
        "logging": {"level": "warning"},
        "firewall": {
            "outbound": [{"port": "any", "proto": "any", "host": "any"}],
            "inbound": [{"port": "any", "proto": "any", "host": "any"}],
        },
    }
    path = home / "nebula.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _measure(namespaces: tuple[str, str], target: str) -> tuple[float, list[float]]:
    server = subprocess.Popen(
        ["ip", "netns", "exec", namespaces[1], sys.executable, "-c", _SERVE, target, str(PORT)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline() == "ready\n"
        sizes = (str(STREAM_BYTES), str(ROUND_TRIPS))
        sent = subprocess.run(
            ["ip", "netns", "exec", namespaces[0], sys.executable, "-c", _SEND, target, str(PORT), *sizes],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
    finally:
        server.kill()
        server.wait()
    stream, *trips = (float(value) for value in sent.stdout.split())
    return STREAM_BYTES / stream / 2**20, trips


def _line(label: str, mib_s: float, trips: list[float]) -> None:
    trips = sorted(trips)
    p50, p99 = statistics.median(trips) * 1000, trips[int(len(trips) * 0.99) - 1] * 1000
    print(f"  {label:<44} {mib_s:9,.0f} MiB/s   round trip p50 {p50:6.3f} ms  p99 {p99:6.3f} ms")


def bench_overlay() -> None:
    print(f"Overlay on the wire: {STREAM_BYTES // 2**20} MiB streamed and {ROUND_TRIPS} round trips each way")
    missing = [program for program in ("ip", "nebula", "nebula-cert") if shutil.which(program) is None]
    if missing or os.geteuid() != 0 or not Path("/dev/net/tun").exists():
        print(f"  not measured: needs root, /dev/net/tun and {', '.join(missing) or 'nothing else'}")
        return
    work = Path(tempfile.mkdtemp(prefix="portal-bench-overlay-"))
    authority = ca.authority(Settings(data_dir=work / "data", mesh="nebula"))  # type: ignore[call-arg]
    nebulas: list[subprocess.Popen] = []
    try:
        with _namespaces() as namespaces:
            veth = _measure(namespaces, VETH[1])
            for index, name in enumerate(namespaces):
                home = work / name
                home.mkdir()
                key, pub = home / "host.key", home / "host.pub"
                subprocess.run(
                    [shutil.which("nebula-cert"), "keygen", "-out-key", key, "-out-pub", pub],  # type: ignore[list-item]
                    check=True,
                    capture_output=True,
                )
                (home / "ca.crt").write_text(authority.cert_pem)
                (home / "host.crt").write_text(
                    ca.sign(
                        authority,
                        public_key_pem=keys.public_key_pem(keys.parse_public_key(pub.read_text())),
                        name=f"bench-{index}",
                        ip_cidr=f"{OVERLAY[index]}/10",
                        groups=["bench"],
                        hours=1,
                    )
                )
                nebulas.append(
                    subprocess.Popen(
                        ["ip", "netns", "exec", name, "nebula", "-config", str(_node_config(home, index))],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            _wait_for_tunnel(namespaces[0])
            overlay = _measure(namespaces, OVERLAY[1])
            _line("plain veth path (baseline)", *veth)
            _line("Nebula overlay, same two namespaces", *overlay)
            ratio = overlay[0] / veth[0]
            latency = statistics.median(overlay[1]) / statistics.median(veth[1])
            print(f"  overlay/veth: throughput {ratio:.2f}x, round trip {latency:.1f}x")
    finally:
        for process in nebulas:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            process.kill()
        shutil.rmtree(work, ignore_errors=True)


_PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], 9), timeout=1).close()
except ConnectionRefusedError:
    pass  # an answer: the tunnel carries packets
except OSError:
    sys.exit(1)
"""


def _wait_for_tunnel(namespace: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        probe = ["ip", "netns", "exec", namespace, sys.executable, "-c", _PROBE, OVERLAY[1]]
        if subprocess.run(probe, capture_output=True, timeout=10).returncode == 0:
            return
    raise RuntimeError("the overlay between the two namespaces did not come up within 20 s")


if __name__ == "__main__":
    bench_overlay()
