"""Telling the cluster actors about a cluster, from the API and the pages alike; call it after the commit,
so the actor finds what it is told about."""

from __future__ import annotations

import logging
import uuid

from tasks import billing, clusters

logger = logging.getLogger(__name__)


def send(actor_name: str, cluster_id: uuid.UUID) -> None:
    """Best effort: what is asked is already committed, and the reconciler (every few seconds) advances a
    cluster that no message reached."""
    try:
        getattr(clusters, actor_name).send(str(cluster_id))
    except Exception:
        logger.exception(
            "could not send %s for cluster %s; the reconciler will take it", actor_name, cluster_id
        )


def settle_soon() -> None:
    """Best effort: the periodic settlement pass picks up anything this message misses."""
    try:
        billing.settle_payouts.send()
    except Exception:
        logger.exception("could not send settle_payouts; the next settlement pass will take it")


def reconcile_soon() -> None:
    """Best effort: the reconciler runs every few seconds anyway."""
    try:
        clusters.reconcile_clusters.send()
    except Exception:
        logger.exception("could not send reconcile_clusters; its next periodic pass will run")
