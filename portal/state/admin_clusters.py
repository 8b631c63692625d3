"""The admin's clusters page: every customer's clusters, filtered by state, and terminate with a reason."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import reflex as rx

from portal import parts
from portal.infra.db import session_scope
from portal.models import ClusterState, Role, User
from portal.security.principal import RequestOrigin
from portal.services.display import usd, utc_iso, words
from portal.services.rentals import clusters
from portal.state.clusters import STATE_COLORS
from portal.state.paging import PAGE_SIZE, PagedList
from portal.state.reasoned import ReasonedAction
from portal.state.session import SessionState, for_users, principal

ANY = "any"
STATE_CHOICES = [
    {"value": ANY, "label": "Any state"},
    *({"value": s.value, "label": words(s)} for s in ClusterState),
]


def _search(state: str, offset: int) -> tuple[list[dict[str, Any]], int]:
    p = parts.current()
    with session_scope(p.engine) as session:
        found, total = clusters.list_clusters(
            session, None, limit=PAGE_SIZE, offset=offset, state=None if state == ANY else state
        )
        rows = []
        for cluster in found:
            owner = session.get(User, cluster.owner_id)
            spent, held = clusters.spent_and_escrow(session, p.settings, cluster)
            rows.append(
                {
                    "id": str(cluster.id),
                    "name": cluster.name,
                    "owner": (owner.email or owner.display_name) if owner else "",
                    "state": words(cluster.state),
                    "color": STATE_COLORS.get(cluster.state, "gray"),
                    "reason": cluster.state_reason,
                    "gpus": f"{cluster.gpu_count} x {cluster.gpu_model}",
                    "created": utc_iso(cluster.created_at),
                    "spent": usd(spent),
                    "held": usd(held),
                    "active": cluster.state not in (*clusters.ENDED, ClusterState.TERMINATING),
                }
            )
    return rows, total


def _terminate(cluster_id: str, reason: str, origin: RequestOrigin) -> None:
    p, admin = parts.current(), principal()
    with session_scope(p.engine) as session:
        clusters.terminate(
            session,
            p.followups,
            uuid.UUID(cluster_id),
            owner_id=None,
            reason=f"terminated by an admin: {reason}",
            actor_id=admin.id,
            origin=origin,
        )


class AdminClustersState(PagedList, ReasonedAction, SessionState):
    rows: list[dict[str, Any]] = []
    state_filter: str = ANY
    loaded: bool = False

    async def _fetch(self) -> None:
        self.rows, self.total = await asyncio.to_thread(_search, self.state_filter, self.offset)
        self.loaded = True

    @rx.var
    def states(self) -> list[dict[str, str]]:
        return STATE_CHOICES

    @rx.event
    @for_users(Role.ADMIN, page_says=True)
    async def load(self) -> None:
        await self._fetch()

    @rx.event
    @for_users(Role.ADMIN)
    async def pick_state(self, value: str) -> None:
        self.state_filter = value if value in {c["value"] for c in STATE_CHOICES} else ANY
        self.offset = 0
        await self._fetch()

    @rx.event
    @for_users(Role.ADMIN)
    async def confirm_terminate(self) -> Any:
        return await self._act(
            _terminate,
            say_why="Say why, in a few words: the customer sees it on the cluster.",
            missing="No such cluster.",
            done="{label} is being terminated; its unused escrow returns to the customer.",
        )
