"""Who may call what: every route of the API against every kind of caller.

``RULES`` names each route's rule. A route added to the API without an entry here fails
``test_every_route_has_a_rule``; a route whose declared rule does not behave as its entry says fails
the matrix below.
"""

import re
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlmodel import col, delete

from portal.api.app import create_api
from portal.infra.db import session_scope
from portal.models import Role, User, UserRole
from portal.security.authentication import user_access_key
from portal.services.accounts import users
from tests.factories import access_token_for, api_key_for, device_token_for, make_user

# open: no credentials are read; public: anyone (a sent credential is still checked);
# signed_in: any user or their API key; account_owner: a signed-in user, not an API key;
# provider: a provider or their key (with the scope); customer: likewise for customers;
# admin: a signed-in admin; device: a worker agent's device token only.
RULES = {
    ("GET", "/api/v1/healthz"): "open",
    ("GET", "/api/v1/readyz"): "open",
    ("GET", "/api/v1/metrics"): "open",
    ("POST", "/api/v1/auth/signup"): "public",
    ("POST", "/api/v1/auth/login"): "public",
    ("POST", "/api/v1/auth/unlock"): "public",
    ("POST", "/api/v1/auth/refresh"): "public",
    ("POST", "/api/v1/auth/logout"): "public",
    ("POST", "/api/v1/auth/wallet/challenge"): "public",
    ("POST", "/api/v1/auth/wallet/verify"): "public",
    ("POST", "/api/v1/auth/browser/session"): "public",
    ("POST", "/api/v1/auth/browser/logout"): "public",
    ("GET", "/api/v1/auth/oauth/{provider}/login"): "public",
    ("GET", "/api/v1/auth/oauth/{provider}/callback"): "public",
    ("GET", "/api/v1/me"): "signed_in",
    ("PUT", "/api/v1/me/wallet"): "account_owner",
    ("PUT", "/api/v1/me/provider"): "account_owner",
    ("DELETE", "/api/v1/me/provider"): "account_owner",
    ("GET", "/api/v1/me/sessions"): "account_owner",
    ("DELETE", "/api/v1/me/sessions/{session_id}"): "account_owner",
    ("POST", "/api/v1/api-keys"): "account_owner",
    ("GET", "/api/v1/api-keys"): "account_owner",
    ("DELETE", "/api/v1/api-keys/{key_id}"): "account_owner",
    ("POST", "/api/v1/devices"): "provider",
    ("GET", "/api/v1/devices"): "provider",
    ("GET", "/api/v1/devices/{device_id}"): "provider",
    ("GET", "/api/v1/devices/{device_id}/metrics"): "provider",
    ("GET", "/api/v1/clusters/{cluster_id}/metrics"): "customer",
    ("DELETE", "/api/v1/devices/{device_id}"): "provider",
    ("POST", "/api/v1/devices/{device_id}/rotate-token"): "provider",
    ("PUT", "/api/v1/devices/{device_id}/price"): "provider",
    ("POST", "/api/v1/worker/register"): "device",
    ("POST", "/api/v1/worker/heartbeat"): "device",
    ("GET", "/api/v1/worker/commands"): "device",
    ("POST", "/api/v1/worker/commands/{command_id}/result"): "device",
    ("GET", "/api/v1/worker/challenge"): "device",
    ("POST", "/api/v1/worker/challenge/{challenge_id}"): "device",
    ("GET", "/api/v1/worker/autoscaler/nodes"): "device",
    ("POST", "/api/v1/worker/autoscaler/nodes"): "device",
    ("DELETE", "/api/v1/worker/autoscaler/nodes/{node_id}"): "device",
    ("POST", "/api/v1/worker/mesh/certificate"): "device",
    ("GET", "/api/v1/market/offers"): "public",
    ("POST", "/api/v1/market/quote"): "public",
    ("POST", "/api/v1/clusters"): "customer",
    ("GET", "/api/v1/clusters"): "customer",
    ("GET", "/api/v1/clusters/{cluster_id}"): "customer",
    ("DELETE", "/api/v1/clusters/{cluster_id}"): "customer",
    ("POST", "/api/v1/clusters/{cluster_id}/extend"): "customer",
    ("POST", "/api/v1/clusters/{cluster_id}/connect"): "customer",
    ("POST", "/api/v1/clusters/{cluster_id}/jobs"): "customer",
    ("GET", "/api/v1/clusters/{cluster_id}/jobs"): "customer",
    ("GET", "/api/v1/clusters/{cluster_id}/jobs/{job_id}"): "customer",
    ("GET", "/api/v1/clusters/{cluster_id}/jobs/{job_id}/logs"): "customer",
    ("POST", "/api/v1/clusters/{cluster_id}/jobs/{job_id}/stop"): "customer",
    ("GET", "/api/v1/billing/balance"): "signed_in",
    ("GET", "/api/v1/billing/ledger"): "signed_in",
    ("GET", "/api/v1/billing/usage"): "signed_in",
    ("GET", "/api/v1/billing/deposits"): "signed_in",
    ("POST", "/api/v1/billing/deposits"): "signed_in",
    ("GET", "/api/v1/billing/invoice.csv"): "signed_in",
    ("GET", "/api/v1/earnings"): "provider",
    ("GET", "/api/v1/payouts"): "provider",
    ("GET", "/api/v1/admin/payouts"): "admin",
    ("POST", "/api/v1/admin/payouts/{payout_id}/retry"): "admin",
    ("GET", "/api/v1/admin/devices"): "admin",
    ("POST", "/api/v1/admin/devices/{device_id}/block"): "admin",
    ("POST", "/api/v1/admin/devices/{device_id}/unblock"): "admin",
    ("GET", "/api/v1/admin/faults"): "admin",
    ("GET", "/api/v1/admin/analytics"): "admin",
    ("GET", "/api/v1/admin/analytics/{table}.csv"): "admin",
    ("GET", "/api/v1/admin/analytics/daily"): "admin",
    ("GET", "/api/v1/admin/analytics/daily.csv"): "admin",
    ("GET", "/api/v1/stats/network"): "public",
    ("POST", "/api/v1/graphql"): "public",
    ("POST", "/api/v1/admin/credits"): "admin",
    ("GET", "/api/v1/monitoring/targets"): "admin",
    ("GET", "/api/v1/admin/users"): "admin",
    ("PUT", "/api/v1/admin/users/{user_id}/roles"): "admin",
    ("POST", "/api/v1/admin/users/{user_id}/lock"): "admin",
    ("POST", "/api/v1/admin/users/{user_id}/unlock"): "admin",
    ("GET", "/api/v1/admin/audit"): "admin",
    ("GET", "/api/v1/admin/clusters"): "admin",
    ("POST", "/api/v1/admin/clusters/{cluster_id}/terminate"): "admin",
}
# Served outside the OpenAPI document: the root health routes and the JSON 404 for unknown API paths.
HIDDEN_ROUTES = {("GET", "/healthz"): "open", ("GET", "/readyz"): "open", ("GET", "/metrics"): "open"}

