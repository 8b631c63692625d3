"""Where the portal may call a device: only at an address the portal assigned (its overlay address) or
validated (the address it registered from), never at a host an agent names.

An agent reports where its Ray head's dashboard and GCS listen and where it serves ``/metrics``; the portal
(and Prometheus, and the cluster's other agents) then connect there. Each reported address is accepted only
when its host is an IP literal equal to the device's registered address (no DNS names: a name can be
re-pointed after the check), its port is unprivileged, and, on loopback, it is none of the portal's own
services. Loopback is allowed only in development (one machine); in production a device's address must
be routable and not link-local (cloud metadata lives there). With the overlay on (``PORTAL_MESH=nebula``)
the one host allowed is the overlay address the portal allocated to the device: Ray binds there, and the
registration's peer address (a NAT's, most often) is never called.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

import httpx

from portal.config import Environment, MeshKind, Settings
from portal.models import Device

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
LOWEST_PORT = 1024


@dataclass(frozen=True)
class Refused:
    """Why a reported address is not one the portal calls."""

    reason: str


def parse_ip(text: str | None) -> IPAddress | None:
    if not text:
        return None
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def registered_address(peer: str | None, settings: Settings) -> str | None:
    """The address to record for an agent registering from ``peer``; None when the portal may not call it."""
    ip = parse_ip(peer)
    if ip is None or _refused_host(ip, settings) is not None:
        return None
    return ip.compressed


def _refused_host(ip: IPAddress, settings: Settings) -> str | None:
    if ip.is_unspecified or ip.is_multicast or ip.is_link_local or ip.is_reserved:
        return f"{ip} is not an address a device can serve on"
    if ip.is_loopback and settings.environment == Environment.PRODUCTION:
        return f"{ip} is loopback: a production portal calls devices only at routable addresses"
    return None


def own_ports(settings: Settings) -> set[int]:
    """The ports of the portal's own services on this host, which no device may name on loopback."""
    ports = {settings.port}
    for url in (settings.database_url, settings.redis_url, settings.broker_url, settings.prometheus_url):
        if url:
            try:
                port = httpx.URL(url.replace("+psycopg", "")).port
            except httpx.InvalidURL:
                continue
            if port:
                ports.add(port)
    ports |= {5432, 6379, 5672, 9090}  # the defaults, when a URL names none
    return ports


def allowed_host(device: Device, settings: Settings) -> tuple[str | None, str]:
    """The one host the portal calls the device at, and what it is: the overlay address the portal assigned
    when the overlay is on, else the address the device registered from."""
    if settings.mesh is MeshKind.NEBULA:
        return device.overlay_ip, "overlay address"
    return device.address, "registered address"


def check(device: Device, host: str, port: int | None, settings: Settings) -> str | Refused:
    """``host:port`` in canonical form when the portal may call it for ``device``, else why not."""
    ip = parse_ip(host)
    if ip is None:
        return Refused(f"the host {host[:64]!r} is not an IP address")
    refused = _refused_host(ip, settings)
    if refused:
        return Refused(refused)
    allowed, which = allowed_host(device, settings)
    if allowed is None or parse_ip(allowed) != ip:
        return Refused(f"{ip} is not the device's {which} ({allowed or 'none'})")
    if port is None or not LOWEST_PORT <= port <= 65535:
        return Refused(f"port {port} is outside {LOWEST_PORT}-65535")
    if ip.is_loopback and port in own_ports(settings):
        return Refused(f"port {port} is one of the portal's own services")
    return f"[{ip.compressed}]:{port}" if ip.version == 6 else f"{ip.compressed}:{port}"


def checked_url(
    device: Device, url: str, settings: Settings, *, schemes: tuple[str, ...], path: str = ""
) -> str | Refused:
    """A reported URL as ``scheme://host:port`` plus ``path`` (the one path it may have), or why the portal
    will not call it."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        return Refused("not a URL")
    if parsed.scheme not in schemes:
        return Refused(f"the scheme must be {' or '.join(schemes)}")
    if parsed.userinfo or parsed.query or parsed.fragment or parsed.path not in ("", "/", path or "/"):
        return Refused(f"only the path {path or '/'} is allowed, with no credentials, query or fragment")
    hostport = check(device, parsed.host, parsed.port, settings)
    if isinstance(hostport, Refused):
        return hostport
    return f"{parsed.scheme}://{hostport}{path}"


def checked_hostport(device: Device, address: str, settings: Settings) -> str | Refused:
    """A reported ``host:port`` (a Ray GCS address), or why it is refused."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return Refused("not host:port")
    return check(device, host, int(port), settings)
