"""The agent on the overlay (Nebula): its own key pair, a certificate the portal signs, a config rendered from
it, and a supervised ``nebula`` process.

The mesh is the portal's choice: the agent asks for a certificate, and a 409 ``mesh_off`` means the portal
runs without one (every node on loopback, as on one host). The private key is made here by ``nebula-cert
keygen`` (mode 600) and never leaves the state directory; only the public key is sent.

A certificate carries the groups of the moment it was signed (``device``, and ``cluster-<id>`` while the
device serves that cluster), and the firewall is rendered from them: inbound TCP and UDP only from the
current cluster's group and from the portal's node, ICMP from anyone. So the agent renews at half a
certificate's life and whenever it starts or stops a Ray node, and reloads Nebula (SIGHUP) when the
certificate changed: Nebula re-reads the certificate and the firewall from the config.

Each answer carries the blocklist: fingerprints of certificates the portal revoked (a blocked or removed
device's, an ended cluster's), rendered into ``pki.blocklist`` so this node refuses them and tears down
tunnels that use them. The lighthouses refuse them as well; an agent whose own certificate was revoked
before it could replace it (it was offline when its cluster ended) reaches no lighthouse, so after
``LIGHTHOUSE_LOST_S`` without one it asks for a new certificate, whatever its age.

What the agent reports (``status``) comes from Nebula's own log (JSON lines): ``connected`` once a
handshake with a lighthouse completed, ``connecting`` before, ``down`` while Nebula is not running;
``relayed`` says whether a tunnel to a peer other than a lighthouse completed without a UDP address of its
own (through a relay), None until there is such a peer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from gpu_pool.client import PortalClient, PortalError, Rejected
from gpu_pool.rental_netns import NamespaceError, RentalNamespace

logger = logging.getLogger("gpu_pool.mesh")

RENEW_AT = 0.5  # of a certificate's life
RENEW_RETRY_S = 30.0
LIGHTHOUSE_LOST_S = 60.0  # without a lighthouse this long: renew (the certificate may have been revoked)
LOST_RENEW_EVERY_S = 600.0  # and again at most this often while none answers (a lighthouse outage)
WATCH_S = 5.0
RESTART_MAX_S = 30.0
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
MTU = 1300
CLUSTER_GROUP = re.compile(r"cluster-[0-9a-f-]{36}")
TUN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")


class MeshOff(Exception):
    """The portal runs without an overlay (409 ``mesh_off``)."""


class MeshError(Exception):
    """The overlay could not be joined (no nebula, a certificate refused, Nebula would not start)."""


@dataclass(frozen=True)
class Certificate:
    """The portal's answer to ``POST /worker/mesh/certificate``."""

    certificate: str
    ca: str
    lighthouses: list[dict[str, str]]  # overlay_ip, public_address
    overlay_ip: str
    overlay_cidr: str
    portal_overlay_ip: str
    groups: list[str]
    expires_at: datetime
    received_at: datetime
    blocklist: list[str] = field(default_factory=list)  # fingerprints of revoked certificates

    @classmethod
    def from_answer(cls, answer: dict[str, Any], received_at: datetime | None = None) -> Certificate:
        expires_at = datetime.fromisoformat(str(answer["expires_at"]).replace("Z", "+00:00"))
        return cls(
            certificate=answer["certificate"],
            ca=answer["ca"],
            lighthouses=[
                {"overlay_ip": str(lh["overlay_ip"]), "public_address": str(lh["public_address"])}
                for lh in answer["lighthouses"]
            ],
            overlay_ip=answer["overlay_ip"],
            overlay_cidr=answer["overlay_cidr"],
            portal_overlay_ip=answer["portal_overlay_ip"],
            groups=list(answer["groups"]),
            expires_at=expires_at if expires_at.tzinfo else expires_at.replace(tzinfo=UTC),
            received_at=received_at or datetime.now(UTC),
            blocklist=[str(fingerprint) for fingerprint in answer.get("blocklist", [])],
        )

    @property
    def cluster_group(self) -> str | None:
        """The group of the cluster the device serves now (only a well-formed one reaches the firewall)."""
        return next((group for group in self.groups if CLUSTER_GROUP.fullmatch(group)), None)

    @property
    def lighthouse_ips(self) -> list[str]:
        return [lighthouse["overlay_ip"] for lighthouse in self.lighthouses]

    def renew_at(self) -> datetime:
        """When to ask for the next one: half its life after it came."""
        return self.received_at + (self.expires_at - self.received_at) * RENEW_AT


