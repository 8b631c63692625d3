"""A customer's own machine on their cluster's private network (``portal clusters connect``).

The owner of a running cluster sends a public key (the private key stays on their machine) and gets a
certificate for the cluster's group alone, at an overlay address of their own from the overlay's last
quarter (``addresses.connection_span``), kept for the cluster's life. Every node of the cluster admits its
group, so the customer reaches any port of any node (the Ray client on the head, a notebook they start);
nothing else on the overlay admits it. The certificate ends when the cluster's booked hours end (an
extension asks for a new one), and it names only that cluster: another cluster's nodes refuse it.
"""

from __future__ import annotations

import ipaddress
import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from portal.config import Settings
from portal.infra.db import session_scope
from portal.models import ClusterConnection, Device
from portal.models.base import utcnow
from portal.services.errors import Conflict, Unavailable
from portal.services.mesh import addresses, ca, keys, revocations
from portal.services.mesh.certificates import Issued, cluster_group, require_mesh
from portal.services.rentals import clusters, dashboard

CUSTOMER_GROUP = "customer"
MAX_TRIES = 32


@dataclass(frozen=True)
class Connection(Issued):
    """A certificate as a device's, and where the cluster's head is."""

    head_overlay_ip: str
    ray_client_address: str | None


def connect(
    engine: Engine, settings: Settings, owner_id: uuid.UUID, cluster_id: uuid.UUID, public_key: str
) -> Connection:
    """Sign the customer's key into a certificate for ``cluster_id``'s network; NotFound for anyone but
    its owner, 409 while it does not run."""
    require_mesh(settings)
    key_pem = keys.public_key_pem(keys.parse_public_key(public_key))
    with session_scope(engine) as session:
        cluster = clusters.get_cluster(session, owner_id, cluster_id)
        head = dashboard.head_overlay_ip(session, settings, cluster)
        if cluster.state not in dashboard.SERVED_STATES or head is None or cluster.expires_at is None:
            raise Conflict(
                f"Connect once the cluster runs; it is {cluster.state}.", code="cluster_not_running"
            )
        expires_at, client_address = cluster.expires_at.replace(microsecond=0), cluster.client_address
    left = expires_at - utcnow()
    if left < timedelta(minutes=1):
        raise Conflict("The cluster's booked time is about to end; extend it first.", code="cluster_ending")
    overlay_ip = _address(engine, settings, owner_id, cluster_id, expires_at)
    groups = [CUSTOMER_GROUP, cluster_group(cluster_id)]
    authority = ca.authority(settings)
    certificate = ca.sign(
        authority,
        public_key_pem=key_pem,
        name=f"customer-{owner_id}-{cluster_id}",
        ip_cidr=f"{overlay_ip}/{settings.overlay_network.prefixlen}",
        groups=groups,
        # Whole minutes, never past the cluster's end (nebula-cert counts from its own clock).
        hours=math.floor(left.total_seconds() / 60) / 60,
    )
    with session_scope(engine) as session:
        now = utcnow()
        revocations.record(
            session, certificate, groups=groups, issued_at=now, expires_at=expires_at, user_id=owner_id
        )
        blocklist = revocations.blocklist_of(session, now)
    return Connection(
        certificate=certificate,
        ca=authority.cert_pem,
        lighthouses=list(settings.lighthouses),
        overlay_ip=overlay_ip,
        overlay_cidr=settings.overlay_cidr,
        portal_overlay_ip=settings.portal_overlay_ip,
        groups=groups,
        head_overlay_ip=head,
        ray_client_address=client_address,
        expires_at=expires_at,
        blocklist=blocklist,
    )


def _address(
    engine: Engine, settings: Settings, owner_id: uuid.UUID, cluster_id: uuid.UUID, expires_at: datetime
) -> ipaddress.IPv4Address:
    """The customer's address on this cluster's network: the one it had, else a free one of the
    connections' quarter (the unique index refuses a second holder; a collision is retried). Each write is a
    transaction that writes first: on SQLite a read that then writes fails at once ("database is locked")
    when another connection wrote in between."""
    mine = (col(ClusterConnection.cluster_id) == cluster_id) & (col(ClusterConnection.user_id) == owner_id)
    for _ in range(MAX_TRIES):
        with session_scope(engine) as session:
            held = session.exec(select(ClusterConnection.overlay_ip).where(mine)).first()
        if held is not None:
            with session_scope(engine) as session:
                if addresses.usable(settings, held):
                    session.execute(update(ClusterConnection).where(mine).values(expires_at=expires_at))
                    return ipaddress.IPv4Address(held)
                session.execute(delete(ClusterConnection).where(mine))  # the overlay was reconfigured
        candidate = addresses.pick(settings, None, addresses.connection_span(settings))
        with session_scope(engine) as session:
            # Devices allocated before the connections' quarter existed may hold one of its addresses.
            if session.exec(select(Device.id).where(col(Device.overlay_ip) == str(candidate))).first():
                continue
        try:
            with session_scope(engine) as session:
                session.add(
                    ClusterConnection(
                        cluster_id=cluster_id,
                        user_id=owner_id,
                        overlay_ip=str(candidate),
                        expires_at=expires_at,
                    )
                )
        except IntegrityError:
            continue  # that address, or this customer's row, was taken a moment ago: read again
    raise Unavailable("No overlay address could be allocated; try again.", code="overlay_busy")
