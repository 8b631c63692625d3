"""Ray's autoscaler on a cluster's head asking for workers and releasing idle ones.

The head's agent runs Ray's autoscaler; its node provider (``gpu_pool.autoscaler``) calls these through
the worker API with the head device's token, so only the device that hosts an autoscaled cluster's head
can change that cluster, and only within its ``max_workers``, at no more than the quoted rate, and while
the customer's credit holds the escrow for the added node's remaining time. Added nodes are metered like
any other from the moment they join; a released node stops being charged at once (its unused escrow
comes back when the cluster ends).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from portal.config import Settings
from portal.infra.wakeups import Wakeups
from portal.models import AccountKind, Cluster, ClusterEvent, ClusterNode, ClusterState, NodeRole
from portal.models.base import utcnow
from portal.services import display
from portal.services.errors import Conflict, NotFound
from portal.services.money import escrow, ledger
from portal.services.rentals import clusters, placement, provisioning
from portal.services.rentals.clusters import ACTIVE_NODE_STATES, record

SCALABLE = (ClusterState.RUNNING, ClusterState.DEGRADED)
MIN_REMAINING_S = 60


@dataclass(frozen=True)
class Node:
    id: uuid.UUID
    role: str
    state: str
    gpu_count: int


@dataclass(frozen=True)
class Nodes:
    cluster_id: uuid.UUID
    min_workers: int
    max_workers: int
    nodes: list[Node]


def _cluster_of_head(session: Session, device_id: uuid.UUID) -> Cluster:
    """The autoscaled cluster whose head this device hosts; 404 for any other device."""
    cluster = session.exec(
        select(Cluster)
        .join(ClusterNode, col(ClusterNode.cluster_id) == Cluster.id)
        .where(
            ClusterNode.device_id == device_id,
            ClusterNode.role == NodeRole.HEAD,
            col(ClusterNode.state).in_(ACTIVE_NODE_STATES),
            col(Cluster.max_workers).is_not(None),
        )
        .order_by(col(ClusterNode.created_at).desc())
        .limit(1)
    ).first()
    if cluster is None:
        raise NotFound("This device hosts the head of no autoscaled cluster.")
    return cluster


def _active(session: Session, cluster_id: uuid.UUID) -> list[ClusterNode]:
    return [n for n in clusters.nodes_of(session, cluster_id) if n.state in ACTIVE_NODE_STATES]


def nodes(session: Session, device_id: uuid.UUID) -> Nodes:
    """The cluster's live nodes, as the autoscaler's provider lists them."""
    cluster = _cluster_of_head(session, device_id)
    assert cluster.min_workers is not None and cluster.max_workers is not None
    return Nodes(
        cluster_id=cluster.id,
        min_workers=cluster.min_workers,
        max_workers=cluster.max_workers,
        nodes=[Node(n.id, n.role, n.state, n.gpu_count) for n in _active(session, cluster.id)],
    )


def _note_refusal(session: Session, cluster: Cluster, message: str) -> None:
    """Tell the customer once, not on each of the autoscaler's retries."""
    last = session.exec(
        select(ClusterEvent.message)
        .where(ClusterEvent.cluster_id == cluster.id)
        .order_by(col(ClusterEvent.id).desc())
        .limit(1)
    ).first()
    if last != message:
        record(session, cluster, "scale_refused", message)


