"""Jobs on a customer's cluster, through the Ray Jobs API of its head; the portal keeps a record of each."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlmodel import Session, col, func, select

from portal.models import Cluster, ClusterState, Job, JobStatus
from portal.models.base import utcnow
from portal.services.errors import Conflict, InvalidInput, NotFound, Unavailable

RAY_TIMEOUT_S = 10
MAX_ENTRYPOINT = 10_000
MAX_RUNTIME_ENV_BYTES = 64_000
RUNTIME_ENV_KEYS = {"pip", "uv", "conda", "env_vars", "working_dir", "py_modules", "excludes", "config"}
FINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
MAX_LOG_CHARS = 1_000_000


def _head(cluster: Cluster) -> str:
    if cluster.state not in (ClusterState.RUNNING, ClusterState.DEGRADED) or not cluster.dashboard_url:
        raise Conflict(
            f"Jobs run on a running cluster; this one is {cluster.state}.", code="cluster_not_running"
        )
    return cluster.dashboard_url


def _ray(method: str, url: str, **kwargs: Any) -> Any:
    try:
        reply = httpx.request(method, url, timeout=RAY_TIMEOUT_S, **kwargs)
    except httpx.HTTPError as error:
        raise Unavailable(f"The cluster's Ray head did not answer ({type(error).__name__}).") from error
    if reply.status_code == 404:
        raise NotFound("Ray does not know this job.")
    if reply.status_code >= 400:
        # Ray's own words can help (a bad entrypoint, say), but only when they come as its JSON error.
        raise Unavailable(f"The cluster's Ray head refused the request (HTTP {reply.status_code}).")
    try:
        return reply.json()
    except ValueError:
        raise Unavailable("The cluster's Ray head answered something that is not Ray's Jobs API.") from None


def validate(entrypoint: str, runtime_env: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    entrypoint = entrypoint.strip()
    if not 1 <= len(entrypoint) <= MAX_ENTRYPOINT:
        raise InvalidInput(
            f"The entrypoint is a shell command of 1 to {MAX_ENTRYPOINT} characters.",
            details={"field": "entrypoint"},
        )
    runtime_env = runtime_env or {}
    unknown = set(runtime_env) - RUNTIME_ENV_KEYS
    if unknown:
        raise InvalidInput(
            f"Unknown runtime_env keys: {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(RUNTIME_ENV_KEYS))}.",
            details={"field": "runtime_env"},
        )
    if len(json.dumps(runtime_env)) > MAX_RUNTIME_ENV_BYTES:
        raise InvalidInput("The runtime_env is too large.", details={"field": "runtime_env"})
    env_vars = runtime_env.get("env_vars", {})
    if not isinstance(env_vars, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()
    ):
        raise InvalidInput(
            "runtime_env.env_vars maps names to string values.", details={"field": "runtime_env"}
        )
    return entrypoint, runtime_env


def submit(
    session: Session,
    cluster: Cluster,
    user_id: uuid.UUID,
    entrypoint: str,
    runtime_env: dict[str, Any] | None,
) -> Job:
    entrypoint, runtime_env = validate(entrypoint, runtime_env)
    head = _head(cluster)
    job = Job(cluster_id=cluster.id, submitted_by=user_id, entrypoint=entrypoint, runtime_env=runtime_env)
    job.ray_submission_id = f"portal-{job.id.hex[:16]}"
    body = {
        "entrypoint": entrypoint,
        "submission_id": job.ray_submission_id,
        "runtime_env": runtime_env,
        "metadata": {"portal_job_id": str(job.id), "portal_cluster_id": str(cluster.id)},
    }
    _ray("POST", f"{head}/api/jobs/", json=body)
    session.add(job)
    session.flush()
    return job


def list_jobs(session: Session, cluster: Cluster, *, limit: int, offset: int) -> tuple[list[Job], int]:
    query = select(Job).where(Job.cluster_id == cluster.id)
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(query.order_by(col(Job.created_at).desc()).limit(limit).offset(offset)).all()
    return list(rows), total


def get_job(session: Session, cluster: Cluster, job_id: uuid.UUID) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.cluster_id != cluster.id:
        raise NotFound("No such job on this cluster.")
    return job


def _from_ms(value: Any) -> datetime | None:
    return datetime.fromtimestamp(value / 1000, UTC) if isinstance(value, int | float) and value else None


def refresh(session: Session, cluster: Cluster, job: Job) -> Job:
    """The job's status from Ray, unless it has ended (or the head is gone: the record is what is left)."""
    if job.status in FINAL or cluster.state not in (ClusterState.RUNNING, ClusterState.DEGRADED):
        return job
    try:
        details = _ray("GET", f"{_head(cluster)}/api/jobs/{job.ray_submission_id}")
    except (Unavailable, NotFound):
        return job
    if not isinstance(details, dict):
        return job
    status = str(details.get("status", "")).lower()
    if status in JobStatus._value2member_map_:
        job.status = status
    job.message = str(details.get("message") or "")[:2000]
    job.started_at = _from_ms(details.get("start_time")) or job.started_at
    job.ended_at = _from_ms(details.get("end_time")) or (utcnow() if job.status in FINAL else None)
    session.add(job)
    return job


def logs(cluster: Cluster, job: Job) -> str:
    reply = _ray("GET", f"{_head(cluster)}/api/jobs/{job.ray_submission_id}/logs")
    text = str(reply.get("logs", "")) if isinstance(reply, dict) else ""
    return text[-MAX_LOG_CHARS:]


def stop(session: Session, cluster: Cluster, job: Job) -> Job:
    if job.status in FINAL:
        return job
    _ray("POST", f"{_head(cluster)}/api/jobs/{job.ray_submission_id}/stop")
    return refresh(session, cluster, job)
