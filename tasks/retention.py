"""The retention actor: operational rows past their window go, a batch per transaction
(``services/retention.py``); money is never touched."""

from __future__ import annotations

import logging

import dramatiq

from portal import parts
from portal.services import retention

logger = logging.getLogger(__name__)


@dramatiq.actor(max_retries=0, time_limit=300_000)
def prune_old_rows() -> None:
    """Prune for at most four minutes of the five allowed; the next period carries on."""
    p = parts.current()
    pruned = retention.prune(p.engine, p.settings, budget_s=240.0)
    if any(pruned.rows.values()):
        logger.info("retention pruned %s", {table: rows for table, rows in pruned.rows.items() if rows})
