"""An admin gives and takes roles and locks accounts; each change is audited and bites at once."""

import pytest
from sqlmodel import select

from portal.infra.db import session_scope
from portal.models import AuditLog, Role
from portal.security.principal import RequestOrigin
from portal.services.accounts import admin_users, auth, users
from portal.services.errors import InvalidInput, Unauthorized
from tests.factories import make_user

LOGIN = {
    "email": "locked@example.com",
    "password": "a long test password",
    "origin": RequestOrigin(ip="10.0.0.9"),
}


def test_roles_become_exactly_those_chosen_and_the_change_is_audited(engine):
    with session_scope(engine) as session:
        admin, person = make_user(session, Role.ADMIN), make_user(session, Role.CUSTOMER)
        admin_users.set_roles(session, person.id, ["customer", "provider"], admin_id=admin.id)
        admin_users.set_roles(session, person.id, [Role.PROVIDER], admin_id=admin.id)
        assert users.roles_of(session, person.id) == {Role.PROVIDER}
        entries = session.exec(select(AuditLog).where(AuditLog.action == "user.roles")).all()
        assert [e.details["after"] for e in entries] == [["customer", "provider"], ["provider"]]
        assert entries[-1].details["before"] == ["customer", "provider"]


def test_an_admin_cannot_drop_their_own_admin_role_nor_lock_themselves(engine):
    with session_scope(engine) as session:
        admin = make_user(session, Role.ADMIN)
        with pytest.raises(InvalidInput):
            admin_users.set_roles(session, admin.id, [Role.CUSTOMER], admin_id=admin.id)
        with pytest.raises(InvalidInput):
            admin_users.set_locked(session, admin.id, True, admin_id=admin.id)
        assert users.roles_of(session, admin.id) == {Role.ADMIN}


def test_a_locked_account_cannot_sign_in_until_unlocked(parts):
    with session_scope(parts.engine) as session:
        admin = make_user(session, Role.ADMIN)
        person = make_user(session, Role.CUSTOMER, email=LOGIN["email"], password=LOGIN["password"])
        admin_users.set_locked(session, person.id, True, admin_id=admin.id)
    with session_scope(parts.engine) as session, pytest.raises(Unauthorized):
        auth.check_password(session, parts.cache, **LOGIN, settings=parts.settings)
    with session_scope(parts.engine) as session:
        admin_users.set_locked(session, person.id, False, admin_id=admin.id)
        actions = [e.action for e in session.exec(select(AuditLog)).all() if e.action.startswith("user.")]
        assert actions[-2:] == ["user.lock", "user.unlock"]
    with session_scope(parts.engine) as session:
        assert auth.check_password(session, parts.cache, **LOGIN, settings=parts.settings).id == person.id
