"""Revoked overlay certificates, blocklisted at the lighthouses and on every node until they expire.

Every certificate the CA signs for a device or a customer's connection is recorded by its Nebula fingerprint
(``record``). It is revoked when its device is blocked or removed (``revoke_device``), and when the cluster
whose group it carries ends (``revoke_cluster``). ``blocklist`` is what Nebula's ``pki.blocklist`` gets:
``portal mesh`` re-reads it every 30 s and reloads its lighthouse, agents get it with each certificate, the
portal's node with each renewal.

``revoked_at`` is when the certificate is blocklisted from; it may lie a little ahead. A device's
certificate with an ended cluster's group is blocklisted only ``DEVICE_RENEWAL_GRACE`` after the end: the
agent renews when it stops its Ray node (``gpu_pool.agent.stop_ray``), and Nebula uses the new certificate
after its SIGHUP, so a device is never cut from the lighthouse for a certificate it had no chance to
replace. One that missed it anyway (offline at the end, or its stop slower than the grace) recovers on its
own: the lighthouse tears down its tunnel (``pki.disconnect_invalid``), and an agent that reaches no
lighthouse for a minute asks for a new certificate (``gpu_pool.mesh.Mesh``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import uuid
from datetime import datetime, timedelta

from sqlalchemy import Engine, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from portal.infra.db import session_scope
from portal.models import Cluster, MeshCertificate
from portal.models.base import utcnow

DEVICE_RENEWAL_GRACE = timedelta(minutes=2)
# A certificate stays on the blocklist this long past its recorded expiry: Nebula's not-after is a moment
# later than the one recorded, and a node's clock may run behind the portal's.
EXPIRY_MARGIN = timedelta(minutes=5)
_PEM = re.compile(r"-----BEGIN NEBULA CERTIFICATE-----\s*(.+?)\s*-----END NEBULA CERTIFICATE-----", re.S)
_CLUSTER_GROUP = re.compile(r"cluster-([0-9a-f-]{36})")


def fingerprint(certificate_pem: str) -> str:
    """Nebula's fingerprint of a certificate: the sha256 (hex) of its raw bytes, the PEM's body."""
    found = _PEM.search(certificate_pem)
    if found is None:
        raise ValueError("not a Nebula certificate (PEM)")
    try:
        raw = base64.b64decode("".join(found.group(1).split()), validate=True)
    except binascii.Error as error:
        raise ValueError(f"not a Nebula certificate: {error}") from None
    return hashlib.sha256(raw).hexdigest()


def cluster_of(groups: list[str]) -> uuid.UUID | None:
    """The cluster whose group is among ``groups``, if any."""
    for group in groups:
        if found := _CLUSTER_GROUP.fullmatch(group):
            return uuid.UUID(found.group(1))
    return None


def record(
    session: Session,
    certificate_pem: str,
    *,
    groups: list[str],
    issued_at: datetime,
    expires_at: datetime,
    device_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
) -> MeshCertificate:
    """Record a certificate just signed. One naming a cluster that ended meanwhile (its groups were read
    before the end, the record comes after ``revoke_cluster`` ran) is revoked as that would have."""
    cluster_id = cluster_of(groups)
    revoked_at = None
    if cluster_id is not None:
        # Under the cluster's lock (a no-op write, as ``clusters.lock_cluster`` takes it): the end either
        # committed before this reads, or runs after this commits and revokes the row itself.
        session.execute(
            update(Cluster)
            .where(col(Cluster.id) == cluster_id)
            .values(state=Cluster.state)
            .execution_options(synchronize_session=False)
        )
        ended_at = session.exec(select(Cluster.ended_at).where(Cluster.id == cluster_id)).first()
        if ended_at is not None:
            revoked_at = max(ended_at + (DEVICE_RENEWAL_GRACE if device_id else timedelta()), issued_at)
    printed = fingerprint(certificate_pem)
    # Signing is deterministic: the same key, name and groups within one second make the same certificate.
    known = session.exec(select(MeshCertificate).where(MeshCertificate.fingerprint == printed)).first()
    if known is not None:
        return known
    row = MeshCertificate(
        fingerprint=printed,
        device_id=device_id,
        user_id=user_id,
        cluster_id=cluster_id,
        groups=",".join(groups),
        issued_at=issued_at,
        expires_at=expires_at,
        revoked_at=revoked_at,
    )
    try:
        with session.begin_nested():  # the same certificate, signed for a concurrent request
            session.add(row)
    except IntegrityError:
        return session.exec(select(MeshCertificate).where(MeshCertificate.fingerprint == printed)).one()
    return row


def revoke_device(session: Session, device_id: uuid.UUID, now: datetime | None = None) -> int:
    """Revoke every unexpired certificate of a device (blocked or removed) from now; how many."""
    now = now or utcnow()
    return _revoke(
        session,
        now,
        col(MeshCertificate.device_id) == device_id,
        col(MeshCertificate.expires_at) > now - EXPIRY_MARGIN,
        or_(col(MeshCertificate.revoked_at).is_(None), col(MeshCertificate.revoked_at) > now),
    )


def revoke_cluster(session: Session, cluster_id: uuid.UUID, ended_at: datetime) -> int:
    """Revoke the unexpired certificates with an ending cluster's group, issued before its end: customers'
    connections at once, devices' after ``DEVICE_RENEWAL_GRACE`` (see the module's docstring); how many."""
    current = (
        col(MeshCertificate.cluster_id) == cluster_id,
        col(MeshCertificate.issued_at) <= ended_at,
        col(MeshCertificate.expires_at) > ended_at - EXPIRY_MARGIN,
        col(MeshCertificate.revoked_at).is_(None),
    )
    customers = _revoke(session, ended_at, col(MeshCertificate.device_id).is_(None), *current)
    devices = _revoke(
        session, ended_at + DEVICE_RENEWAL_GRACE, col(MeshCertificate.device_id).is_not(None), *current
    )
    return customers + devices


def _revoke(session: Session, revoked_at: datetime, *where: object) -> int:
    done = session.execute(
        update(MeshCertificate)
        .where(*where)  # type: ignore[arg-type]
        .values(revoked_at=revoked_at)
        .execution_options(synchronize_session=False)
    )
    return done.rowcount  # type: ignore[attr-defined,no-any-return]


def blocklist_of(session: Session, now: datetime) -> list[str]:
    """Fingerprints revoked by ``now`` and not yet expired, sorted (a stable config)."""
    return list(
        session.exec(
            select(MeshCertificate.fingerprint)
            .where(
                col(MeshCertificate.expires_at) > now - EXPIRY_MARGIN,
                col(MeshCertificate.revoked_at) <= now,
            )
            .order_by(col(MeshCertificate.fingerprint))
        ).all()
    )


def blocklist(engine: Engine, now: datetime | None = None) -> list[str]:
    """What Nebula's ``pki.blocklist`` holds now."""
    with session_scope(engine) as session:
        return blocklist_of(session, now or utcnow())
