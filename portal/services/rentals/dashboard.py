"""The Ray dashboard of a customer's cluster, as the portal serves it: which head to call for whom.

Only the cluster's owner gets it, and only while the cluster runs; for anyone else and any other moment the
answer is the same ``NotFound``, so the proxy says nothing of other people's clusters. The address is the
head's dashboard as the portal validated it when the head joined (on the head device's own address, its
overlay address with the mesh on), never a URL from the request.
"""

from __future__ import annotations

import uuid

from sqlmodel import Session, col, select

from portal.config import MeshKind, Settings
from portal.models import Cluster, ClusterNode, ClusterState, Device, NodeRole, Role
from portal.security.principal import Principal, PrincipalKind
from portal.services.errors import NotFound
from portal.services.rentals import clusters
from portal.services.rentals.clusters import ACTIVE_NODE_STATES

SERVED_STATES = (ClusterState.RUNNING, ClusterState.DEGRADED)
SCOPE = "clusters:read"


def may_view(principal: Principal | None) -> bool:
    """A customer signed in, or their API key with the clusters:read scope (never a device)."""
    if principal is None or principal.kind is PrincipalKind.DEVICE:
        return False
    return Role.CUSTOMER in principal.roles and principal.has_scope(SCOPE)


def upstream(session: Session, principal: Principal | None, cluster_id: uuid.UUID) -> str:
    """``http://host:port`` of the running cluster's dashboard, for its owner; NotFound otherwise."""
    if not may_view(principal):
        raise NotFound("No such cluster dashboard.")
    assert principal is not None
    cluster = clusters.get_cluster(session, principal.user_id, cluster_id)
    if cluster.state not in SERVED_STATES or not cluster.dashboard_url:
        raise NotFound("No such cluster dashboard.")
    return cluster.dashboard_url


def public_url(settings: Settings, cluster: Cluster) -> str | None:
    """Where the customer opens the dashboard, from their own machine: the portal's proxy, while it runs."""
    if cluster.state not in SERVED_STATES or not cluster.dashboard_url:
        return None
    return f"{settings.base_url}/clusters/{cluster.id}/ray/"


def head_overlay_ip(session: Session, settings: Settings, cluster: Cluster) -> str | None:
    """The head's overlay address (what ``portal clusters connect`` reaches), with the mesh on."""
    if settings.mesh is not MeshKind.NEBULA:
        return None
    head = session.exec(
        select(Device.overlay_ip)
        .join(ClusterNode, col(ClusterNode.device_id) == col(Device.id))
        .where(
            ClusterNode.cluster_id == cluster.id,
            ClusterNode.role == NodeRole.HEAD,
            col(ClusterNode.state).in_(ACTIVE_NODE_STATES),
        )
    ).first()
    return head
