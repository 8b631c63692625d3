"""Customers' clusters: deploy (validate, place, hold escrow), read, extend, ask to terminate.

What happens after the deploy request (Ray nodes starting, replacements, the end) is in
``provisioning``; this module answers the customer at once and leaves the slow work to the actors.
"""

from __future__ import annotations

import functools
import re
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, func, select

from portal.config import Settings
from portal.infra.metrics import PLACEMENTS
from portal.models import (
    Cluster,
    ClusterEvent,
    ClusterNode,
    ClusterState,
    ConnectivityTier,
    Device,
    NodeRole,
    NodeState,
)
from portal.security.principal import RequestOrigin
from portal.services import audit, names, state_machines
from portal.services.display import count, words
from portal.services.errors import Conflict, InvalidInput, NotFound, Unavailable
from portal.services.followups import FollowUps
from portal.services.money import escrow, metering
from portal.services.rentals import market, placement

PURPOSES = ("general", "train", "inference")
MAX_DURATION_HOURS = 24 * 30
ENDED = (ClusterState.TERMINATED, ClusterState.FAILED, ClusterState.EXPIRED)
ACTIVE_NODE_STATES = (NodeState.ASSIGNED, NodeState.STARTING, NodeState.JOINED)
_COUNTRY = re.compile(r"^[A-Z]{2}$")
# How long a deploy waits for its turn (``_deploy_slots``) before "busy, retry": well inside a client's
# request timeout.
DEPLOY_TURN_WAIT_S = 20.0


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    gpu_model: str
    gpu_count: int
    duration_hours: int
    type: str = "ray"
    purpose: str = "general"
    countries: tuple[str, ...] = ()
    connectivity_tier: str | None = None
    max_price_per_gpu_hour_micro: int | None = None
    min_reliability: float = 0.0
    min_workers: int | None = None
    max_workers: int | None = None

    def placement(self, **changes: Any) -> placement.Spec:
        values = {
            "gpu_model": self.gpu_model,
            "gpu_count": self.gpu_count,
            "countries": self.countries,
            "connectivity_tier": self.connectivity_tier,
            "max_price_per_gpu_hour_micro": self.max_price_per_gpu_hour_micro,
            "min_reliability": self.min_reliability,
        }
        return placement.Spec(**(values | changes))


def validate(spec: ClusterSpec) -> ClusterSpec:
    """The spec with its strings tidied; InvalidInput naming the field that is wrong."""

    def bad(field: str, message: str) -> InvalidInput:
        return InvalidInput(message, details={"field": field})

    name = names.shown_text(spec.name, field="name")
    if not 1 <= len(name) <= 80:
        raise bad("name", "Name the cluster (1 to 80 characters).")
    if spec.type != "ray":
        raise bad("type", "Only Ray clusters can be deployed.")
    if spec.purpose not in PURPOSES:
        raise bad("purpose", f"Purpose is one of: {', '.join(PURPOSES)}.")
    if not spec.gpu_model.strip():
        raise bad("gpu_model", "Choose a GPU model.")
    if not 1 <= spec.gpu_count <= placement.MAX_GPUS_PER_CLUSTER:
        raise bad("gpu_count", f"A cluster has 1 to {placement.MAX_GPUS_PER_CLUSTER} GPUs.")
    if not 1 <= spec.duration_hours <= MAX_DURATION_HOURS:
        raise bad("duration_hours", f"Rent for 1 to {MAX_DURATION_HOURS} hours; extend later if needed.")
    countries = tuple(sorted({c.strip().upper() for c in spec.countries}))
    if any(not _COUNTRY.match(c) for c in countries):
        raise bad("countries", "Give countries as two-letter ISO codes, e.g. DE.")
    if (
        spec.connectivity_tier is not None
        and spec.connectivity_tier not in ConnectivityTier._value2member_map_
    ):
        raise bad("connectivity_tier", f"Connectivity tier is one of: {', '.join(ConnectivityTier)}.")
    if spec.max_price_per_gpu_hour_micro is not None and spec.max_price_per_gpu_hour_micro <= 0:
        raise bad("max_price_per_gpu_hour_micro", "The maximum price must be positive.")
    if not 0.0 <= spec.min_reliability <= 1.0:
        raise bad("min_reliability", "Reliability is between 0 and 1.")
    if (spec.min_workers is None) != (spec.max_workers is None):
        raise bad("max_workers", "Give both min_workers and max_workers, or neither.")
    if spec.min_workers is not None and not 0 <= spec.min_workers <= (spec.max_workers or 0) <= 64:
        raise bad("max_workers", "Autoscaling needs 0 <= min_workers <= max_workers <= 64.")
    return ClusterSpec(
        **{**spec.__dict__, "name": name, "gpu_model": spec.gpu_model.strip(), "countries": countries}
    )


