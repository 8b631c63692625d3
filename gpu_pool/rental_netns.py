"""The network namespace a device's rental containers run in when the device is on the overlay.

Nebula runs on the host (its UDP socket needs the provider's internet), but its TUN interface, the device's
overlay address, is moved into a namespace of its own (``gp-<device>``) and the rental's containers join that
namespace (``podman run --network ns:/run/netns/gp-<device>``). So Ray in the container binds the overlay
address itself: the cluster's nodes on other machines, the portal's node and the customer (through
``portal clusters connect``) reach every Ray port directly over the overlay, and Nebula's firewall (the
cluster's group and the portal only) is the node's only door. Besides the TUN the namespace holds, when the
provider allows it (``egress``, ``gpu-pool worker --rental-egress internet``, the default), a veth to the host
through which the internet and only the internet is reached (``gpu_pool.rental_egress``: never the host, its
loopback services or the provider's networks); without it, no route out at all. A container cannot change
it (every capability dropped).

Nebula makes a new TUN whenever it starts (a restart for a new cluster group, a crash): ``adopt`` moves it in
again, with the addresses Nebula gave it. Needs root (as Nebula's TUN does) and iproute2's ``ip``.
"""

from __future__ import annotations

import ctypes
import json
import logging
import re
import shutil
import socket
import subprocess
import threading
from pathlib import Path

from gpu_pool import rental_egress

logger = logging.getLogger("gpu_pool.rental_netns")

NETNS_DIR = Path("/run/netns")
NAME = re.compile(r"^[a-zA-Z0-9_.-]{1,32}$")
IP_TIMEOUT_S = 10
CLONE_NEWNET = 0x40000000


class NamespaceError(Exception):
    """The namespace could not be made or the TUN not moved into it; the message says what failed."""


def name_for(device_id: str) -> str:
    return "gp-" + device_id.replace("-", "")[:12]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    ip = shutil.which("ip")
    if ip is None:
        raise NamespaceError("iproute2's ip is not installed (apt-get install iproute2)")
    try:
        done = subprocess.run([ip, *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise NamespaceError(f"ip {' '.join(args[:3])}: {error}") from None
    if check and done.returncode != 0:
        raise NamespaceError(f"ip {' '.join(args)} failed: {done.stderr.strip()[:300]}")
    return done


def _addresses(*namespace: str, device: str) -> list[tuple[str, int]]:
    """The IPv4 addresses (and prefix lengths) on ``device``, in the current namespace or ``-n NAME``'s."""
    done = _ip(*namespace, "-j", "-4", "addr", "show", "dev", device, check=False)
    if done.returncode != 0 or not done.stdout.strip():
        return []
    return [
        (info["local"], int(info["prefixlen"]))
        for link in json.loads(done.stdout)
        for info in link.get("addr_info", [])
        if info.get("family") == "inet"
    ]


class RentalNamespace:
    """``gp-<device>``: made on first use, given Nebula's TUN (and its way out, with ``egress``) by
    ``adopt``, removed by ``remove``."""

    def __init__(self, name: str, egress: bool = False) -> None:
        if not NAME.fullmatch(name):
            raise NamespaceError(f"{name!r} is not a namespace name")
        if egress and not rental_egress.NAMESPACE.fullmatch(name):
            raise NamespaceError(f"{name!r} cannot have a way out (gp- and 12 letters, digits or _)")
        self.name = name
        self.egress = egress

    @property
    def path(self) -> Path:
        """What the container engine joins (``--network ns:PATH``)."""
        return NETNS_DIR / self.name

    def exists(self) -> bool:
        return self.path.exists()

    def ensure(self) -> None:
        if not self.exists():
            _ip("netns", "add", self.name)
        _ip("-n", self.name, "link", "set", "lo", "up")

    def adopt(self, tun: str, mtu: int) -> str:
        """Move Nebula's TUN ``tun`` from this process's namespace into this one and give it back the
        address Nebula set (moving a link drops its addresses); its overlay address. A TUN already inside
        (nothing new from Nebula) is left as it is. The way out is made or refreshed (the host's networks,
        which it refuses, may have changed), or removed without ``egress``."""
        self.ensure()
        found = _addresses(device=tun)
        if not found:
            inside = _addresses("-n", self.name, device=tun)
            if not inside:
                raise NamespaceError(f"no interface {tun} with an address here nor in {self.name}")
            self._way_out()
            return inside[0][0]
        _ip("link", "set", tun, "netns", self.name)
        for address, prefix in found:
            _ip("-n", self.name, "addr", "replace", f"{address}/{prefix}", "dev", tun)
        _ip("-n", self.name, "link", "set", tun, "mtu", str(mtu), "up")
        logger.info("moved %s (%s) into the rentals' namespace %s", tun, found[0][0], self.name)
        self._way_out()
        return found[0][0]

    def _way_out(self) -> None:
        """The internet for the rentals, or nothing. A failure leaves them without a way out (the overlay
        works on): said, not raised."""
        try:
            if self.egress:
                rental_egress.open_egress(self.name)
            else:
                rental_egress.close_egress(self.name)  # a way out an earlier run of the agent made
        except rental_egress.EgressError as error:
            logger.error("rentals in %s have no way out to the internet: %s", self.name, error)

    def has_address(self, tun: str, address: str) -> bool:
        return any(found == address for found, _ in _addresses("-n", self.name, device=tun))

    def connects(self, host: str, port: int, timeout_s: float = 1.0) -> bool:
        """Whether a TCP connection to host:port opens from inside the namespace (the agent itself is not
        on the overlay once its TUN moved): tried from a thread of its own, which alone enters the namespace
        (setns moves the calling thread only) and ends after."""
        opened: list[bool] = []

        def probe() -> None:
            libc = ctypes.CDLL(None, use_errno=True)
            try:
                with self.path.open() as namespace:
                    if libc.setns(namespace.fileno(), CLONE_NEWNET) != 0:
                        return
                with socket.create_connection((host, port), timeout=timeout_s):
                    opened.append(True)
            except OSError:
                return

        thread = threading.Thread(target=probe, daemon=True, name="netns-probe")
        thread.start()
        thread.join(timeout_s + 1)
        return bool(opened)

    def remove(self) -> None:
        """Remove the way out (veth, rules) and the namespace (a TUN inside goes with it); nothing when they
        are not there."""
        try:
            rental_egress.close_egress(self.name)
        except rental_egress.EgressError as error:
            logger.error("the way out of %s was not removed: %s", self.name, error)
        if self.exists():
            _ip("netns", "delete", self.name, check=False)