CALLERS = ["anonymous", "customer", "other_customer", "provider", "admin", "customer_api_key", "device"]

# What each rule lets through; everyone else is refused with 401 (no credential) or 403 (wrong one).
ALLOWED = {
    "open": set(CALLERS),
    "public": set(CALLERS),
    "signed_in": {"customer", "other_customer", "provider", "admin", "customer_api_key"},
    "account_owner": {"customer", "other_customer", "provider", "admin"},
    "provider": {"provider"},
    "customer": {"customer", "other_customer", "customer_api_key"},
    "admin": {"admin"},
    "device": {"device"},
}


# The error codes with which an access rule refuses a caller.
RULE_REFUSALS = {
    "unauthorized",
    "forbidden",
    "wrong_credential",
    "missing_role",
    "missing_scope",
    "ip_not_allowed",
}


def documented_routes() -> set[tuple[str, str]]:
    document = create_api().openapi()
    return {(method.upper(), path) for path, operations in document["paths"].items() for method in operations}


def test_every_route_has_a_rule():
    unlisted = documented_routes() - set(RULES)
    assert not unlisted, f"routes without an entry in the authorization matrix: {sorted(unlisted)}"
    assert not set(RULES) - documented_routes(), "the matrix lists routes that no longer exist"


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """One database for the whole matrix, with one account per kind of caller."""
    from portal.infra import migrations
    from portal.infra.cache import MemoryCache
    from portal.infra.db import build_engine
    from portal.parts import AppParts
    from tests.conftest import settings_for

    url = f"sqlite:///{tmp_path_factory.mktemp('matrix') / 'portal.db'}"
    migrations.upgrade(url)
    engine = build_engine(url)
    with session_scope(engine) as session:
        accounts = {
            "customer": make_user(session, Role.CUSTOMER),
            "other_customer": make_user(session, Role.CUSTOMER),
            "provider": make_user(session, Role.PROVIDER),
            "admin": make_user(session, Role.ADMIN),
        }
    parts = AppParts(settings_for(rate_limit_per_minute=1_000_000), engine, MemoryCache())
    client = TestClient(create_api(parts), raise_server_exceptions=False)
    yield client, engine, accounts
    engine.dispose()


