"""Turning a bearer credential into a principal: JWT access token, customer API key or device token.

An access token says who and which session; its roles are those of its minting, up to
``PORTAL_ACCESS_TOKEN_TTL_S`` old. So the roles and lock a request is judged by are the account's now: read
from the cache (``user_access_key``), from the database on a miss, and republished by every service that
changes them once its change commits (``publish_user_access``). A role taken or an account locked holds from
the next request on; a role given works without signing in again.
"""

from __future__ import annotations

import logging
import random
import uuid
from datetime import timedelta

from sqlalchemy import event
from sqlmodel import Session, col, select

from portal.infra.cache import Cache
from portal.models import ApiKey, Device, Role, User, UserRole
from portal.models.base import utcnow
from portal.security.jwt import InvalidToken, decode_access_token
from portal.security.principal import Principal, PrincipalKind
from portal.security.secrets import API_KEY_PREFIX, DEVICE_TOKEN_PREFIX, keyed_hash
from portal.services.accounts.users import roles_of
from portal.services.errors import Unauthorized

logger = logging.getLogger(__name__)

# A key's last use is written at most this often, so a busy key does not write on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
DEVICE_TOKEN_TTL_S = 300
# How long an account's roles and lock are cached for its access tokens. Changes made through the services
# republish the entry at once; this bounds only what bypasses them (a crash between the commit and the
# publish, another portal's in-process cache, a hand edit of the database).
USER_ACCESS_TTL_S = 60
LOCKED = "locked"
ACTIVE = "active:"


def revoked_session_key(session_id: object) -> str:
    return f"revoked-session:{session_id}"


def user_access_key(user_id: object) -> str:
    return f"user-access:{user_id}"


def read_user_access(session: Session, user_id: uuid.UUID) -> str:
    """The account's cache entry as the session sees it: ``locked``, or ``active:`` and its roles."""
    rows = session.exec(
        select(User.is_active, UserRole.role)
        .outerjoin(UserRole, col(UserRole.user_id) == User.id)
        .where(User.id == user_id)
    ).all()
    if not rows or not rows[0][0]:
        return LOCKED  # locked, or gone
    return ACTIVE + ",".join(sorted(str(role) for _, role in rows if role))


def publish_user_access(session: Session, cache: Cache, user_id: uuid.UUID) -> None:
    """Access tokens see the account's roles and lock as this transaction leaves them, from its commit on.

    Written after the commit, and with ``set``: a request that read the rows before the commit caches them
    only with ``add``, so it cannot put the older entry back over this one."""
    entry = read_user_access(session, user_id)

    def publish(_: Session) -> None:
        try:
            cache.set(user_access_key(user_id), entry, USER_ACCESS_TTL_S)
        except Exception:  # the change is committed; the cached entry lapses within its TTL
            logger.exception("could not publish an account's roles to the cache")

    event.listen(session, "after_commit", publish, once=True)


def authenticate_bearer(session: Session, cache: Cache, token: str) -> Principal:
    if token.startswith(f"{API_KEY_PREFIX}_"):
        return _api_key(session, token)
    if token.startswith(f"{DEVICE_TOKEN_PREFIX}_"):
        return _device_token(session, cache, token)
    return _access_token(session, cache, token)


def _access_token(session: Session, cache: Cache, token: str) -> Principal:
    """One cache round trip per request; the database only when the account's entry is not cached."""
    try:
        claims = decode_access_token(token)
    except InvalidToken:
        raise Unauthorized("The access token is invalid or has expired.", code="invalid_token") from None
    revoked, access = cache.get_many(
        [revoked_session_key(claims.session_id), user_access_key(claims.user_id)]
    )
    if revoked is not None:
        raise Unauthorized("This session has been signed out.", code="session_revoked")
    if access is None:
        access = read_user_access(session, claims.user_id)
        cache.add(user_access_key(claims.user_id), access, USER_ACCESS_TTL_S)
    if not access.startswith(ACTIVE):
        raise Unauthorized("The account is disabled.", code="account_disabled")
    held = access.removeprefix(ACTIVE).split(",")
    roles = frozenset(Role(role) for role in held if role in Role._value2member_map_)
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
