"""Where a cluster's Ray head will listen, chosen by the portal before the head starts, so that its workers
are asked to join at the same moment as the head is asked to start (a worker waits until the head's GCS
answers) instead of after the head has joined.

The host is the one the portal calls the head's device at (its overlay address with the mesh on, else its
registered address); the GCS port comes from ``PORTAL_RAY_GCS_PORTS``, never one of another active cluster's
heads on that host nor, on loopback, one of the portal's own services. The port is drawn at random among
the free ones: two deploys allocating at once (each under its own cluster's lock) almost never pick the same
one, and when they do, or anything else holds the port, the head fails to start and is replaced.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection

from sqlmodel import Session, col, select

from portal.config import Settings
from portal.models import Cluster, ClusterState, Device
from portal.services.providers import node_addresses

# Clusters whose head may hold its port: from the deploy until its nodes are stopped.
HOLDING_STATES = (
    ClusterState.PENDING,
    ClusterState.PROVISIONING,
    ClusterState.RUNNING,
    ClusterState.DEGRADED,
    ClusterState.TERMINATING,
)


def split(address: str) -> tuple[node_addresses.IPAddress | None, int | None]:
    """The IP and port of a ``host:port`` (``[v6]:port``) the portal wrote; (None, None) if it is not one."""
    host, _, port = address.rpartition(":")
    return node_addresses.parse_ip(host), int(port) if port.isdigit() else None


def taken_ports(session: Session, host: node_addresses.IPAddress) -> set[int]:
    """The GCS ports of active clusters' heads on ``host``."""
    addresses = session.exec(
        select(Cluster.ray_address).where(
            col(Cluster.state).in_(HOLDING_STATES), col(Cluster.ray_address).is_not(None)
        )
    ).all()
    taken = set()
    for address in addresses:
        ip, port = split(address or "")
        if ip == host and port is not None:
            taken.add(port)
    return taken


def allocate(session: Session, settings: Settings, device: Device, avoid: Collection[str] = ()) -> str | None:
    """``host:port`` for a new head on ``device`` (canonical, as ``node_addresses.check`` writes it), none of
    the addresses in ``avoid`` either; None when the device has no host the portal may call, or the range
    is full (the head then picks its own port and workers wait until it has joined)."""
    host, _ = node_addresses.allowed_host(device, settings)
    ip = node_addresses.parse_ip(host)
    if ip is None:
        return None
    taken = taken_ports(session, ip) | {port for ip_, port in map(split, avoid) if ip_ == ip and port}
    if ip.is_loopback:
        taken |= node_addresses.own_ports(settings)
    free = [port for port in settings.ray_gcs_port_range if port not in taken]
    if not free:
        return None
    checked = node_addresses.check(device, ip.compressed, secrets.choice(free), settings)
    return None if isinstance(checked, node_addresses.Refused) else checked
