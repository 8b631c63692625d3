"""What an admin does to people's accounts: give or take roles, lock and unlock. Each change is audited with
the admin and the origin, and holds for the account's access tokens from the next request on
(``authentication.publish_user_access``); an admin cannot lock themselves out or drop their own admin role
(the last door in would close with it)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlmodel import Session, col, delete

from portal.infra.cache import Cache
from portal.models import Role, User, UserRole
from portal.security.authentication import publish_user_access
from portal.security.principal import RequestOrigin
from portal.services import audit
from portal.services.accounts import users
from portal.services.errors import InvalidInput


def set_roles(
    session: Session,
    cache: Cache,
    user_id: uuid.UUID,
    roles: Iterable[Role | str],
    *,
    admin_id: uuid.UUID,
    origin: RequestOrigin | None = None,
) -> set[Role]:
    """The account's roles become exactly ``roles``; what it had and has now go to the audit log."""
    wanted = {Role(role) for role in roles}
    user = users.get_user(session, user_id)
    before = users.roles_of(session, user.id)
    if user.id == admin_id and Role.ADMIN in before and Role.ADMIN not in wanted:
        raise InvalidInput("You cannot take your own admin role: ask another admin.")
    if wanted == before:
        return before
    session.exec(
        delete(UserRole).where(col(UserRole.user_id) == user.id, col(UserRole.role).not_in(wanted))  # type: ignore[call-overload]
    )
    users.grant_roles(session, user, wanted - before)
    publish_user_access(session, cache, user.id)
    audit.record(
        session,
        "user.roles",
        actor_id=f"user:{admin_id}",
        origin=origin,
        target_type="user",
        target_id=user.id,
        details={"before": sorted(before), "after": sorted(wanted)},
    )
    return wanted


def set_locked(
    session: Session,
    cache: Cache,
    user_id: uuid.UUID,
    locked: bool,
    *,
    admin_id: uuid.UUID,
    origin: RequestOrigin | None = None,
) -> User:
    """Lock an account (it can no longer sign in, and its sessions, tokens and keys stop working at once:
    every check reads ``is_active``, access tokens through the cache this republishes) or unlock it."""
    if user_id == admin_id and locked:
        raise InvalidInput("You cannot lock your own account.")
    user = users.get_user(session, user_id)
    if user.is_active == (not locked):
        return user
    user.is_active = not locked
    session.add(user)
    publish_user_access(session, cache, user.id)
    audit.record(
        session,
        "user.lock" if locked else "user.unlock",
        actor_id=f"user:{admin_id}",
        origin=origin,
        target_type="user",
        target_id=user.id,
    )
    return user
