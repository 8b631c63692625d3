"""The customer's clusters: the list, and one cluster's page with its log, nodes, jobs and controls."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from datetime import datetime
from typing import Any

import reflex as rx

from portal import parts
from portal.infra.db import session_scope
from portal.models import Cluster, Role
from portal.security.principal import Principal, RequestOrigin
from portal.services.display import plain_text, sentence, usd, usd_rate, utc_iso, words
from portal.services.errors import DomainError, InvalidInput
from portal.services.rentals import clusters, dashboard, jobs
from portal.state.session import SessionState, for_users, principal

STATE_COLORS = {
    "pending": "gray",
    "provisioning": "amber",
    "running": "green",
    "degraded": "orange",
    "terminating": "amber",
    "terminated": "gray",
    "failed": "red",
    "expired": "gray",
}
JOB_COLORS = {"pending": "gray", "running": "blue", "succeeded": "green", "failed": "red", "stopped": "gray"}


def _when(moment: datetime | None) -> str:
    return utc_iso(moment)  # shown in the visitor's zone (components.times.local_time)


def _summary(session: Any, cluster: Cluster) -> dict[str, Any]:
    spent, held = clusters.spent_and_escrow(session, parts.current().settings, cluster)
    return {
        "id": str(cluster.id),
        "name": cluster.name,
        "state": cluster.state,
        "color": STATE_COLORS.get(cluster.state, "gray"),
        "reason": sentence(cluster.state_reason),
        "gpus": f"{cluster.gpu_count} x {cluster.gpu_model}",
        "created": _when(cluster.created_at),
        "expires": _when(cluster.expires_at),
        "spent": usd(spent),
        "escrow": usd(held),
    }


def _list(caller: Principal) -> list[dict[str, Any]]:
    with session_scope(parts.current().engine) as session:
        rows, _ = clusters.list_clusters(session, caller.user_id, limit=100, offset=0)
        return [_summary(session, cluster) for cluster in rows]


def _detail(caller: Principal, cluster_id: str) -> dict[str, Any]:
    with session_scope(parts.current().engine) as session:
        cluster = clusters.get_cluster(session, caller.user_id, uuid.UUID(cluster_id))
        nodes = clusters.nodes_with_devices(session, cluster.id)
        return {
            **_summary(session, cluster),
            "simulated": any(device.simulated for _, device in nodes),
            "active": cluster.state not in (*clusters.ENDED, "terminating"),
            "running": cluster.state in ("running", "degraded"),
            "client_address": cluster.client_address or "—",
            "ray_address": cluster.ray_address or "—",
            "dashboard_url": dashboard.public_url(parts.current().settings, cluster) or "",
            "hours": cluster.duration_hours,
            "autoscaling": (
                f"{cluster.min_workers} to {cluster.max_workers} workers, with the Ray load"
                if cluster.max_workers is not None
                else "off"
            ),
            "nodes": [
                {
                    "device": device.name,
                    "role": node.role,
                    "state": node.state,
                    "gpus": node.gpu_count,
                    "rate": usd_rate(node.rate_micro, "/GPU-h"),
                    "simulated": device.simulated,
                    "reason": sentence(node.state_reason),
                }
                for node, device in nodes
            ],
            "events": [
                {"at": utc_iso(event.at), "kind": words(event.kind), "message": event.message}
                for event in clusters.events_of(session, cluster.id)
            ],
        }


def _jobs(caller: Principal, cluster_id: str) -> list[dict[str, Any]]:
    with session_scope(parts.current().engine) as session:
        cluster = clusters.get_cluster(session, caller.user_id, uuid.UUID(cluster_id))
        rows, _ = jobs.list_jobs(session, cluster, limit=50, offset=0)
        return [
            {
                "id": str(job.id),
                "entrypoint": job.entrypoint,
                "status": job.status,
                "color": JOB_COLORS.get(job.status, "gray"),
                "created": _when(job.created_at),
            }
            for job in (jobs.refresh(session, cluster, job) for job in rows)
        ]


def _logs(caller: Principal, cluster_id: str, job_id: str) -> tuple[str, str]:
    with session_scope(parts.current().engine) as session:
        cluster = clusters.get_cluster(session, caller.user_id, uuid.UUID(cluster_id))
        job = jobs.refresh(session, cluster, jobs.get_job(session, cluster, uuid.UUID(job_id)))
        return job.status, plain_text(jobs.logs(cluster, job))


def _submit(caller: Principal, cluster_id: str, entrypoint: str, runtime_env: str) -> str:
    try:
        env = json.loads(runtime_env) if runtime_env.strip() else None
    except ValueError:
        raise InvalidInput('The runtime environment is JSON, e.g. {"pip": ["numpy"]}.') from None
    if env is not None and not isinstance(env, dict):
        raise InvalidInput("The runtime environment is a JSON object.")
    with session_scope(parts.current().engine) as session:
        cluster = clusters.get_cluster(session, caller.user_id, uuid.UUID(cluster_id))
        return str(jobs.submit(session, cluster, caller.user_id, entrypoint, env).id)


def _extend(caller: Principal, cluster_id: str, hours: int) -> None:
    with session_scope(parts.current().engine) as session:
        clusters.extend(session, clusters.lock_cluster(session, caller.user_id, uuid.UUID(cluster_id)), hours)


def _terminate(caller: Principal, cluster_id: str, origin: RequestOrigin) -> None:
    p = parts.current()
    with session_scope(p.engine) as session:
        clusters.terminate(
            session,
            p.followups,
            uuid.UUID(cluster_id),
            owner_id=caller.user_id,
            reason="terminated by its owner",
            actor_id=caller.id,
            origin=origin,
        )


class ClustersState(SessionState):
    rows: list[dict[str, Any]] = []
    loaded: bool = False
    forbidden: bool = False
    detail: dict[str, Any] = {}
    detail_error: str = ""
    jobs: list[dict[str, Any]] = []
    job_id: str = ""
    job_status: str = ""
    job_logs: str = ""
    action_error: str = ""

    @rx.event
    @for_users()
    async def load(self) -> None:
        self.forbidden = Role.CUSTOMER not in principal().roles
        if not self.forbidden:
            self.rows = await asyncio.to_thread(_list, principal())
            self.loaded = True

    @rx.event
    @for_users(Role.CUSTOMER)
    async def tick(self, _now: str) -> None:
        self.rows = await asyncio.to_thread(_list, principal())

    def _cluster_id(self) -> str:
        return self.router.url.path.rstrip("/").rsplit("/", 1)[-1]

    @rx.event
    @for_users(Role.CUSTOMER, page_says=True)
    async def load_detail(self) -> None:
        self.job_id, self.job_logs, self.job_status, self.action_error = "", "", "", ""
        await self._refresh()

    @rx.event
    @for_users(Role.CUSTOMER)
    async def tick_detail(self, _now: str) -> None:
        await self._refresh()

    async def _refresh(self) -> None:
        try:
            self.detail = await asyncio.to_thread(_detail, principal(), self._cluster_id())
            self.detail_error = ""
        except (DomainError, ValueError):
            self.detail, self.detail_error = {}, "No such cluster."
            return
        # On an error the last list stays; the next tick tries again.
        with contextlib.suppress(DomainError):
            self.jobs = await asyncio.to_thread(_jobs, principal(), self._cluster_id())
        if self.job_id and self.job_status not in ("succeeded", "failed", "stopped"):
            await self._read_logs()

    async def _read_logs(self) -> None:
        try:
            self.job_status, self.job_logs = await asyncio.to_thread(
                _logs, principal(), self._cluster_id(), self.job_id
            )
        except DomainError as error:
            self.job_logs = error.message
        except ValueError:
            self.job_logs = "No such job."

    @rx.event
    @for_users(Role.CUSTOMER)
    async def show_logs(self, job_id: str) -> None:
        self.job_id, self.job_status, self.job_logs = job_id, "", "Loading logs…"
        await self._read_logs()

    @rx.event
    @for_users(Role.CUSTOMER)
    async def submit_job(self, form: dict[str, Any]) -> None:
        try:
            self.job_id = await asyncio.to_thread(
                _submit,
                principal(),
                self._cluster_id(),
                str(form.get("entrypoint", "")),
                str(form.get("runtime_env", "")),
            )
            self.action_error, self.job_status, self.job_logs = "", "", "Waiting for output…"
        except DomainError as error:
            self.action_error = error.message
        except ValueError:
            self.action_error = "No such cluster."
        await self._refresh()

    @rx.event
    @for_users(Role.CUSTOMER)
    async def extend(self, form: dict[str, Any]) -> Any:
        try:
            hours = int(str(form.get("hours", "")).strip() or 0)
            await asyncio.to_thread(_extend, principal(), self._cluster_id(), hours)
            self.action_error = ""
        except ValueError:
            self.action_error = "Extend by a whole number of hours."
        except DomainError as error:
            self.action_error = error.message
        await self._refresh()

    @rx.event
    @for_users(Role.CUSTOMER)
    async def terminate(self) -> None:
        try:
            await asyncio.to_thread(_terminate, principal(), self._cluster_id(), self._origin())
        except DomainError as error:
            self.action_error = error.message
        except ValueError:
            self.action_error = "No such cluster."
        await self._refresh()
