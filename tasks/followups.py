"""The follow-ups of service commands as task messages: the actors are named as objects, each message is
best effort (what it asks is committed already, and the periodic passes do it anyway, only later)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from portal.infra.wakeups import Wakeups
from portal.services.providers import commands
from tasks import billing, clusters

logger = logging.getLogger(__name__)


def _best_effort(what: str, send: Callable[[], object]) -> None:
    try:
        send()
    except Exception:
        logger.exception("could not send %s; its periodic pass will do it", what)


class TaskFollowUps:
    """``portal.services.followups.FollowUps`` over the broker and the agents' wake-ups."""

    def __init__(self, wakeups: Wakeups) -> None:
        self.wakeups = wakeups

    def advance_cluster(self, cluster_id: uuid.UUID) -> None:
        _best_effort(f"advance_cluster({cluster_id})", lambda: clusters.advance_cluster.send(str(cluster_id)))

    def reconcile_clusters(self) -> None:
        _best_effort("reconcile_clusters", clusters.reconcile_clusters.send)

    def settle_payouts(self) -> None:
        _best_effort("settle_payouts", billing.settle_payouts.send)

    def wake_agent(self, device_id: uuid.UUID) -> None:
        commands.wake(self.wakeups, device_id)
