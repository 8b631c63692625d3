"""A person becomes a provider from the account page, and back (issue 20): audited with the origin, refused
with a clear message while one of their devices serves a rental or is on the market."""

from __future__ import annotations

import pytest
from sqlmodel import select

from portal.infra.cache import MemoryCache
from portal.infra.db import session_scope
from portal.models import AuditLog, DeviceState, Role
from portal.models.base import utcnow
from portal.security.principal import RequestOrigin
from portal.services.accounts import provider_role, users
from portal.services.errors import Conflict
from tests.conftest import settings_for
from tests.factories import access_token_for, api_key_for, make_device, make_user

SETTINGS = settings_for()
CACHE = MemoryCache()
ORIGIN = RequestOrigin(ip="10.1.2.3")


def audit_entries(session, action: str) -> list[AuditLog]:
    return list(session.exec(select(AuditLog).where(AuditLog.action == action)).all())


def test_a_customer_becomes_a_provider_and_back_audited_with_the_origin(engine):
    with session_scope(engine) as session:
        person = make_user(session, Role.CUSTOMER)
        assert provider_role.become_provider(session, CACHE, person.id, origin=ORIGIN) == {
            Role.CUSTOMER,
            Role.PROVIDER,
        }
        # A repeat changes nothing and writes nothing.
        provider_role.become_provider(session, CACHE, person.id, origin=ORIGIN)
        assert users.roles_of(session, person.id) == {Role.CUSTOMER, Role.PROVIDER}
        assert provider_role.stop_providing(session, CACHE, SETTINGS, person.id, origin=ORIGIN) == {
            Role.CUSTOMER
        }
        provider_role.stop_providing(session, CACHE, SETTINGS, person.id, origin=ORIGIN)
        assert users.roles_of(session, person.id) == {Role.CUSTOMER}
        [became] = audit_entries(session, "user.become_provider")
        [stopped] = audit_entries(session, "user.stop_providing")
    assert became.actor_id == f"user:{person.id}" and became.target_id == str(person.id)
    assert became.ip == "10.1.2.3" and became.outcome == "success"
    assert became.details == {"before": ["customer"], "after": ["customer", "provider"]}
    assert stopped.details == {"before": ["customer", "provider"], "after": ["customer"]}


def test_a_provider_with_no_other_role_is_a_customer_once_they_stop(engine):
    with session_scope(engine) as session:
        person = make_user(session, Role.PROVIDER)
        assert provider_role.stop_providing(session, CACHE, SETTINGS, person.id) == {Role.CUSTOMER}


def test_stopping_is_refused_while_a_device_serves_a_rental_naming_it(engine):
    with session_scope(engine) as session:
        person = make_user(session, Role.CUSTOMER, Role.PROVIDER)
        hired = make_device(session, person.id, state=DeviceState.HIRED)
        make_device(session, person.id, state=DeviceState.OFFLINE)  # not serving: not named
        with pytest.raises(Conflict) as refused:
            provider_role.stop_providing(session, CACHE, SETTINGS, person.id, origin=ORIGIN)
        assert refused.value.code == "devices_serving"
        assert refused.value.status_code == 409
        assert refused.value.message == (
            f"You cannot stop being a provider while your device {hired.name} serves a customer's rental. "
            "Try again once it ends."
        )
        assert refused.value.details == {"devices": [str(hired.id)]}
        assert Role.PROVIDER in users.roles_of(session, person.id)
        assert audit_entries(session, "user.stop_providing") == []


def test_stopping_is_refused_while_a_device_is_on_the_market_and_allowed_once_it_is_offline(engine):
    with session_scope(engine) as session:
        person = make_user(session, Role.CUSTOMER, Role.PROVIDER)
        first = make_device(session, person.id, state=DeviceState.READY)
        second = make_device(session, person.id, state=DeviceState.READY)
        with pytest.raises(Conflict) as refused:
            provider_role.stop_providing(session, CACHE, SETTINGS, person.id)
        assert refused.value.code == "devices_offered"
        names = ", ".join(sorted([first.name, second.name]))
        assert refused.value.message.startswith(f"Your 2 devices ({names}) are on the market: stop the agent")
        # Their agents stopped: silent past the offline threshold, they are off the market.
        for device in (first, second):
            device.last_heartbeat_at = utcnow().replace(year=2020)
            session.add(device)
        session.flush()
        assert provider_role.stop_providing(session, CACHE, SETTINGS, person.id) == {Role.CUSTOMER}


def test_the_api_adds_and_removes_the_role_and_answers_409_while_a_device_serves(api_client, parts):
    with session_scope(parts.engine) as session:
        person = make_user(session, Role.CUSTOMER)
        headers = {"Authorization": f"Bearer {access_token_for(session, person)}"}
        key_headers = {"Authorization": f"Bearer {api_key_for(session, person)}"}
    became = api_client.put("/api/v1/me/provider", headers=headers)
    assert became.status_code == 200, became.text
    assert became.json()["roles"] == ["customer", "provider"]
    with session_scope(parts.engine) as session:
        hired = make_device(session, person.id, state=DeviceState.HIRED)
    refused = api_client.delete("/api/v1/me/provider", headers=headers)
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "devices_serving"
    assert hired.name in refused.json()["error"]["message"]
    with session_scope(parts.engine) as session:
        hired = session.merge(hired)
        hired.state = DeviceState.OFFLINE
        session.add(hired)
    stopped = api_client.delete("/api/v1/me/provider", headers=headers)
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["roles"] == ["customer"]
    # Roles are the person's own to change, not an API key's.
    assert api_client.put("/api/v1/me/provider", headers=key_headers).status_code == 403
    assert api_client.put("/api/v1/me/provider").status_code == 401
