"""Turning a bearer credential into a principal: JWT access token, customer API key or device token."""

from __future__ import annotations

import random
import uuid
from datetime import timedelta

from sqlmodel import Session, select

from portal.infra.cache import Cache
from portal.models import ApiKey, Device, Role, User
from portal.models.base import utcnow
from portal.security.jwt import InvalidToken, decode_access_token
from portal.security.principal import Principal, PrincipalKind
from portal.security.secrets import API_KEY_PREFIX, DEVICE_TOKEN_PREFIX, keyed_hash
from portal.services.accounts.users import roles_of
from portal.services.errors import Unauthorized

# A key's last use is written at most this often, so a busy key does not write on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
DEVICE_TOKEN_TTL_S = 300


def revoked_session_key(session_id: object) -> str:
    return f"revoked-session:{session_id}"


def authenticate_bearer(session: Session, cache: Cache, token: str) -> Principal:
    if token.startswith(f"{API_KEY_PREFIX}_"):
        return _api_key(session, token)
    if token.startswith(f"{DEVICE_TOKEN_PREFIX}_"):
        return _device_token(session, cache, token)
    return _access_token(cache, token)


def _access_token(cache: Cache, token: str) -> Principal:
    try:
        claims = decode_access_token(token)
    except InvalidToken:
        raise Unauthorized("The access token is invalid or has expired.", code="invalid_token") from None
    if cache.get(revoked_session_key(claims.session_id)) is not None:
        raise Unauthorized("This session has been signed out.", code="session_revoked")
    roles = frozenset(Role(role) for role in claims.roles if role in Role._value2member_map_)
    return Principal(PrincipalKind.USER, claims.user_id, roles=roles, session_id=claims.session_id)


def _api_key(session: Session, token: str) -> Principal:
    key = session.exec(select(ApiKey).where(ApiKey.key_hash == keyed_hash(token))).first()
    now = utcnow()
    if key is None or key.revoked_at is not None:
        raise Unauthorized("The API key is invalid or has been revoked.", code="invalid_api_key")
    if key.expires_at is not None and key.expires_at <= now:
        raise Unauthorized("The API key has expired.", code="invalid_api_key")
    user = session.get(User, key.user_id)
    if user is None or not user.is_active:
        raise Unauthorized("The API key's account is disabled.", code="invalid_api_key")
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        key.last_used_at = now
        session.add(key)
    return Principal(
        PrincipalKind.API_KEY,
        key.user_id,
        roles=frozenset(roles_of(session, key.user_id)),
        scopes=frozenset(key.scopes),
        api_key_id=key.id,
    )


REVOKED = "revoked"


def _invalid_device_token() -> Unauthorized:
    return Unauthorized(
        "The device token is invalid or has been rotated; get a new one from the provider area.",
        code="invalid_device_token",
    )


def revoke_device_token(cache: Cache, token_hash: str) -> None:
    """Refuse the token from the cache on; outlives any entry cached from an earlier read."""
    cache.set(device_token_key(token_hash), REVOKED, DEVICE_TOKEN_TTL_S * 2)


def device_token_key(token_hash: str) -> str:
    return f"device-token:{token_hash}"


def cached_device(cache: Cache, token: str) -> Principal | None:
    """The device a token belongs to, from the cache (None: not cached, ask the database)."""
    return device_of_entry(cache.get(device_token_key(keyed_hash(token))))


def device_of_entry(found: str | None) -> Principal | None:
    """The device of a device token's cache entry (None: no entry)."""
    if found is None:
        return None
    if found == REVOKED:
        raise _invalid_device_token()
    device_id, owner_id = found.split()
    return Principal(PrincipalKind.DEVICE, uuid.UUID(owner_id), device_id=uuid.UUID(device_id))


def _device_token(session: Session, cache: Cache, token: str) -> Principal:
    """Every beat of every agent passes here: the cache answers, the database only on a miss. Rotating or
    removing a device deletes its entry once that commits (``devices.forget_token``)."""
    cached = cached_device(cache, token)
    if cached is not None:
        return cached
    token_hash = keyed_hash(token)
    found = session.exec(select(Device.id, Device.owner_id).where(Device.token_hash == token_hash)).first()
    if found is None:
        raise _invalid_device_token()
    device_id, owner_id = found
    # Only if absent: a revocation's tombstone written meanwhile must win over this (older) read.
    # Jittered: the entries of a swarm cached together after a restart must not all expire together.
    ttl_s = DEVICE_TOKEN_TTL_S * random.uniform(1, 2)
    cache.add(device_token_key(token_hash), f"{device_id} {owner_id}", ttl_s)
    return Principal(PrincipalKind.DEVICE, owner_id, device_id=device_id)