def record(session: Session, cluster: Cluster, kind: str, message: str, **details: Any) -> None:
    """One line of the cluster's log, shown to its owner."""
    session.add(ClusterEvent(cluster_id=cluster.id, kind=kind, message=message[:2000], details=details))


def add_nodes(
    session: Session, cluster: Cluster, chosen: list[placement.Candidate], *, head: bool
) -> list[ClusterNode]:
    """Nodes for the booked devices: the first is the head when ``head``, the rest workers."""
    nodes = []
    for index, candidate in enumerate(chosen):
        role = NodeRole.HEAD if head and index == 0 else NodeRole.WORKER
        node = ClusterNode(
            cluster_id=cluster.id,
            device_id=candidate.device_id,
            role=role,
            gpu_count=candidate.gpus,
            rate_micro=candidate.price_per_gpu_hour_micro,
            state_reason="booked for this cluster",
        )
        session.add(node)
        nodes.append(node)
        device = session.get(Device, candidate.device_id)
        device_name = device.name if device else str(candidate.device_id)[:8]
        record(
            session,
            cluster,
            "placed",
            f"Device {device_name} ({count(candidate.gpus, 'GPU')}, {candidate.country}, "
            f"{words(candidate.connectivity_tier).lower()} connectivity) booked as {role} at "
            f"{candidate.price_per_gpu_hour_micro / 1e6:.2f} USD per GPU-hour.",
            device_id=str(candidate.device_id),
        )
    session.flush()
    return nodes


def create(session: Session, settings: Settings, owner_id: uuid.UUID, spec: ClusterSpec) -> Cluster:
    """Place and book the devices and hold the escrow, in the caller's transaction; the cluster is
    ``pending`` until the provisioning actor takes it. 409 saying why when capacity or credit is short."""
    spec = validate(spec)
    cluster = Cluster(
        owner_id=owner_id,
        name=spec.name,
        type=spec.type,
        purpose=spec.purpose,
        gpu_model=spec.gpu_model,
        gpu_count=spec.gpu_count,
        countries=list(spec.countries),
        connectivity_tier=spec.connectivity_tier,
        duration_hours=spec.duration_hours,
        min_workers=spec.min_workers,
        max_workers=spec.max_workers,
        state_reason="waiting for provisioning",
    )
    session.add(cluster)
    session.flush()
    try:
        chosen = placement.reserve(session, settings, spec.placement(), f"booked for cluster {cluster.id}")
    except Unavailable:
        PLACEMENTS.labels("busy").inc()
        raise
    if chosen is None:
        PLACEMENTS.labels("capacity_short").inc()
        raise Conflict(
            f"Not enough capacity: no set of available {spec.gpu_model} devices holds exactly "
            f"{spec.gpu_count} GPUs with these filters; "
            f"{market.free_gpus_said(session, settings, spec.placement())}.",
            code="capacity_short",
            details={"available": market.alternatives(session, settings, spec.placement())},
        )
    per_hour = sum(c.price_per_gpu_hour_micro * c.gpus for c in chosen)
    cluster.price_per_gpu_hour_micro = per_hour // spec.gpu_count
    add_nodes(session, cluster, chosen, head=True)
    total = per_hour * spec.duration_hours
    try:
        escrow.hold(
            session,
            cluster,
            total,
            key=f"cluster:{cluster.id}:hold",
            description=f"escrow for {spec.duration_hours} h of {spec.gpu_count}x {spec.gpu_model}",
        )
    except Conflict:
        PLACEMENTS.labels("insufficient_credit").inc()
        raise
    PLACEMENTS.labels("booked").inc()
    record(
        session,
        cluster,
        "escrow",
        f"{total / 1e6:.2f} USD held in escrow for {spec.duration_hours} h; unused escrow is returned.",
        amount_micro=total,
    )
    session.add(cluster)
    return cluster


