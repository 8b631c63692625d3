"""Customers' API keys: created with scopes, shown once, listed by prefix, revoked."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlmodel import Session, col, select

from portal.models import ApiKey
from portal.models.base import utcnow
from portal.security.principal import RequestOrigin
from portal.security.secrets import API_KEY_PREFIX, keyed_hash, new_token
from portal.services import audit, names
from portal.services.errors import Conflict, InvalidInput, NotFound

# What a key may do; a key holds a subset, its owner's roles still apply on top.
SCOPES = {
    "account:read": "See your own account: email, name, roles, wallet (GET /me).",
    "clusters:read": "See clusters, their jobs, logs and metrics.",
    "clusters:write": "Deploy, extend and terminate clusters; submit jobs.",
    "billing:read": "See balance, ledger, usage and invoices.",
    "billing:write": "Get a deposit address.",
    "devices:read": "See your devices and earnings (providers).",
    "devices:write": "Add, remove and rotate devices (providers).",
    "metrics:read": "Discover the agents' metrics endpoints for Prometheus (admins).",
}
MAX_ACTIVE_KEYS = 50


def create_key(
    session: Session,
    *,
    user_id: uuid.UUID,
    name: str,
    scopes: list[str],
    origin: RequestOrigin,
    expires_in_days: int | None = None,
) -> tuple[ApiKey, str]:
    """The stored key and the key itself, which is shown this once and never again."""
    name = names.shown_text(name, field="name")
    if not 1 <= len(name) <= 80:
        raise InvalidInput("Name the key (1 to 80 characters).", details={"field": "name"})
    unknown = sorted(set(scopes) - SCOPES.keys())
    if unknown or not scopes:
        raise InvalidInput(
            f"Choose scopes from: {', '.join(SCOPES)}."
            + (f" Unknown: {', '.join(unknown)}." if unknown else ""),
            details={"field": "scopes", "allowed": list(SCOPES)},
        )
    if len(list_keys(session, user_id)) >= MAX_ACTIVE_KEYS:
        raise Conflict(
            f"You already have {MAX_ACTIVE_KEYS} active keys; revoke one first.", code="too_many_keys"
        )
    key = new_token(API_KEY_PREFIX)
    stored = ApiKey(
        user_id=user_id,
        name=name,
        prefix=key[:12],
        key_hash=keyed_hash(key),
        scopes=sorted(set(scopes)),
        expires_at=utcnow() + timedelta(days=expires_in_days) if expires_in_days else None,
    )
    session.add(stored)
    session.flush()
    audit.record(
        session,
        "api_key.create",
        actor_id=f"user:{user_id}",
        origin=origin,
        target_type="api_key",
        target_id=stored.id,
        details={"prefix": stored.prefix, "scopes": stored.scopes},
    )
    return stored, key


def list_keys(session: Session, user_id: uuid.UUID) -> list[ApiKey]:
    return list(
        session.exec(
            select(ApiKey)
            .where(ApiKey.user_id == user_id, col(ApiKey.revoked_at).is_(None))
            .order_by(col(ApiKey.created_at).desc())
        ).all()
    )


def revoke_key(session: Session, *, user_id: uuid.UUID, key_id: uuid.UUID, origin: RequestOrigin) -> None:
    key = session.get(ApiKey, key_id)
    # Another user's key is "not found": ids reveal nothing.
    if key is None or key.user_id != user_id or key.revoked_at is not None:
        raise NotFound("No such API key.")
    key.revoked_at = utcnow()
    session.add(key)
    audit.record(
        session,
        "api_key.revoke",
        actor_id=f"user:{user_id}",
        origin=origin,
        target_type="api_key",
        target_id=key.id,
        details={"prefix": key.prefix},
    )
