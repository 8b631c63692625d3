"""An admin gives and takes roles and locks accounts; each change is audited and bites at once."""

import dataclasses
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from portal.api.app import create_api
from portal.infra.cache import Cache, MemoryCache, RedisCache
from portal.infra.db import session_scope
from portal.models import AuditLog, Role
from portal.security.authentication import user_access_key
from portal.security.principal import RequestOrigin
from portal.services.accounts import admin_users, auth, users
from portal.services.errors import InvalidInput, Unauthorized
from tests.factories import access_token_for, make_user

CACHE = MemoryCache()
LOGIN = {
    "email": "locked@example.com",
    "password": "a long test password",
    "origin": RequestOrigin(ip="10.0.0.9"),
}


def test_roles_become_exactly_those_chosen_and_the_change_is_audited(engine):
    with session_scope(engine) as session:
        admin, person = make_user(session, Role.ADMIN), make_user(session, Role.CUSTOMER)
        admin_users.set_roles(session, CACHE, person.id, ["customer", "provider"], admin_id=admin.id)
        admin_users.set_roles(session, CACHE, person.id, [Role.PROVIDER], admin_id=admin.id)
        assert users.roles_of(session, person.id) == {Role.PROVIDER}
        entries = session.exec(select(AuditLog).where(AuditLog.action == "user.roles")).all()
        assert [e.details["after"] for e in entries] == [["customer", "provider"], ["provider"]]
        assert entries[-1].details["before"] == ["customer", "provider"]


def test_an_admin_cannot_drop_their_own_admin_role_nor_lock_themselves(engine):
    with session_scope(engine) as session:
        admin = make_user(session, Role.ADMIN)
        with pytest.raises(InvalidInput):
            admin_users.set_roles(session, CACHE, admin.id, [Role.CUSTOMER], admin_id=admin.id)
        with pytest.raises(InvalidInput):
            admin_users.set_locked(session, CACHE, admin.id, True, admin_id=admin.id)
        assert users.roles_of(session, admin.id) == {Role.ADMIN}


def test_a_locked_account_cannot_sign_in_until_unlocked(parts):
    with session_scope(parts.engine) as session:
        admin = make_user(session, Role.ADMIN)
        person = make_user(session, Role.CUSTOMER, email=LOGIN["email"], password=LOGIN["password"])
        admin_users.set_locked(session, CACHE, person.id, True, admin_id=admin.id)
    with session_scope(parts.engine) as session, pytest.raises(Unauthorized):
        auth.check_password(session, parts.cache, **LOGIN, settings=parts.settings)
    with session_scope(parts.engine) as session:
        admin_users.set_locked(session, CACHE, person.id, False, admin_id=admin.id)
        actions = [e.action for e in session.exec(select(AuditLog)).all() if e.action.startswith("user.")]
        assert actions[-2:] == ["user.lock", "user.unlock"]
    with session_scope(parts.engine) as session:
        assert auth.check_password(session, parts.cache, **LOGIN, settings=parts.settings).id == person.id


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(params=["memory", "redis"])
def api_and_cache(request, parts, cache_prefix) -> Iterator[tuple[TestClient, Cache]]:
    """The API over the test's database, with the in-process cache or Redis."""
    if request.param == "redis":
        cache: Cache = RedisCache(request.getfixturevalue("redis_url"), cache_prefix)
    else:
        cache = MemoryCache()
    with TestClient(
        create_api(dataclasses.replace(parts, cache=cache)), raise_server_exceptions=False
    ) as client:
        yield client, cache


def test_access_tokens_hold_role_changes_and_locks_from_the_next_request(api_and_cache, parts):
    api_client, cache = api_and_cache
    with session_scope(parts.engine) as session:
        boss, deputy = make_user(session, Role.ADMIN), make_user(session, Role.ADMIN, Role.CUSTOMER)
        person = make_user(session, Role.CUSTOMER)
        as_boss, as_deputy = (
            bearer(access_token_for(session, boss)),
            bearer(access_token_for(session, deputy)),
        )
        as_person = bearer(access_token_for(session, person))
    assert api_client.get("/api/v1/admin/users", headers=as_deputy).status_code == 200

    # The admin role taken: the deputy's token, minted as an admin's, is a customer's on the next request.
    taken = api_client.put(
        f"/api/v1/admin/users/{deputy.id}/roles", json={"roles": ["customer"]}, headers=as_boss
    )
    assert taken.status_code == 200 and taken.json()["roles"] == ["customer"]
    refused = api_client.get("/api/v1/admin/users", headers=as_deputy)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "missing_role"
    assert api_client.get("/api/v1/me", headers=as_deputy).status_code == 200

    # Locked: every token of the account is refused at once; unlocked, the same token works again.
    assert api_client.post(f"/api/v1/admin/users/{deputy.id}/lock", headers=as_boss).status_code == 200
    locked = api_client.get("/api/v1/me", headers=as_deputy)
    assert locked.status_code == 401 and locked.json()["error"]["code"] == "account_disabled"
    cache.delete(user_access_key(deputy.id))  # a lapsed or lost cache entry: the database says the same
    assert api_client.get("/api/v1/me", headers=as_deputy).status_code == 401
    assert api_client.post(f"/api/v1/admin/users/{deputy.id}/unlock", headers=as_boss).status_code == 200
    assert api_client.get("/api/v1/me", headers=as_deputy).status_code == 200

    # A customer who becomes a provider uses the provider's routes with the token they have.
    assert api_client.get("/api/v1/earnings", headers=as_person).status_code == 403
    assert api_client.put("/api/v1/me/provider", headers=as_person).status_code == 200
    assert api_client.get("/api/v1/earnings", headers=as_person).status_code == 200
    assert api_client.delete("/api/v1/me/provider", headers=as_person).status_code == 200
    assert api_client.get("/api/v1/earnings", headers=as_person).status_code == 403

    # Each change audited with the admin and where the request came from.
    with session_scope(parts.engine) as session:
        entries = session.exec(select(AuditLog).where(AuditLog.target_id == str(deputy.id))).all()
    assert [(e.action, e.actor_id, e.ip) for e in entries] == [
        (action, f"user:{boss.id}", "testclient") for action in ("user.roles", "user.lock", "user.unlock")
    ]
    for bad in ({"roles": []}, {"roles": ["root"]}, {}):
        answer = api_client.put(f"/api/v1/admin/users/{deputy.id}/roles", json=bad, headers=as_boss)
        assert answer.status_code == 422, answer.text
    assert api_client.post(f"/api/v1/admin/users/{boss.id}/lock", headers=as_boss).status_code == 422
    assert api_client.post(f"/api/v1/admin/users/{uuid.uuid4()}/lock", headers=as_boss).status_code == 404