def firewall(certificate: Certificate) -> dict[str, Any]:
    """Nebula's firewall for a device: anything out; in, ICMP from anyone, TCP and UDP only from the current
    cluster's group and from the portal's node."""
    peers: list[dict[str, str]] = [{"cidr": f"{certificate.portal_overlay_ip}/32"}]
    if certificate.cluster_group:
        peers.append({"group": certificate.cluster_group})
    inbound: list[dict[str, Any]] = [{"port": "any", "proto": "icmp", "host": "any"}]
    inbound += [{"port": "any", "proto": proto, **peer} for peer in peers for proto in ("tcp", "udp")]
    return {
        "conntrack": {"tcp_timeout": "12m", "udp_timeout": "3m", "default_timeout": "10m"},
        "outbound": [{"port": "any", "proto": "any", "host": "any"}],
        "inbound": inbound,
    }


def config(
    certificate: Certificate,
    *,
    ca_path: Path,
    cert_path: Path,
    key_path: Path,
    tun_device: str,
    listen_port: int = 0,
) -> dict[str, Any]:
    """Nebula's config for a device (not a lighthouse): the lighthouses found at their public addresses,
    used as relays; hole punching on; the firewall of ``firewall``."""
    lighthouses = certificate.lighthouse_ips
    return {
        "pki": {
            "ca": str(ca_path),
            "cert": str(cert_path),
            "key": str(key_path),
            "blocklist": certificate.blocklist,
            # Tunnels whose peer's certificate is revoked or expired are torn down, not kept to the end.
            "disconnect_invalid": True,
        },
        "static_host_map": {
            lighthouse["overlay_ip"]: [lighthouse["public_address"]] for lighthouse in certificate.lighthouses
        },
        "lighthouse": {"am_lighthouse": False, "interval": 60, "hosts": lighthouses},
        "listen": {"host": "0.0.0.0", "port": listen_port},  # 0: any free port (several agents, one host)
        # Punch back at once: Nebula 1.6 asks a relay for a path at a handshake's first attempt and keeps a
        # relayed tunnel relayed, so with the default 1 s delay every pair behind NATs ends up relayed
        # (tests/test_mesh_namespaces.py). A peer relays to this node only through relays this node names.
        "punchy": {"punch": True, "respond": True, "delay": "0s"},
        "relay": {"am_relay": False, "use_relays": True, "relays": lighthouses},
        "tun": {"disabled": False, "dev": tun_device, "mtu": MTU, "drop_local_broadcast": True},
        "logging": {"level": "info", "format": "json"},
        "firewall": firewall(certificate),
    }


def tun_name(device_id: str) -> str:
    """A TUN device name of this agent's own (at most 15 characters), so that agents can share a host."""
    return "gp" + device_id.replace("-", "")[:12]


