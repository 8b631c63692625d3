"""Billing actors: metering running clusters, paying providers and crediting deposits on Solana."""

from __future__ import annotations

import logging

import dramatiq
from sqlmodel import col, select

from portal.db import session_scope
from portal.models import Cluster, ClusterState
from portal.services import clusters, deposits, metering, payouts, treasury
from tasks.context import parts

logger = logging.getLogger(__name__)


@dramatiq.actor(max_retries=0, time_limit=300_000)
def meter_clusters() -> None:
    """Charge every running cluster's uptime since the last pass, each in its own transaction."""
    p = parts()
    with session_scope(p.engine) as session:
        running = session.exec(
            select(Cluster.id).where(col(Cluster.state).in_([ClusterState.RUNNING, ClusterState.DEGRADED]))
        ).all()
    for cluster_id in running:
        try:
            with session_scope(p.engine) as session:
                cluster = clusters.lock_cluster(session, None, cluster_id)
                if cluster.state in (ClusterState.RUNNING, ClusterState.DEGRADED):
                    metering.meter_cluster(session, p.settings, cluster)
        except Exception:  # one cluster's trouble must not leave the others unmetered
            logger.exception("metering cluster %s failed", cluster_id)


@dramatiq.actor(max_retries=0, time_limit=600_000)
def settle_payouts() -> None:
    """Finish earlier payouts, pay every provider now due, and confirm what landed."""
    p = parts()
    result = payouts.settle(p.engine, p.settings, treasury.settlement(p.settings))
    if any(result.values()):
        logger.info("settlement pass", extra={"payouts": result})


@dramatiq.actor(max_retries=0, time_limit=300_000)
def watch_deposits() -> None:
    """Sweep new deposits to the treasury and credit the ones whose sweep landed."""
    p = parts()
    result = deposits.watch(p.engine, treasury.settlement(p.settings))
    if any(result.values()):
        logger.info("deposit watch pass", extra={"deposits": result})
