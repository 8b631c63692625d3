"""Admin routes: people and the audit log (more arrive with devices, clusters and billing)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from portal.api.deps import SessionDep
from portal.api.users import user_out
from portal.schemas.auth import AuditEntryOut, UserOut
from portal.schemas.common import Limit, Offset, Page
from portal.security.access import ADMIN
from portal.security.principal import Principal
from portal.services import audit, users

router = APIRouter(prefix="/admin", tags=["admin"])
AdminCaller = Annotated[Principal, Depends(ADMIN)]


@router.get("/users", summary="Accounts, newest first; filter by email")
def list_users(
    session: SessionDep,
    _: AdminCaller,
    email: Annotated[str | None, Query(max_length=320)] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[UserOut]:
    rows, total = users.search_users(session, email=email, limit=limit, offset=offset)
    return Page(items=[user_out(session, user) for user in rows], total=total, limit=limit, offset=offset)


@router.get("/audit", summary="The audit log, newest first, with filters")
def audit_log(
    session: SessionDep,
    _: AdminCaller,
    action: Annotated[
        str | None, Query(max_length=64, description="Action or its prefix, e.g. auth.")
    ] = None,
    actor_id: Annotated[str | None, Query(max_length=64)] = None,
    target_id: Annotated[str | None, Query(max_length=64)] = None,
    outcome: Annotated[str | None, Query(pattern="^(success|failure)$")] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[AuditEntryOut]:
    entries, total = audit.search(
        session,
        action=action,
        actor_id=actor_id,
        target_id=target_id,
        outcome=outcome,
        since=since,
        until=until,
        limit=limit,
        offset=offset,
    )
    return Page(
        items=[AuditEntryOut.model_validate(entry, from_attributes=True) for entry in entries],
        total=total,
        limit=limit,
        offset=offset,
    )