def list_clusters(
    session: Session, owner_id: uuid.UUID | None, *, limit: int, offset: int, state: str | None = None
) -> tuple[list[Cluster], int]:
    """A page of clusters, newest first; every customer's when ``owner_id`` is None (admins)."""
    query = select(Cluster)
    if owner_id is not None:
        query = query.where(Cluster.owner_id == owner_id)
    if state:
        query = query.where(Cluster.state == state)
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(query.order_by(col(Cluster.created_at).desc()).limit(limit).offset(offset)).all()
    return list(rows), total


def deploy(
    session: Session, settings: Settings, followups: FollowUps, owner_id: uuid.UUID, spec: ClusterSpec
) -> Cluster:
    """Deploy: book the devices and hold the escrow (``create``), commit, and have the cluster provisioned.
    Every adapter (API, pages, CLI through the API) deploys through this one command."""
    session.commit()  # what the request did so far (its sign-in) holds no connection while it waits its turn
    slots = _deploy_slots(max(1, settings.db_pool_size // 2))
    if not slots.acquire(timeout=DEPLOY_TURN_WAIT_S):
        raise placement.busy()
    try:
        cluster = create(session, settings, owner_id, spec)
        session.commit()  # the actor must find what it is told about
    finally:
        slots.release()
    followups.advance_cluster(cluster.id)
    return cluster


@functools.cache
def _deploy_slots(size: int) -> threading.BoundedSemaphore:
    """The deploys this process runs at once. Each holds a database connection for its transaction; a
    burst of deploys beyond the pool's size took every connection, and the agents' long-polls and the
    customers' pages waited for the pool until they timed out (bench/deploys.py, 64 customers at once).
    Half the pool: the other half stays for everything else. The rest wait here, holding nothing."""
    return threading.BoundedSemaphore(size)


def terminate(
    session: Session,
    followups: FollowUps,
    cluster_id: uuid.UUID,
    *,
    owner_id: uuid.UUID | None,
    reason: str,
    actor_id: str,
    origin: RequestOrigin | None = None,
) -> Cluster:
    """End a cluster: its owner's (``owner_id``), or any cluster for an admin (None). Audited with the
    adapter's origin; the nodes stop and the unused escrow returns as the cluster advances."""
    cluster = lock_cluster(session, owner_id, cluster_id)
    if request_termination(session, cluster, reason):
        audit.record(
            session,
            "cluster.terminate",
            actor_id=actor_id,
            origin=origin,
            target_type="cluster",
            target_id=cluster.id,
            details={"reason": reason},
        )
        session.commit()
        followups.advance_cluster(cluster.id)
    return cluster


def lock_cluster(session: Session, owner_id: uuid.UUID | None, cluster_id: uuid.UUID) -> Cluster:
    """The cluster with its row locked until the transaction ends, read after the lock: what changes it
    (extend, terminate, the provisioning steps, expiry) never interleaves. A no-op write takes the lock, so
    it works alike on PostgreSQL (row lock) and SQLite (the writer lock, taken before anything is read)."""
    session.execute(
        update(Cluster)
        .where(col(Cluster.id) == cluster_id)
        .values(state=Cluster.state)
        .execution_options(synchronize_session=False)
    )
    cluster = session.get(Cluster, cluster_id, populate_existing=True)
    if cluster is None or (owner_id is not None and cluster.owner_id != owner_id):
        raise NotFound("No such cluster.")
    return cluster


def lock_clusters(session: Session, cluster_ids: Sequence[uuid.UUID]) -> list[Cluster]:
    """Several clusters locked as ``lock_cluster`` locks one, in id order (so two lockers never deadlock),
    read after the lock; unknown ids are left out."""
    ordered = sorted(cluster_ids)
    if session.get_bind().dialect.name == "postgresql":
        session.exec(
            select(Cluster.id).where(col(Cluster.id).in_(ordered)).order_by(col(Cluster.id)).with_for_update()
        ).all()
    else:  # SQLite: the writer lock, taken before anything is read
        session.execute(
            update(Cluster)
            .where(col(Cluster.id).in_(ordered))
            .values(state=Cluster.state)
            .execution_options(synchronize_session=False)
        )
    return list(
        session.exec(
            select(Cluster)
            .where(col(Cluster.id).in_(ordered))
            .order_by(col(Cluster.id))
            .execution_options(populate_existing=True)
        ).all()
    )


def get_cluster(session: Session, owner_id: uuid.UUID | None, cluster_id: uuid.UUID) -> Cluster:
    cluster = session.get(Cluster, cluster_id)
    if cluster is None or (owner_id is not None and cluster.owner_id != owner_id):
        raise NotFound("No such cluster.")
    return cluster


def nodes_of(session: Session, cluster_id: uuid.UUID) -> list[ClusterNode]:
    return list(
        session.exec(
            select(ClusterNode)
            .where(ClusterNode.cluster_id == cluster_id)
            .order_by(col(ClusterNode.created_at))
        ).all()
    )


def nodes_with_devices(session: Session, cluster_id: uuid.UUID) -> list[tuple[ClusterNode, Device]]:
    return [
        (node, device)
        for node, device in session.exec(
            select(ClusterNode, Device)
            .join(Device, col(Device.id) == ClusterNode.device_id)
            .where(ClusterNode.cluster_id == cluster_id)
            .order_by(col(ClusterNode.created_at))
        ).all()
    ]


def device_ids_of(session: Session, cluster_id: uuid.UUID) -> list[uuid.UUID]:
    """Every device that has served the cluster, in the order they joined."""
    return list(dict.fromkeys(node.device_id for node in nodes_of(session, cluster_id)))


def events_of(
    session: Session, cluster_id: uuid.UUID, *, after_id: int = 0, limit: int = 500
) -> list[ClusterEvent]:
    return list(
        session.exec(
            select(ClusterEvent)
            .where(ClusterEvent.cluster_id == cluster_id, col(ClusterEvent.id) > after_id)
            .order_by(col(ClusterEvent.id))
            .limit(limit)
        ).all()
    )


def extend(session: Session, cluster: Cluster, hours: int) -> Cluster:
    """More time: the end moves later and escrow for it is held now."""
    if not 1 <= hours <= MAX_DURATION_HOURS:
        raise InvalidInput(f"Extend by 1 to {MAX_DURATION_HOURS} hours.", details={"field": "hours"})
    if cluster.state not in (
        ClusterState.PENDING,
        ClusterState.PROVISIONING,
        ClusterState.RUNNING,
        ClusterState.DEGRADED,
    ):
        raise Conflict(f"A {cluster.state} cluster cannot be extended.", code="invalid_state")
    if cluster.duration_hours + hours > MAX_DURATION_HOURS:
        raise InvalidInput(f"A cluster runs at most {MAX_DURATION_HOURS} hours.", details={"field": "hours"})
    per_hour = sum(
        node.rate_micro * node.gpu_count
        for node in nodes_of(session, cluster.id)
        if node.state in ACTIVE_NODE_STATES
    )
    amount = per_hour * hours
    extensions = session.exec(
        select(func.count()).where(ClusterEvent.cluster_id == cluster.id, ClusterEvent.kind == "extended")
    ).one()
    escrow.hold(
        session,
        cluster,
        amount,
        key=f"cluster:{cluster.id}:extend:{extensions + 1}",
        description=f"escrow for {hours} more h",
    )
    cluster.duration_hours += hours
    if cluster.expires_at is not None:
        cluster.expires_at += timedelta(hours=hours)
    session.add(cluster)
    record(
        session,
        cluster,
        "extended",
        f"Extended by {hours} h; {amount / 1e6:.2f} USD more held in escrow.",
        hours=hours,
    )
    return cluster


def request_termination(session: Session, cluster: Cluster, reason: str) -> bool:
    """Mark the cluster for termination; False when it is ending or ended already (a harmless repeat)."""
    if cluster.state in (*ENDED, ClusterState.TERMINATING):
        return False
    state_machines.move(session, "cluster", cluster, ClusterState.TERMINATING, reason)
    record(session, cluster, "terminating", f"Termination requested: {reason}.")
    return True


def spent_and_escrow(session: Session, settings: Settings, cluster: Cluster) -> tuple[int, int]:
    """Charged so far (metered, plus what the next metering pass would charge now) and still in escrow."""
    pending = 0 if cluster.state in ENDED else metering.pending_micro(session, settings, cluster)
    return escrow.charged(session, cluster) + pending, escrow.in_escrow(session, cluster) - pending
