"""Property-based fuzz of the auth endpoints: whatever a client sends, the answer is never a 500."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ENDPOINTS = [
    ("POST", "/api/v1/auth/signup", ["email", "password", "roles"]),
    ("POST", "/api/v1/auth/login", ["email", "password"]),
    ("POST", "/api/v1/auth/refresh", ["refresh_token"]),
    ("POST", "/api/v1/auth/logout", ["refresh_token"]),
    ("POST", "/api/v1/auth/wallet/challenge", ["address"]),
    ("POST", "/api/v1/auth/wallet/verify", ["address", "nonce", "signature"]),
    ("POST", "/api/v1/auth/browser/session", ["code"]),
    ("PUT", "/api/v1/me/wallet", ["address", "nonce", "signature"]),
    ("POST", "/api/v1/api-keys", ["name", "scopes", "expires_in_days"]),
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=300)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
# Values that look almost right reach deeper than random ones.
plausible = st.sampled_from(
    [
        "ada@example.com",
        "correct horse battery staple",
        "customer",
        "provider",
        "admin",
        "gpr_x",
        "gpk_x",
        "gpd_x",
        "11111111111111111111111111111111",
        "4Nd1mBQtrMJVYVfKf2PJy9NZUZdTAsp7D4xWLs4gDB4T",
        "clusters:read",
        "",
    ]
)
bodies = st.one_of(
    json_values,
    st.builds(
        dict,
        st.dictionaries(
            st.sampled_from(
                [
                    "email",
                    "password",
                    "roles",
                    "refresh_token",
                    "address",
                    "nonce",
                    "signature",
                    "code",
                    "name",
                    "scopes",
                    "expires_in_days",
                ]
            ),
            plausible | json_values,
            max_size=5,
        ),
    ),
)
tokens = st.none() | st.text(max_size=200) | plausible | st.just("eyJhbGciOiJIUzI1NiJ9.e30.x")


@pytest.mark.parametrize(("method", "path", "_fields"), ENDPOINTS, ids=[path for _, path, _ in ENDPOINTS])
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, token=tokens, raw=st.booleans())
def test_no_input_makes_the_auth_endpoints_fail_with_a_server_error(
    api_client, method, path, _fields, body, token, raw
):
    headers = {}
    if token is not None and token.isprintable() and token.isascii():
        headers["Authorization"] = f"Bearer {token}"
    if raw:
        response = api_client.request(
            method, path, content=repr(body).encode(), headers={**headers, "content-type": "application/json"}
        )
    else:
        response = api_client.request(method, path, json=body, headers=headers)
    assert response.status_code < 500, (response.status_code, response.text)
    assert "error" in response.json() or response.status_code in (200, 201, 204)


WORKER_ENDPOINTS = [
    ("POST", "/api/v1/worker/register"),
    ("POST", "/api/v1/worker/heartbeat"),
    ("POST", "/api/v1/worker/challenge/some-id"),
    ("POST", f"/api/v1/worker/commands/{'0' * 8}-0000-0000-0000-{'0' * 12}/result"),
    ("GET", "/api/v1/worker/commands?wait=0"),
]
worker_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "gpus": st.lists(
                st.dictionaries(
                    st.sampled_from(["index", "uuid", "model", "memory_mb", "util_pct", "temp_c", "power_w"]),
                    plausible | json_values,
                    max_size=5,
                ),
                max_size=3,
            ),
            "ray": json_values,
            "agent_version": plausible | json_values,
            "simulated": st.booleans() | json_values,
            "row_hashes": st.lists(st.text(max_size=70), max_size=3) | json_values,
            "rows": st.dictionaries(
                st.integers(-5, 5).map(str),
                st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=3),
                max_size=3,
            ),
            "ok": st.booleans() | json_values,
        },
    ),
)


@pytest.fixture
def device_token(parts):
    from portal.infra.db import session_scope
    from tests.factories import device_token_for, make_user

    with session_scope(parts.engine) as session:
        return device_token_for(session, make_user(session).id)


@pytest.mark.parametrize(("method", "path"), WORKER_ENDPOINTS, ids=[path for _, path in WORKER_ENDPOINTS])
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=worker_bodies)
def test_no_input_makes_the_worker_endpoints_fail_with_a_server_error(
    api_client, device_token, method, path, body
):
    response = api_client.request(
        method,
        path,
        json=body if method == "POST" else None,
        headers={"Authorization": f"Bearer {device_token}"},
    )
    assert response.status_code < 500, (response.status_code, response.text)
