"""Telling the cluster actors about a cluster, from the API and the pages alike; call it after the commit,
so the actor finds what it is told about."""

from __future__ import annotations

import uuid

from tasks import clusters


def send(actor_name: str, cluster_id: uuid.UUID) -> None:
    getattr(clusters, actor_name).send(str(cluster_id))
