"""The firewall inside the app: rate limits with Retry-After, body size limits, security headers."""

import time
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from portal.api.app import create_api
from portal.infra.cache import RedisCache
from portal.infra.db import session_scope
from portal.parts import AppParts
from tests.factories import access_token_for, make_user


@pytest.fixture(autouse=True)
def mid_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """The limiter counts per wall-clock minute; a run that straddles a minute's end would start afresh
    halfway through a test, so the firewall's clock stands still in the middle of one."""
    now = time.time()
    pinned = now - now % 60 + 30
    monkeypatch.setattr("portal.security.firewall.time", SimpleNamespace(time=lambda: pinned))


def client_with(parts: AppParts, **settings) -> TestClient:
    tuned = AppParts(parts.settings.model_copy(update=settings), parts.engine, parts.cache)
    return TestClient(create_api(tuned), raise_server_exceptions=False)


def test_requests_past_the_per_ip_limit_get_429_with_retry_after(parts):
    client = client_with(parts, rate_limit_per_minute=5)
    statuses = [client.get("/api/v1/healthz").status_code for _ in range(7)]
    assert statuses == [200] * 5 + [429] * 2
    limited = client.get("/api/v1/healthz")
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert limited.headers["x-request-id"]
    # Pages are not counted against the API's budget.
    assert client.get("/healthz").status_code == 200


@pytest.mark.integration
def test_the_rate_limit_is_shared_through_redis(parts, redis_url, cache_prefix):
    shared = AppParts(
        parts.settings.model_copy(update={"rate_limit_per_minute": 3}),
        parts.engine,
        RedisCache(redis_url, cache_prefix),
    )
    first, second = (TestClient(create_api(shared), raise_server_exceptions=False) for _ in range(2))
    statuses = [client.get("/api/v1/healthz").status_code for client in (first, second, first, second)]
    assert statuses == [200, 200, 200, 429]


def test_each_principal_has_its_own_budget_too(parts):
    client = client_with(parts, rate_limit_per_minute=4)
    with session_scope(parts.engine) as session:
        token = access_token_for(session, make_user(session))
    headers = {"Authorization": f"Bearer {token}"}
    # Each call counts once for the IP and once for the principal; the fifth crosses both.
    statuses = [client.get("/api/v1/me", headers=headers).status_code for _ in range(5)]
    assert statuses[:4] == [200] * 4 and statuses[4] == 429


def test_a_body_over_the_limit_is_refused_with_413(parts):
    client = client_with(parts, max_body_bytes=1024)
    declared = client.post(
        "/api/v1/auth/login", content=b"x" * 2048, headers={"content-type": "application/json"}
    )
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "payload_too_large"

    def chunks():
        for _ in range(4):
            yield b"y" * 512

    streamed = client.post(
        "/api/v1/auth/login", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413


def test_security_headers_are_on_every_response(api_client):
    for path in ("/api/v1/healthz", "/api/v1/nothing-here", "/healthz"):
        headers = api_client.get(path).headers
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "strict-origin-when-cross-origin"
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "strict-transport-security" not in headers  # plain HTTP: HSTS only over TLS
    assert (
        api_client.get("/api/v1/healthz").headers["content-security-policy"].startswith("default-src 'none'")
    )


def test_hsts_is_sent_over_tls(parts):
    client = TestClient(create_api(parts), base_url="https://portal.example", raise_server_exceptions=False)
    assert client.get("/api/v1/healthz").headers["strict-transport-security"].startswith("max-age=")


def test_behind_a_tls_proxy_cookies_are_secure_and_hsts_is_sent(parts):
    from portal.services.accounts import auth

    client = client_with(parts, public_url="https://portal.example.com")
    assert client.get("/api/v1/healthz").headers["strict-transport-security"].startswith("max-age=")
    with session_scope(parts.engine) as session:
        code = auth.start_browser_session(
            session, parts.cache, user=make_user(session), method="password", origin=auth.RequestOrigin()
        )
    response = client.post("/api/v1/auth/browser/session", json={"code": code})
    assert response.status_code == 204
    cookie = response.headers["set-cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
