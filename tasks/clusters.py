"""Cluster actors: each takes a cluster id (or none, for the periodic sweeps) and calls the provisioning
service, which is idempotent, so a redelivered or retried message is harmless."""

from __future__ import annotations

import logging
import uuid

import dramatiq

from portal import parts
from portal.infra.db import session_scope
from portal.services.rentals import provisioning

logger = logging.getLogger(__name__)
RETRIES = {"max_retries": 5, "min_backoff": 200, "max_backoff": 10_000, "time_limit": 120_000}


@dramatiq.actor(**RETRIES)
def advance_cluster(cluster_id: str) -> None:
    """Take a cluster's next steps: sent at deploy, on terminate and on each result of its nodes' commands."""
    p = parts.current()
    provisioning.advance(p.engine, p.settings, p.wakeups, uuid.UUID(cluster_id))


@dramatiq.actor(max_retries=0, time_limit=300_000)
def expire_clusters() -> None:
    p = parts.current()
    with session_scope(p.engine) as session:
        due = provisioning.expired(session)
    for cluster_id in due:
        try:
            provisioning.expire(p.engine, p.settings, p.wakeups, cluster_id)
        except Exception:  # one cluster's trouble must not keep the others running past their time
            logger.exception("expiring cluster %s failed", cluster_id)


@dramatiq.actor(max_retries=0, time_limit=300_000)
def reconcile_clusters() -> None:
    """Finish what a killed worker left half done: clusters mid-way, devices not yet returned."""
    p = parts.current()
    with session_scope(p.engine) as session:
        unfinished = provisioning.unfinished(session)
    for cluster_id in unfinished:
        try:
            # Not waiting: a cluster whose lock is held is being advanced by someone else right now.
            provisioning.advance(p.engine, p.settings, p.wakeups, cluster_id, wait=False)
        except Exception:
            logger.exception("reconciling cluster %s failed", cluster_id)