def fresh_credential(engine, accounts, caller: str) -> str | None:
    """A new credential per test, so a route that ends a session cannot disturb the next test."""
    if caller == "anonymous":
        return None
    with session_scope(engine) as session:
        if caller == "customer_api_key":  # a customer of its own: an account holds at most 50 keys
            return api_key_for(session, make_user(session, Role.CUSTOMER))
        if caller == "device":
            return device_token_for(session, accounts["provider"].id)
        return access_token_for(session, accounts[caller])


# Routes that change their caller's own roles: the matrix gives each account its roles back after a call.
ROLE_CHANGING = {"/api/v1/me/provider"}
MATRIX_ROLES = {"customer": Role.CUSTOMER, "other_customer": Role.CUSTOMER, "provider": Role.PROVIDER}


def restore_roles(engine, cache, accounts) -> None:
    with session_scope(engine) as session:
        for name, role in MATRIX_ROLES.items():
            user = session.get(User, accounts[name].id)
            session.exec(delete(UserRole).where(col(UserRole.user_id) == user.id))
            users.grant_roles(session, user, [role])
            # Tokens read roles through the cache, which the route refreshed: forget what it says.
            cache.delete(user_access_key(user.id))


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda _: str(uuid.uuid4()), path)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(("method", "path"), sorted({**RULES, **HIDDEN_ROUTES}))
def test_each_caller_gets_what_the_rule_says(matrix, method, path, caller):
    client, engine, accounts = matrix
    rule = {**RULES, **HIDDEN_ROUTES}[(method, path)]
    credential = fresh_credential(engine, accounts, caller)
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    response = client.request(
        method, concrete(path), headers=headers, json={} if method in {"POST", "PUT"} else None
    )
    if path in ROLE_CHANGING:
        restore_roles(engine, client.app.state.parts.cache, accounts)
    assert response.status_code != 500, response.text
    refused_by_rule = response.status_code in (401, 403) and response.json()["error"]["code"] in RULE_REFUSALS
    if caller in ALLOWED[rule]:
        # A public route may still answer 401 about a credential in its body (a bad refresh token, say).
        assert not refused_by_rule, f"{caller} should pass {rule}: {response.text}"
    else:
        expected = 401 if caller == "anonymous" else 403
        assert response.status_code == expected, f"{caller} on {rule}: {response.text}"
        assert refused_by_rule, response.text
