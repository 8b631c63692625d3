"""Billing actors: metering running clusters, paying providers and crediting deposits on Solana."""

from __future__ import annotations

import logging
import uuid

import dramatiq
from sqlmodel import col, select

from portal import parts
from portal.infra.db import session_scope
from portal.models import Cluster, ClusterState
from portal.parts import AppParts
from portal.services.money import deposits, metering, payouts, treasury
from portal.services.rentals import clusters

logger = logging.getLogger(__name__)


METERED_PER_TRANSACTION = 200
METERED_STATES = (ClusterState.RUNNING, ClusterState.DEGRADED)


@dramatiq.actor(max_retries=0, time_limit=300_000)
def meter_clusters() -> None:
    """Charge every running cluster's uptime since the last pass, a few hundred clusters per transaction;
    a chunk that fails is metered again cluster by cluster, so one cluster's trouble leaves none unmetered."""
    p = parts.current()
    with session_scope(p.engine) as session:
        running = session.exec(select(Cluster.id).where(col(Cluster.state).in_(METERED_STATES))).all()
    for start in range(0, len(running), METERED_PER_TRANSACTION):
        chunk = running[start : start + METERED_PER_TRANSACTION]
        try:
            _meter(p, chunk)
        except Exception:
            logger.exception("metering %d clusters together failed; metering them one by one", len(chunk))
            for cluster_id in chunk:
                try:
                    _meter(p, [cluster_id])
                except Exception:
                    logger.exception("metering cluster %s failed", cluster_id)


def _meter(p: AppParts, cluster_ids: list[uuid.UUID]) -> None:
    with session_scope(p.engine) as session:
        locked = clusters.lock_clusters(session, cluster_ids)
        metering.meter_clusters(session, p.settings, [c for c in locked if c.state in METERED_STATES])


@dramatiq.actor(max_retries=0, time_limit=600_000)
def settle_payouts() -> None:
    """Finish earlier payouts, pay every provider now due, and confirm what landed."""
    p = parts.current()
    result = payouts.settle(p.engine, p.settings, treasury.settlement(p.settings))
    if any(result.values()):
        logger.info("settlement pass", extra={"payouts": result})


@dramatiq.actor(max_retries=0, time_limit=300_000)
def watch_deposits() -> None:
    """Sweep new deposits to the treasury and credit the ones whose sweep landed."""
    p = parts.current()
    result = deposits.watch(p.engine, treasury.settlement(p.settings))
    if any(result.values()):
        logger.info("deposit watch pass", extra={"deposits": result})
