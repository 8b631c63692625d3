"""Devices' overlay certificates: signed for the public key an agent sends, with the device's own overlay
address and the groups that say what it may reach.

Groups are ``device`` and, while the device serves a cluster (a node of it that is assigned, starting or
joined), ``cluster-<id>``: Nebula's firewall on each node admits Ray traffic from its cluster's group only.
A certificate carries the groups of the moment it is signed; the agent renews before it expires, and the
next certificate after a cluster ends no longer names it. Each one is recorded (``revocations``), and the
answer carries the blocklist of revoked ones, which the agent's Nebula refuses.
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from portal.config import Lighthouse, MeshKind, Settings
from portal.infra.db import session_scope
from portal.models import ClusterNode, Device, DeviceState, MeshState
from portal.models.base import utcnow
from portal.services.errors import Conflict
from portal.services.mesh import addresses, ca, keys, revocations
from portal.services.rentals.clusters import ACTIVE_NODE_STATES

DEVICE_GROUP = "device"


@dataclass(frozen=True)
class Issued:
    certificate: str
    ca: str
    lighthouses: list[Lighthouse]
    overlay_ip: ipaddress.IPv4Address
    overlay_cidr: str
    portal_overlay_ip: ipaddress.IPv4Address
    groups: list[str]
    expires_at: datetime
    blocklist: list[str]


@dataclass(frozen=True)
class MeshStatus:
    state: str  # off (no overlay), none, certified, connecting, connected, down or expired
    relayed: bool | None


def require_mesh(settings: Settings) -> None:
    if settings.mesh is not MeshKind.NEBULA:
        raise Conflict(
            "The portal runs without an overlay network (PORTAL_MESH is not nebula): every node is on "
            "loopback, and there is no certificate to sign.",
            code="mesh_off",
        )


def cluster_group(cluster_id: uuid.UUID) -> str:
    return f"cluster-{cluster_id}"


def groups_of(session: Session, device_id: uuid.UUID) -> list[str]:
    """``device``, and the group of the cluster the device serves now, if any."""
    serving = session.exec(
        select(ClusterNode.cluster_id)
        .where(ClusterNode.device_id == device_id, col(ClusterNode.state).in_(ACTIVE_NODE_STATES))
        .order_by(col(ClusterNode.created_at).desc())
        .limit(1)
    ).first()
    return [DEVICE_GROUP] if serving is None else [DEVICE_GROUP, cluster_group(serving)]


def issue(engine: Engine, settings: Settings, device_id: uuid.UUID, public_key: str) -> Issued:
    """Sign the agent's public key into a certificate of ``PORTAL_MESH_CERT_HOURS`` for its device."""
    require_mesh(settings)
    key_pem = keys.public_key_pem(keys.parse_public_key(public_key))
    authority = ca.authority(settings)
    with session_scope(engine) as session:
        device = session.get_one(Device, device_id)
        if device.state == DeviceState.BLOCKED:
            raise Conflict("The device is blocked; it gets no overlay certificate.", code="device_blocked")
        held, groups = device.overlay_ip, groups_of(session, device_id)
    if addresses.usable(settings, held):
        overlay_ip = ipaddress.IPv4Address(held)
    else:
        overlay_ip = addresses.assign(engine, settings, device_id)
    hours = settings.mesh_cert_hours
    # nebula-cert counts the lifetime from its own clock, a moment later: this is never after it.
    issued_at = utcnow()
    expires_at = issued_at.replace(microsecond=0) + timedelta(hours=hours)
    certificate = ca.sign(
        authority,
        public_key_pem=key_pem,
        name=f"device-{device_id}",
        ip_cidr=f"{overlay_ip}/{settings.overlay_network.prefixlen}",
        groups=groups,
        hours=hours,
    )
    with session_scope(engine) as session:
        session.execute(
            update(Device)
            .where(col(Device.id) == device_id)
            .values(mesh_state=MeshState.CERTIFIED, mesh_certificate_expires_at=expires_at)
        )
        revocations.record(
            session,
            certificate,
            groups=groups,
            issued_at=issued_at,
            expires_at=expires_at,
            device_id=device_id,
        )
        blocklist = revocations.blocklist_of(session, issued_at)
    return Issued(
        certificate=certificate,
        ca=authority.cert_pem,
        lighthouses=list(settings.lighthouses),
        overlay_ip=overlay_ip,
        overlay_cidr=settings.overlay_cidr,
        portal_overlay_ip=settings.portal_overlay_ip,
        groups=groups,
        expires_at=expires_at,
        blocklist=blocklist,
    )


def status(device: Device, settings: Settings, now: datetime | None = None) -> MeshStatus:
    """Where the device stands on the overlay, as its owner sees it."""
    if settings.mesh is not MeshKind.NEBULA:
        return MeshStatus("off", None)
    state = device.mesh_state
    expires_at = device.mesh_certificate_expires_at
    if state != MeshState.NONE and expires_at is not None and expires_at <= (now or datetime.now(UTC)):
        state = "expired"
    return MeshStatus(state, device.mesh_relayed)
