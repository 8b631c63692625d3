"""Customers' clusters and their jobs. Deploy and terminate answer at once; actors do the slow work."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlmodel import Session

from portal.api.deps import FollowUpsDep, PartsDep, SessionDep, SettingsDep
from portal.config import MeshKind, Settings
from portal.models import Cluster, ClusterState, Role
from portal.schemas.clusters import (
    ClusterIn,
    ClusterOut,
    EventOut,
    ExtendIn,
    JobIn,
    JobLogsOut,
    JobOut,
    MetricsOut,
    NetworkOut,
    NodeOut,
)
from portal.schemas.common import Limit, Offset, Page
from portal.schemas.mesh import ClusterConnectionOut, MeshCertificateIn, certificate_fields
from portal.security.access import OriginDep, SignedIn
from portal.security.principal import Principal
from portal.services.mesh import connections
from portal.services.providers import telemetry
from portal.services.rentals import clusters, dashboard, jobs

router = APIRouter(prefix="/clusters", tags=["customer: clusters"])
Reader = Annotated[Principal, Depends(SignedIn([Role.CUSTOMER], scope="clusters:read"))]
Writer = Annotated[Principal, Depends(SignedIn([Role.CUSTOMER], scope="clusters:write"))]
Minutes = Annotated[int, Query(ge=1, le=10_080, description="How far back, in minutes (up to 7 days).")]
StateFilter = Annotated[ClusterState | None, Query(description="Only clusters in this state.")]


def cluster_out(session: Session, settings: Settings, cluster: Cluster, *, events: bool = True) -> ClusterOut:
    nodes = clusters.nodes_with_devices(session, cluster.id)
    spent, held = clusters.spent_and_escrow(session, settings, cluster)
    return ClusterOut(
        **cluster.model_dump(include=set(ClusterOut.model_fields) - {"nodes", "events", "dashboard_url"}),
        dashboard_url=dashboard.public_url(settings, cluster),
        network=NetworkOut(
            overlay=settings.mesh is MeshKind.NEBULA,
            head_overlay_ip=dashboard.head_overlay_ip(session, settings, cluster),
        ),
        spent_micro=spent,
        escrow_micro=held,
        simulated=any(device.simulated for _, device in nodes),
        nodes=[
            NodeOut(
                **node.model_dump(include=set(NodeOut.model_fields) - {"device_name", "simulated"}),
                device_name=device.name,
                simulated=device.simulated,
            )
            for node, device in nodes
        ],
        events=[
            EventOut.model_validate(e, from_attributes=True) for e in clusters.events_of(session, cluster.id)
        ]
        if events
        else [],
    )


@router.post(
    "", status_code=202, summary="Deploy a Ray cluster; 409 saying why when capacity or credit is short"
)
def deploy(
    body: ClusterIn, session: SessionDep, settings: SettingsDep, followups: FollowUpsDep, caller: Writer
) -> ClusterOut:
    spec = clusters.ClusterSpec(**body.model_dump())
    return cluster_out(session, settings, clusters.deploy(session, settings, followups, caller.user_id, spec))


@router.get("", summary="Your clusters, newest first")
def list_clusters(
    session: SessionDep,
    settings: SettingsDep,
    caller: Reader,
    state: StateFilter = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[ClusterOut]:
    rows, total = clusters.list_clusters(session, caller.user_id, limit=limit, offset=offset, state=state)
    return Page(
        items=[cluster_out(session, settings, c, events=False) for c in rows],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get("/{cluster_id}", summary="A cluster: state, nodes, log, Ray addresses, spent and escrow")
def get_cluster(
    cluster_id: uuid.UUID, session: SessionDep, settings: SettingsDep, caller: Reader
) -> ClusterOut:
    return cluster_out(session, settings, clusters.get_cluster(session, caller.user_id, cluster_id))


@router.post("/{cluster_id}/extend", summary="Run longer; escrow for the extra hours is held now")
def extend(
    cluster_id: uuid.UUID, body: ExtendIn, session: SessionDep, settings: SettingsDep, caller: Writer
) -> ClusterOut:
    cluster = clusters.extend(session, clusters.lock_cluster(session, caller.user_id, cluster_id), body.hours)
    return cluster_out(session, settings, cluster)


@router.delete("/{cluster_id}", status_code=202, summary="Terminate; unused escrow is returned")
def terminate(
    cluster_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    followups: FollowUpsDep,
    caller: Writer,
    origin: OriginDep,
) -> ClusterOut:
    cluster = clusters.terminate(
        session,
        followups,
        cluster_id,
        owner_id=caller.user_id,
        reason="terminated by its owner",
        actor_id=caller.id,
        origin=origin,
    )
    return cluster_out(session, settings, cluster)


@router.get("/{cluster_id}/metrics", summary="Per-GPU time series of the cluster's devices")
def metrics(
    cluster_id: uuid.UUID, session: SessionDep, settings: SettingsDep, caller: Reader, minutes: Minutes = 15
) -> MetricsOut:
    cluster = clusters.get_cluster(session, caller.user_id, cluster_id)
    found = telemetry.series(session, settings, clusters.device_ids_of(session, cluster.id), minutes)
    return MetricsOut.model_validate(telemetry.as_json(found, minutes))


@router.post("/{cluster_id}/jobs", status_code=201, summary="Submit a job to the cluster's Ray Jobs API")
def submit_job(cluster_id: uuid.UUID, body: JobIn, session: SessionDep, caller: Writer) -> JobOut:
    cluster = clusters.get_cluster(session, caller.user_id, cluster_id)
    job = jobs.submit(session, cluster, caller.user_id, body.entrypoint, body.runtime_env)
    return JobOut.model_validate(job, from_attributes=True)


@router.get("/{cluster_id}/jobs", summary="The cluster's jobs, newest first")
def list_jobs(
    cluster_id: uuid.UUID, session: SessionDep, caller: Reader, limit: Limit = 50, offset: Offset = 0
) -> Page[JobOut]:
    cluster = clusters.get_cluster(session, caller.user_id, cluster_id)
    rows, total = jobs.list_jobs(session, cluster, limit=limit, offset=offset)
    items = [JobOut.model_validate(jobs.refresh(session, cluster, job), from_attributes=True) for job in rows]
    return Page(items=items, total=total, limit=limit, offset=offset)


@router.get("/{cluster_id}/jobs/{job_id}", summary="A job and its status")
def get_job(cluster_id: uuid.UUID, job_id: uuid.UUID, session: SessionDep, caller: Reader) -> JobOut:
    cluster = clusters.get_cluster(session, caller.user_id, cluster_id)
    job = jobs.refresh(session, cluster, jobs.get_job(session, cluster, job_id))
    return JobOut.model_validate(job, from_attributes=True)


@router.get("/{cluster_id}/jobs/{job_id}/logs", summary="The job's output so far (poll while it runs)")
def job_logs(cluster_id: uuid.UUID, job_id: uuid.UUID, session: SessionDep, caller: Reader) -> JobLogsOut:
    cluster = clusters.get_cluster(session, caller.user_id, cluster_id)
    job = jobs.refresh(session, cluster, jobs.get_job(session, cluster, job_id))
    return JobLogsOut(job_id=job.id, status=job.status, logs=jobs.logs(cluster, job))


@router.post("/{cluster_id}/jobs/{job_id}/stop", summary="Stop a running job")
def stop_job(cluster_id: uuid.UUID, job_id: uuid.UUID, session: SessionDep, caller: Writer) -> JobOut:
    cluster = clusters.get_cluster(session, caller.user_id, cluster_id)
    job = jobs.stop(session, cluster, jobs.get_job(session, cluster, job_id))
    return JobOut.model_validate(job, from_attributes=True)


@router.post(
    "/{cluster_id}/connect",
    summary="Put the customer's machine on the cluster's private network: a certificate for its key",
)
def connect(
    cluster_id: uuid.UUID, body: MeshCertificateIn, session: SessionDep, parts: PartsDep, caller: Writer
) -> ClusterConnectionOut:
    # What authenticating wrote (an API key's last use) is committed first: the service writes in sessions of
    # its own, and on SQLite this request's open write would hold them off until the busy timeout.
    session.commit()
    joined = connections.connect(parts.engine, parts.settings, caller.user_id, cluster_id, body.public_key)
    return ClusterConnectionOut(
        **certificate_fields(joined),
        head_overlay_ip=joined.head_overlay_ip,
        ray_client_address=joined.ray_client_address,
    )