def program(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise MeshError(f"{name} is not installed (Debian package nebula)")
    return found


def keygen(directory: Path) -> tuple[Path, str]:
    """This agent's key pair in ``directory`` (made once; the private key mode 600); the key's path and the
    public key's PEM."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key, pub = directory / "host.key", directory / "host.pub"
    if not (key.exists() and pub.exists()):
        for path in (key, pub):
            path.unlink(missing_ok=True)
        done = subprocess.run(
            [program("nebula-cert"), "keygen", "-out-key", str(key), "-out-pub", str(pub)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if done.returncode != 0:
            raise MeshError(f"nebula-cert keygen failed: {done.stderr.strip()[:300]}")
    os.chmod(key, 0o600)
    return key, pub.read_text()


class Tunnels:
    """What Nebula's log says about its tunnels: the peers whose handshake completed, and whether each is
    relayed."""

    def __init__(self, lighthouses: list[str]) -> None:
        self.lighthouses = set(lighthouses)
        self.peers: dict[str, bool] = {}  # overlay IP -> relayed
        self.interface_up = threading.Event()

    def feed(self, line: str) -> None:
        try:
            entry = json.loads(line)
        except ValueError:
            return
        if not isinstance(entry, dict):
            return
        message, peer = entry.get("msg"), entry.get("vpnIp")
        if message == "Nebula interface is active":
            self.interface_up.set()
        elif message in ("Handshake message received", "Handshake message sent") and peer:
            # Stage 2 names the peer's certificate once the handshake completed (initiator: received;
            # responder: sent).
            if (entry.get("handshake") or {}).get("stage") == 2 and entry.get("certName"):
                self.peers[peer] = not entry.get("udpAddr")
        elif str(message).startswith("Close tunnel received") and peer:
            self.peers.pop(peer, None)
        elif message == "Tunnel status" and (entry.get("tunnelCheck") or {}).get("state") == "dead":
            self.peers.pop(str(peer), None)

    def state(self) -> str:
        return "connected" if self.lighthouses & set(self.peers) else "connecting"

    def relayed(self) -> bool | None:
        others = [relayed for peer, relayed in self.peers.items() if peer not in self.lighthouses]
        return any(others) if others else None


class Mesh:
    """This agent's Nebula: started by ``start``, restarted when it dies, renewed in the background,
    stopped by ``stop``."""

    def __init__(
        self,
        client: PortalClient,
        state_dir: Path,
        *,
        tun_device: str,
        listen_port: int = 0,
        namespace: RentalNamespace | None = None,
    ) -> None:
        if not TUN_NAME.fullmatch(tun_device):
            raise MeshError(f"{tun_device!r} is not a TUN device name (at most 15 letters, digits, _.-)")
        self.client, self.state_dir = client, state_dir
        self.tun_device, self.listen_port = tun_device, listen_port
        # With containers: the TUN lives in the rentals' namespace, not the agent's (gpu_pool.rental_netns).
        self.namespace = namespace
        self.certificate: Certificate | None = None
        self.process: subprocess.Popen[str] | None = None
        self.tunnels = Tunnels([])
        self.restarts = 0
        self.lighthouse_lost_s = LIGHTHOUSE_LOST_S
        self.stopping = threading.Event()
        self._restarting = threading.Event()  # set while ``_restart`` replaces the process
        self._restart_lock = threading.Lock()  # one restart at a time (renewals race on a new group)
        self._next_adopt_at = 0.0  # monotonic: when a TUN found outside the namespace is next moved in
        self._lock = threading.Lock()  # the certificate, the process and the tunnels
        self._threads: list[threading.Thread] = []

    @property
    def overlay_ip(self) -> str | None:
        return self.certificate.overlay_ip if self.certificate else None

    @property
    def config_path(self) -> Path:
        return self.state_dir / "nebula.yml"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "nebula.log"

    # --- the certificate ---------------------------------------------------------------------------

    def request(self) -> Certificate:
        """A certificate for this agent's key now; MeshOff when the portal runs without the mesh."""
        _, public_key = keygen(self.state_dir)
        try:
            answer = self.client.mesh_certificate(public_key)
        except Rejected as error:
            if error.code == "mesh_off":
                raise MeshOff(str(error)) from None
            raise MeshError(f"the portal refused a certificate: {error}") from None
        return Certificate.from_answer(answer)

    def install(self, certificate: Certificate) -> bool:
        """Write the certificate and the config; reload a running Nebula when they changed. True when
        they did."""
        ca_path, cert_path = self.state_dir / "ca.crt", self.state_dir / "host.crt"
        rendered = yaml.safe_dump(
            config(
                certificate,
                ca_path=ca_path,
                cert_path=cert_path,
                key_path=self.state_dir / "host.key",
                tun_device=self.tun_device,
                listen_port=self.listen_port,
            ),
            sort_keys=False,
        )
        with self._lock:
            previous = self.certificate
            self.certificate = certificate
            self.tunnels.lighthouses = set(certificate.lighthouse_ips)
            changed = previous is None or (
                previous.certificate != certificate.certificate
                or previous.ca != certificate.ca
                or previous.blocklist != certificate.blocklist
            )
            regrouped = previous is not None and previous.groups != certificate.groups
            running = self.process is not None and self.process.poll() is None
            if changed:
                _write(ca_path, certificate.ca)
                _write(cert_path, certificate.certificate)
                _write(self.config_path, rendered)
                if running and not regrouped:
                    self.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
                    logger.info("nebula reloaded: groups %s", ",".join(certificate.groups))
        if changed and running and regrouped:
            self._restart()
            logger.info("nebula restarted: groups %s", ",".join(certificate.groups))
        return changed

    def _restart(self) -> None:
        """Nebula 1.6 keeps the certificates a tunnel was made with for the tunnel's life (a SIGHUP reaches
        new tunnels only), so the firewall of a peer would judge this node by its old groups: a change of
        groups restarts Nebula instead, and every tunnel is made again with the new certificates (a peer's
        stale tunnel is answered with recv_error, and it handshakes again)."""
        with self._restart_lock:
            with self._lock:
                process = self.process
                self._restarting.set()
            try:
                _end(process)
                self._spawn(program("nebula"))
                if not self._bring_up():
                    logger.warning(
                        "nebula did not bring up %s again: %s", self.tun_device, _tail(self.log_path)
                    )
            finally:
                self._restarting.clear()

    def _bring_up(self, address: bool = True) -> bool:
        """Wait for Nebula's interface, move it into the rentals' namespace when there is one, and say
        whether the overlay address is ready for a Ray node (``address``: waited for too)."""
        if not self.tunnels.interface_up.wait(START_TIMEOUT_S):
            return False
        if self.namespace is not None:
            try:
                self.namespace.adopt(self.tun_device, MTU)
            except NamespaceError as error:
                logger.error("the overlay interface stays outside the rentals' namespace: %s", error)
                return False
        return self._address_ready() if address else True

    def _address_ready(self) -> bool:
        """Whether the overlay address can be bound (the Ray node binds it next), waiting a little: the old
        interface's going and the new one's address can lag Nebula's own word that it is active."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.overlay_ip and time.monotonic() < deadline:
            if self._address_here(self.overlay_ip):
                return True
            time.sleep(0.1)
        return self.overlay_ip is None

    def _address_here(self, address: str) -> bool:
        if self.namespace is not None:
            return self.namespace.has_address(self.tun_device, address)
        with socket.socket() as probe:
            try:
                probe.bind((address, 0))
                return True
            except OSError:
                return False

    def renew(self) -> bool:
        """Ask for a certificate now (a cluster joined or left, or half its life passed) and reload Nebula
        if it changed. False when the portal could not be asked; the current one stays."""
        try:
            self.install(self.request())
        except (PortalError, MeshError, MeshOff) as error:
            logger.warning("overlay certificate not renewed: %s", error)
            return False
        return True

    # --- the process -------------------------------------------------------------------------------

    def start(self) -> bool:
        """Join the overlay: a certificate, the config, Nebula running with its interface up. False when
        the portal runs without the mesh; MeshError when it cannot be joined."""
        nebula = program("nebula")
        try:
            certificate = self.request()
        except MeshOff:
            return False
        self.install(certificate)
        self._spawn(nebula)
        if not self._bring_up(address=False):
            self.stop()
            raise MeshError(f"nebula did not bring up {self.tun_device}: {_tail(self.log_path)}")
        logger.info("on the overlay as %s (%s)", certificate.overlay_ip, self.tun_device)
        self._threads = [
            threading.Thread(target=self._supervise, args=(nebula,), daemon=True, name="nebula-supervisor"),
            threading.Thread(target=self._renew_loop, daemon=True, name="mesh-renewal"),
        ]
        for thread in self._threads:
            thread.start()
        return True

    def _spawn(self, nebula: str) -> None:
        with self._lock:
            self.tunnels = Tunnels(self.certificate.lighthouse_ips if self.certificate else [])
            log = self.log_path.open("w")
            process = subprocess.Popen(
                [nebula, "-config", str(self.config_path)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            self.process = process
            tunnels = self.tunnels
        reader = threading.Thread(target=_read_log, args=(process, tunnels, log), daemon=True)
        reader.start()

    def _supervise(self, nebula: str) -> None:
        """Restart Nebula whenever it exits, with a growing pause (1 s, doubling, at most 30 s)."""
        pause = 1.0
        while not self.stopping.is_set():
            process = self.process
            assert process is not None
            started = time.monotonic()
            while process.poll() is None and not self.stopping.wait(0.5):
                self._keep_in_namespace()
            if self.stopping.is_set():
                return
            if self._restarting.is_set() or process is not self.process:
                while self._restarting.is_set() and not self.stopping.wait(0.1):
                    pass
                continue  # stopped on purpose and started again (``_restart``)
            logger.warning("nebula exited (%s): %s; restarting", process.returncode, _tail(self.log_path))
            pause = 1.0 if time.monotonic() - started > 60 else min(pause * 2, RESTART_MAX_S)
            if self.stopping.wait(pause):
                return
            self.restarts += 1
            self._spawn(nebula)
            if self.namespace is not None and not self._bring_up(address=False):
                logger.warning("nebula did not bring up %s again: %s", self.tun_device, _tail(self.log_path))

    def _keep_in_namespace(self) -> None:
        """Move the TUN in again if it is still in the agent's namespace: a move that failed (a restart
        under load, an ``ip`` that timed out) would otherwise leave the rentals off the overlay until the
        next restart. Tried every ``WATCH_S`` at most."""
        if self.namespace is None or self._restarting.is_set() or not self.tunnels.interface_up.is_set():
            return
        if time.monotonic() < self._next_adopt_at:
            return
        try:
            socket.if_nametoindex(self.tun_device)  # in this thread's namespace: the agent's
        except OSError:
            return  # moved in, as it should be
        self._next_adopt_at = time.monotonic() + WATCH_S
        try:
            self.namespace.adopt(self.tun_device, MTU)
            logger.warning("%s was still outside the rentals' namespace: moved in", self.tun_device)
        except NamespaceError as error:
            logger.error("the overlay interface stays outside the rentals' namespace: %s", error)

    def _renew_loop(self) -> None:
        lost_since: float | None = None  # monotonic: since when no lighthouse answers
        lost_renewed: float | None = None
        while not self.stopping.is_set():
            certificate = self.certificate
            assert certificate is not None
            wait_s = (certificate.renew_at() - datetime.now(UTC)).total_seconds()
            if wait_s > 0:
                if self.stopping.wait(min(wait_s, WATCH_S)):
                    return
                now = time.monotonic()
                if not certificate.lighthouses or self.status()["state"] == "connected":
                    lost_since = lost_renewed = None
                    continue
                lost_since = lost_since or now
                if now - lost_since < self.lighthouse_lost_s or (
                    lost_renewed is not None and now - lost_renewed < LOST_RENEW_EVERY_S
                ):
                    continue
                # A revoked certificate is refused by the lighthouses: a new one gets this node back.
                logger.warning("no lighthouse for %.0f s: renewing the overlay certificate", now - lost_since)
                lost_renewed = now
            if not self.renew():
                self.stopping.wait(RENEW_RETRY_S)

    def status(self) -> dict[str, Any]:
        """For heartbeats: ``{state, relayed}``."""
        with self._lock:
            running = self.process is not None and self.process.poll() is None
            if not running:
                return {"state": "down", "relayed": None}
            return {"state": self.tunnels.state(), "relayed": self.tunnels.relayed()}

    def stop(self) -> None:
        """Stop Nebula (its interface goes with it) and the threads that watch it."""
        self.stopping.set()
        with self._lock:
            process = self.process
        _end(process)
        for thread in self._threads:
            thread.join(timeout=STOP_TIMEOUT_S)
        if self.namespace is not None:
            self.namespace.remove()


def _end(process: subprocess.Popen[str] | None) -> None:
    """Stop a Nebula process: SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _read_log(process: subprocess.Popen[str], tunnels: Tunnels, log: Any) -> None:
    with log:
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            log.flush()
            tunnels.feed(line)


