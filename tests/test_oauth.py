"""Sign-in with an OpenID Connect provider, over real HTTP redirects to a provider started by the test."""

from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlmodel import select

from portal.api.app import create_api
from portal.infra.db import session_scope
from portal.models import AuthSession, OAuthIdentity, Role
from portal.parts import AppParts
from portal.security.cookies import SESSION_COOKIE
from portal.services.accounts import users
from tests.oidc_provider import CLIENT_ID, CLIENT_SECRET, OidcProvider, ProviderServer


@pytest.fixture
def provider():
    with ProviderServer(OidcProvider()) as running:
        yield running


def portal_for(parts: AppParts, provider: OidcProvider) -> TestClient:
    settings = parts.settings.model_copy(
        update={
            "oidc_name": "testid",
            "oidc_discovery_url": provider.discovery_url,
            "oidc_client_id": CLIENT_ID,
            "oidc_client_secret": SecretStr(CLIENT_SECRET),
            "public_url": "http://testserver",
        }
    )
    return TestClient(
        create_api(AppParts(settings, parts.engine, parts.cache)),
        raise_server_exceptions=False,
        follow_redirects=False,
    )


def sign_in_through(portal: TestClient) -> httpx.Response:
    """What the browser does: portal -> provider -> portal callback, following each redirect by hand."""
    start = portal.get("/api/v1/auth/oauth/testid/login")
    assert start.status_code == 302
    at_provider = httpx.get(start.headers["location"], follow_redirects=False)  # real HTTP to the provider
    assert at_provider.status_code == 302
    back = urlparse(at_provider.headers["location"])
    assert back.path == "/api/v1/auth/oauth/testid/callback"
    return portal.get(f"{back.path}?{back.query}")


def test_signing_in_with_openid_connect_creates_an_account_and_a_browser_session(parts, provider):
    portal = portal_for(parts, provider)
    start = portal.get("/api/v1/auth/oauth/testid/login")
    query = parse_qs(urlparse(start.headers["location"]).query)
    assert query["code_challenge_method"] == ["S256"] and query["state"] and query["nonce"]
    assert "portal_oauth" in start.headers["set-cookie"] and "HttpOnly" in start.headers["set-cookie"]

    finished = sign_in_through(portal)
    assert finished.status_code == 302 and finished.headers["location"] == "/account"
    cookie = finished.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert provider.token_requests[-1]["code_verifier"]  # PKCE verifier went to the token endpoint

    with session_scope(parts.engine) as session:
        identity = session.exec(select(OAuthIdentity)).one()
        assert (identity.provider, identity.subject) == ("testid", provider.subject)
        user = users.get_user_by_email(session, provider.email)
        assert user.id == identity.user_id and users.roles_of(session, user.id) == {Role.CUSTOMER}
        assert session.exec(select(AuthSession.method)).all() == ["oauth:testid"]
    # The cookie is a live browser session: signing this browser out works once.
    assert portal.post("/api/v1/auth/browser/logout").status_code == 204
    assert portal.post("/api/v1/auth/browser/logout").status_code == 401


def test_a_second_sign_in_finds_the_same_account(parts, provider):
    portal = portal_for(parts, provider)
    sign_in_through(portal)
    sign_in_through(portal)
    with session_scope(parts.engine) as session:
        assert len(session.exec(select(OAuthIdentity)).all()) == 1
        assert len(users.search_users(session)[0]) == 1


def test_a_verified_email_joins_the_existing_account_and_an_unverified_one_does_not(parts, provider):
    with session_scope(parts.engine) as session:
        existing = users.create_user(session, email=provider.email, password=None, roles=[Role.PROVIDER])
    provider.email_verified = False
    sign_in_through(portal_for(parts, provider))
    with session_scope(parts.engine) as session:
        assert session.exec(select(OAuthIdentity)).one().user_id != existing.id

    provider.subject, provider.email_verified = "another-subject", True
    sign_in_through(portal_for(parts, provider))
    with session_scope(parts.engine) as session:
        joined = session.exec(select(OAuthIdentity).where(OAuthIdentity.subject == "another-subject")).one()
        assert joined.user_id == existing.id


def test_a_callback_from_another_browser_or_a_replayed_state_is_refused(parts, provider):
    portal = portal_for(parts, provider)
    start = portal.get("/api/v1/auth/oauth/testid/login")
    at_provider = httpx.get(start.headers["location"], follow_redirects=False)
    back = urlparse(at_provider.headers["location"])
    stranger = portal_for(parts, provider)  # no binding cookie: a login-CSRF attempt
    refused = stranger.get(f"{back.path}?{back.query}")
    assert refused.status_code == 302 and refused.headers["location"] == "/login?error=oauth"
    assert SESSION_COOKIE not in refused.headers.get("set-cookie", "")
    # The state was taken by that attempt: the real browser cannot reuse it either.
    assert portal.get(f"{back.path}?{back.query}").headers["location"] == "/login?error=oauth"


def test_a_denied_or_unknown_provider_sign_in_says_so(parts, provider):
    portal = portal_for(parts, provider)
    denied = portal.get("/api/v1/auth/oauth/testid/callback?error=access_denied&state=x")
    assert denied.status_code == 302 and denied.headers["location"] == "/login?error=oauth"
    unknown = portal.get("/api/v1/auth/oauth/nope/login")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_a_provider_that_does_not_answer_is_a_503(parts):
    dead = OidcProvider(url="http://127.0.0.1:9")
    response = portal_for(parts, dead).get("/api/v1/auth/oauth/testid/login")
    assert response.status_code == 503