def scale_up(engine: Engine, settings: Settings, wakeups: Wakeups, device_id: uuid.UUID, count: int) -> Nodes:
    """Book up to ``count`` one-GPU workers and start them; 409 saying why when none could be added (the
    reason is also written to the cluster's log)."""
    with Session(engine) as session:
        cluster_id = _cluster_of_head(session, device_id).id
    refusal: str | None = None
    added: list[Node] = []
    with provisioning.stepping(engine, settings, wakeups, cluster_id) as steps:
        if steps is None:
            raise NotFound("No such cluster.")
        session, cluster = steps.session, steps.cluster
        if cluster.state not in SCALABLE or cluster.expires_at is None:
            raise Conflict(f"A {cluster.state} cluster does not scale.", code="invalid_state")
        assert cluster.min_workers is not None and cluster.max_workers is not None
        bounds = (cluster.min_workers, cluster.max_workers)
        workers = [n for n in _active(session, cluster.id) if n.role == NodeRole.WORKER]
        room = cluster.max_workers - len(workers)
        if room <= 0:
            raise Conflict(
                f"The cluster has its maximum of {cluster.max_workers} workers.", code="max_workers"
            )
        remaining_s = int((cluster.expires_at - utcnow()).total_seconds())
        if remaining_s < MIN_REMAINING_S:
            raise Conflict("The cluster ends within a minute; extend it to add workers.", code="ending")
        used = {n.device_id for n in clusters.nodes_of(session, cluster.id)}
        for _ in range(min(count, room)):
            refusal = _add_worker(session, settings, cluster, used, remaining_s, added)
            if refusal:
                break
        if added:
            cluster.gpu_count += len(added)
            session.add(cluster)
            record(
                session,
                cluster,
                "scaled_up",
                f"The Ray autoscaler asked for {display.count(count, 'more worker')}: {len(added)} booked"
                + (f" ({refusal})" if refusal else "")
                + ".",
            )
            steps.start_assigned()
        elif refusal:
            _note_refusal(session, cluster, f"The Ray autoscaler asked for more workers: {refusal}")
    if not added:
        raise Conflict(refusal or "No worker could be added.", code="scale_refused")
    return Nodes(cluster_id, *bounds, added)


def _add_worker(
    session: Session,
    settings: Settings,
    cluster: Cluster,
    used: set[uuid.UUID],
    remaining_s: int,
    added: list[Node],
) -> str | None:
    """Book one one-GPU device and hold escrow for its remaining time; the refusal in words, or None."""
    spec = clusters.ClusterSpec(
        name=cluster.name,
        gpu_model=cluster.gpu_model,
        gpu_count=1,
        duration_hours=cluster.duration_hours,
        countries=tuple(cluster.countries),
        connectivity_tier=cluster.connectivity_tier,
        max_price_per_gpu_hour_micro=cluster.price_per_gpu_hour_micro,  # no more than the quoted rate
    ).placement(exclude=frozenset(used))
    savepoint = session.begin_nested()
    chosen = placement.reserve(session, settings, spec, f"autoscaled worker for cluster {cluster.id}")
    if chosen is None:
        savepoint.rollback()
        return (
            f"no {cluster.gpu_model} device is available at {cluster.price_per_gpu_hour_micro / 1e6:.2f} USD"
        )
    hold = -(-chosen[0].price_per_gpu_hour_micro * remaining_s // escrow.SECONDS_PER_HOUR)
    available = ledger.get_account(session, AccountKind.CUSTOMER_AVAILABLE, cluster.owner_id)
    if available.balance_micro < hold:
        savepoint.rollback()
        return f"the customer's credit is short of the {hold / 1e6:.2f} USD escrow another worker needs"
    (node,) = clusters.add_nodes(session, cluster, chosen, head=False)
    escrow.hold(
        session,
        cluster,
        hold,
        key=f"cluster:{cluster.id}:scale-up:{node.id}",
        description=f"escrow for an autoscaled worker, {timedelta(seconds=remaining_s)} left",
    )
    savepoint.commit()
    used.add(node.device_id)
    added.append(Node(node.id, node.role, node.state, node.gpu_count))
    return None


def scale_down(
    engine: Engine, settings: Settings, wakeups: Wakeups, device_id: uuid.UUID, node_id: uuid.UUID
) -> None:
    """Release a worker the autoscaler found idle: its Ray node stops, its charges stop, its device goes
    back to the pool. Releasing one already gone is a harmless repeat."""
    with Session(engine) as session:
        cluster_id = _cluster_of_head(session, device_id).id
    with provisioning.stepping(engine, settings, wakeups, cluster_id) as steps:
        if steps is None:
            raise NotFound("No such cluster.")
        session, cluster = steps.session, steps.cluster
        node = session.get(ClusterNode, node_id)
        if node is None or node.cluster_id != cluster.id:
            raise NotFound("The cluster has no such node.")
        if node.role == NodeRole.HEAD:
            raise Conflict("The autoscaler cannot release the head.", code="head")
        if node.state not in ACTIVE_NODE_STATES:
            return
        steps.release(node, "released by the Ray autoscaler: idle")
        cluster.gpu_count -= node.gpu_count
        session.add(cluster)
        record(
            session,
            cluster,
            "scaled_down",
            f"The Ray autoscaler released an idle worker ({display.count(node.gpu_count, 'GPU')}); "
            "its charges stopped.",
            node_id=str(node.id),
        )