def _write(path: Path, text: str) -> None:
    """Replace ``path`` at once, so Nebula never reads half a file."""
    staging = path.with_name(path.name + ".new")
    staging.write_text(text)
    os.replace(staging, path)


def _tail(path: Path, lines: int = 5) -> str:
    with contextlib.suppress(OSError):
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])[-1500:]
    return "(no log)"


# --- gpu-pool doctor --------------------------------------------------------------------------------------

CAP_NET_ADMIN = 12


def tun_usable() -> tuple[bool, str]:
    """Whether Nebula can make its interface here: /dev/net/tun opens and the agent holds CAP_NET_ADMIN."""
    try:
        os.close(os.open("/dev/net/tun", os.O_RDWR))
    except OSError as error:
        return False, f"/dev/net/tun cannot be opened ({error.strerror})"
    try:
        status = Path("/proc/self/status").read_text()
        effective = int(re.search(r"^CapEff:\s*([0-9a-f]+)", status, re.MULTILINE)[1], 16)  # type: ignore[index]
    except (OSError, TypeError):
        effective = 0
    if not effective & (1 << CAP_NET_ADMIN):
        return False, "/dev/net/tun opens, but without CAP_NET_ADMIN Nebula cannot make its interface"
    return True, "/dev/net/tun usable (CAP_NET_ADMIN held)"


