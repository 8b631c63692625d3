"""Accounts and their roles."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

from sqlalchemy import func
from sqlmodel import Session, col, select

from portal.models import Role, User, UserRole
from portal.security.passwords import MIN_PASSWORD_LENGTH, hash_password
from portal.services import audit
from portal.services.errors import Conflict, InvalidInput, NotFound

# Deliberately loose: one @, no spaces, a dot in the domain. Deliverability is the mail server's job.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def normalize_email(email: str) -> str:
    normalized = email.strip().lower()
    if len(normalized) > 320 or not _EMAIL.match(normalized):
        raise InvalidInput("That is not an email address.", details={"field": "email"})
    return normalized


def get_user_by_email(session: Session, email: str) -> User | None:
    return session.exec(select(User).where(User.email == normalize_email(email))).first()


def get_user(session: Session, user_id: uuid.UUID) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound("No such account.")
    return user


def roles_of(session: Session, user_id: uuid.UUID) -> set[Role]:
    rows = session.exec(select(UserRole.role).where(UserRole.user_id == user_id)).all()
    return {Role(role) for role in rows}


def grant_roles(session: Session, user: User, roles: Iterable[Role]) -> None:
    missing = set(roles) - roles_of(session, user.id)
    for role in sorted(missing):
        session.add(UserRole(user_id=user.id, role=role))
    session.flush()


def require_valid_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(
            f"The password needs at least {MIN_PASSWORD_LENGTH} characters.", details={"field": "password"}
        )


def create_user(
    session: Session,
    *,
    email: str | None,
    password: str | None,
    roles: Iterable[Role],
    display_name: str = "",
) -> User:
    """A new account; ``email`` may be None for accounts that sign in through a wallet or a provider."""
    email = normalize_email(email) if email is not None else None
    if password is not None:
        require_valid_password(password)
    if email is not None and session.exec(select(User.id).where(User.email == email)).first() is not None:
        raise Conflict("An account with that email already exists.", code="email_taken")
    user = User(
        email=email,
        display_name=display_name or (email.split("@")[0] if email else "new user"),
        password_hash=None if password is None else hash_password(password),
    )
    session.add(user)
    session.flush()
    grant_roles(session, user, roles)
    return user


def set_password(session: Session, user: User, password: str) -> None:
    user.password_hash = hash_password(password)
    session.add(user)
    session.flush()


def search_users(
    session: Session, *, email: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[User], int]:
    """Accounts newest first, optionally those whose email contains ``email``; one page and the total."""
    query = select(User)
    if email:
        query = query.where(col(User.email).contains(email.strip().lower()))
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    page = session.exec(query.order_by(col(User.created_at).desc()).offset(offset).limit(limit)).all()
    return list(page), total


def make_admin(session: Session, *, email: str, password: str | None) -> User:
    """Give an account the admin role, creating it (with this password) when there is none; audited."""
    user = get_user_by_email(session, email)
    created = user is None
    if user is None:
        if password is None:
            raise InvalidInput("A new admin account needs a password.", details={"field": "password"})
        user = create_user(session, email=email, password=password, roles=[Role.ADMIN])
    else:
        grant_roles(session, user, [Role.ADMIN])
    audit.record(
        session,
        "user.admin_grant",
        actor_id="system:cli",
        target_type="user",
        target_id=user.id,
        details={"created": created},
    )
    return user
