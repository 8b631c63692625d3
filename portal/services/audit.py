"""The audit log: who did what to which target, from where, when, and whether it worked.

Each entry is a row in ``audit_log`` and a JSON line on the ``portal.audit`` logger, for shipping to
ELK or Graylog. Callers pass identifiers and outcomes, never secrets.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from portal.infra.logs import request_id_var
from portal.models import AuditLog
from portal.security.principal import Principal, RequestOrigin

logger = logging.getLogger("portal.audit")


def record(
    session: Session,
    action: str,
    *,
    actor: Principal | None = None,
    actor_id: str | None = None,
    origin: RequestOrigin | None = None,
    target_type: str | None = None,
    target_id: object = None,
    outcome: str = "success",
    details: dict[str, Any] | None = None,
) -> AuditLog:
    """Add an entry to the session's transaction; a caller about to fail commits it first."""
    entry = AuditLog(
        actor_kind=actor.kind.value if actor else ("user" if actor_id else "anonymous"),
        actor_id=actor.id if actor else actor_id,
        action=action,
        target_type=target_type,
        target_id=None if target_id is None else str(target_id),
        ip=origin.ip if origin else None,
        outcome=outcome,
        request_id=request_id_var.get(),
        details=details or {},
    )
    session.add(entry)
    session.flush()
    logger.info(
        action,
        extra={
            "audit": True,
            "actor": entry.actor_id,
            "actor_kind": entry.actor_kind,
            "target": f"{target_type}:{entry.target_id}" if target_type else None,
            "ip": entry.ip,
            "outcome": outcome,
            **{f"detail_{key}": value for key, value in (details or {}).items()},
        },
    )
    return entry


def search(
    session: Session,
    *,
    action: str | None = None,
    actor_id: str | None = None,
    outcome: str | None = None,
    target_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[AuditLog], int]:
    """Entries newest first, filtered; returns one page and the total that match."""
    query = select(AuditLog)
    if action:
        query = query.where(col(AuditLog.action).startswith(action))
    if actor_id:
        query = query.where(AuditLog.actor_id == actor_id)
    if outcome:
        query = query.where(AuditLog.outcome == outcome)
    if target_id:
        query = query.where(AuditLog.target_id == target_id)
    if since:
        query = query.where(AuditLog.at >= since)
    if until:
        query = query.where(AuditLog.at < until)
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    page = session.exec(
        query.order_by(col(AuditLog.at).desc(), col(AuditLog.id).desc()).offset(offset).limit(limit)
    )
    return list(page.all()), total