def ping(address: str, timeout_s: float = 3.0) -> float | None:
    """One ICMP echo to ``address``: the round trip in ms, or None without an answer (or without the right to
    send one: unprivileged ping sockets, else raw ones as root)."""
    sequence = int(time.monotonic() * 1000) & 0xFFFF
    for kind in (socket.SOCK_DGRAM, socket.SOCK_RAW):
        try:
            sock = socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP)
        except OSError:
            continue
        with sock:
            sock.settimeout(timeout_s)
            ident = os.getpid() & 0xFFFF
            header = struct.pack("!BBHHH", 8, 0, 0, ident, sequence)
            payload = b"gpu-pool doctor"
            packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, sequence) + payload
            started = time.monotonic()
            try:
                sock.sendto(packet, (address, 0))
                while time.monotonic() - started < timeout_s:
                    data, (source, _) = sock.recvfrom(2048)
                    if kind == socket.SOCK_RAW:
                        data = data[(data[0] & 0x0F) * 4 :]  # after the IP header
                    if source == address and data[:1] == b"\x00" and data[6:8] == packet[6:8]:
                        return (time.monotonic() - started) * 1000
            except OSError:
                return None
    return None


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def diagnose(state_dir: Path) -> list[tuple[bool, str, str]]:
    """What ``gpu-pool doctor`` says about the overlay: nebula installed, /dev/net/tun, and for each agent
    of this state dir that joined it, its lighthouses answering over the overlay and whether its tunnels
    were punched or relayed (from its Nebula's log)."""
    found = [shutil.which("nebula"), shutil.which("nebula-cert")]
    checks = [
        (
            None not in found,
            f"Nebula: {found[0] or 'nebula not found'}, {found[1] or 'nebula-cert not found'}",
            "install Debian's nebula package (apt-get install nebula) for portals that run an overlay",
        )
    ]
    usable, detail = tun_usable()
    checks.append(
        (usable, f"TUN: {detail}", "run as root, or docker run --cap-add NET_ADMIN --device /dev/net/tun")
    )
    for config_path in sorted(state_dir.glob("mesh-*/nebula.yml")):
        try:
            settings = yaml.safe_load(config_path.read_text())
            lighthouses = list(settings["lighthouse"]["hosts"])
            device = settings["tun"]["dev"]
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            checks.append((False, f"overlay: {config_path} is not this agent's config", "restart the agent"))
            continue
        tunnels = Tunnels(lighthouses)
        with contextlib.suppress(OSError):
            for line in (config_path.parent / "nebula.log").read_text(errors="replace").splitlines():
                tunnels.feed(line)
        for lighthouse in lighthouses:
            answered = ping(lighthouse)
            checks.append(
                (
                    answered is not None,
                    f"overlay ({device}): lighthouse {lighthouse} "
                    + (f"answered in {answered:.1f} ms" if answered is not None else "did not answer"),
                    "is the agent running? the lighthouse's UDP port must be open to the internet",
                )
            )
        relayed = tunnels.relayed()
        way = {None: "no tunnel to a peer yet", True: "relayed", False: "hole-punched (direct)"}[relayed]
        checks.append((True, f"overlay ({device}): {tunnels.state()}; peers' tunnels: {way}", ""))
    return checks
