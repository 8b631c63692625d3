"""Accounts and sign-in through the API: passwords, refresh rotation, JWT checks, lockout, wallets, keys."""

import time
import uuid

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey
from solders.keypair import Keypair
from sqlmodel import select

from portal.infra.db import session_scope
from portal.models import ApiKey, AuditLog, AuthSession, Role, User
from portal.security.jwt import ISSUER
from tests.factories import access_token_for, api_key_for, make_user

PASSWORD = "correct horse battery staple"


def signup(client, email="ada@example.com", password=PASSWORD, roles=("customer",)):
    return client.post(
        "/api/v1/auth/signup", json={"email": email, "password": password, "roles": list(roles)}
    )


def login(client, email="ada@example.com", password=PASSWORD):
    return client.post("/api/v1/auth/login", json={"email": email, "password": password})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def audit_actions(parts) -> list[tuple[str, str]]:
    with session_scope(parts.engine) as session:
        return [(e.action, e.outcome) for e in session.exec(select(AuditLog).order_by(AuditLog.id)).all()]


# --- sign-up and sign-in ---------------------------------------------------------------------------


def test_sign_up_then_sign_in_then_see_yourself(api_client, parts):
    created = signup(api_client, roles=("customer", "provider"))
    assert created.status_code == 201, created.text
    assert created.json()["user"]["roles"] == ["customer", "provider"]

    tokens = login(api_client, email="ADA@example.com")
    assert tokens.status_code == 200
    body = tokens.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 900
    assert body["refresh_token"].startswith("gpr_")

    me = api_client.get("/api/v1/me", headers=bearer(body["access_token"]))
    assert me.status_code == 200
    assert me.json()["email"] == "ada@example.com"
    assert ("user.signup", "success") in audit_actions(parts)
    assert ("auth.login", "success") in audit_actions(parts)


@pytest.mark.parametrize(
    ("email", "password", "roles", "status", "code"),
    [
        ("not-an-email", PASSWORD, ("customer",), 422, "invalid_input"),
        ("bo@example.com", "short", ("customer",), 422, "invalid_input"),
        ("bo@example.com", PASSWORD, ("admin",), 422, "invalid_input"),
        ("bo@example.com", "x" * 201, ("customer",), 422, "invalid_input"),
    ],
)
def test_bad_sign_ups_are_refused_clearly_and_store_nothing(
    api_client, parts, email, password, roles, status, code
):
    response = signup(api_client, email=email, password=password, roles=roles)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    with session_scope(parts.engine) as session:
        assert session.exec(select(User)).all() == []


def test_an_email_holds_one_account_and_a_second_sign_up_is_answered_alike(api_client, parts):
    first = signup(api_client)
    again = signup(api_client, email="Ada@Example.com", password="another long password")
    assert again.status_code == first.status_code == 201  # no "email taken": that would reveal the account
    assert again.json()["user"].keys() == first.json()["user"].keys()
    assert again.json()["user"]["id"] != first.json()["user"]["id"]
    assert login(api_client, password="another long password").status_code == 401
    assert login(api_client).status_code == 200
    with session_scope(parts.engine) as session:
        assert len(session.exec(select(User)).all()) == 1


def test_a_wrong_password_and_an_unknown_email_get_the_same_answer(api_client, parts):
    signup(api_client)
    wrong = login(api_client, password="not the password")
    unknown = login(api_client, email="nobody@example.com")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert audit_actions(parts).count(("auth.login", "failure")) == 2


def test_repeated_failures_from_one_address_make_it_wait_with_retry_after(api_client, parts):
    signup(api_client)
    for _ in range(parts.settings.login_max_failures):
        assert login(api_client, password="guess").status_code == 401
    locked = login(api_client)  # even the right password, from this address, while it waits
    assert locked.status_code == 429
    assert locked.json()["error"]["code"] == "locked_out"
    assert 0 < int(locked.headers["retry-after"]) <= parts.settings.login_lockout_s
    assert login(api_client, email="someone-else@example.com", password="guess").status_code == 401


# --- access tokens ---------------------------------------------------------------------------------


def forge(claims: dict, key: str = "k" * 48, alg: str = "HS256") -> str:
    return jwt.encode({"alg": alg}, claims, OctKey.import_key(key))


def valid_claims(user_id: str, session_id: str, **changes) -> dict:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": user_id,
        "sid": session_id,
        "roles": ["admin"],
        "typ": "access",
        "iat": now,
        "exp": now + 600,
    }
    return claims | changes


def test_forged_expired_and_malformed_access_tokens_are_refused(api_client, parts):
    with session_scope(parts.engine) as session:
        user = make_user(session, Role.CUSTOMER)
        token = access_token_for(session, user)
    header, payload, signature = token.split(".")
    sid = str(uuid.uuid4())
    key = parts.settings.signing_key()
    refused = {
        "signed with another key": forge(valid_claims(str(user.id), sid)),
        "expired": forge(valid_claims(str(user.id), sid, exp=int(time.time()) - 5), key=key),
        "wrong issuer": forge(valid_claims(str(user.id), sid, iss="someone-else"), key=key),
        "not an access token": forge(valid_claims(str(user.id), sid, typ="refresh"), key=key),
        "payload swapped": f"{header}.{forge(valid_claims(str(user.id), sid)).split('.')[1]}.{signature}",
        "unsigned": f"{header.replace(header, 'eyJhbGciOiJub25lIn0')}.{payload}.",
        "garbage": "not-a-token",
    }
    for reason, bad in refused.items():
        response = api_client.get("/api/v1/me", headers=bearer(bad))
        assert response.status_code == 401, reason
        assert response.json()["error"]["code"] == "invalid_token", reason
    assert api_client.get("/api/v1/me", headers=bearer(token)).status_code == 200
    assert api_client.get("/api/v1/me", headers={"Authorization": f"Basic {token}"}).status_code == 401


# --- refresh rotation and sign-out -----------------------------------------------------------------


def test_refresh_rotates_and_a_reused_refresh_token_revokes_its_whole_family(api_client, parts):
    signup(api_client)
    first = login(api_client).json()
    second = api_client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    second = second.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert api_client.get("/api/v1/me", headers=bearer(second["access_token"])).status_code == 200

    # The first token again, as a thief who copied it would present it.
    reused = api_client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reused.status_code == 401
    assert reused.json()["error"]["code"] == "refresh_token_reused"
    # Every token of that session is now dead: the newest refresh token and the access tokens.
    assert (
        api_client.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]}).status_code
        == 401
    )
    gone = api_client.get("/api/v1/me", headers=bearer(second["access_token"]))
    assert gone.status_code == 401 and gone.json()["error"]["code"] == "session_revoked"
    assert ("auth.refresh_reuse", "failure") in audit_actions(parts)
    # Another sign-in is unaffected.
    assert (
        api_client.get("/api/v1/me", headers=bearer(login(api_client).json()["access_token"])).status_code
        == 200
    )


def test_an_unknown_refresh_token_is_refused(api_client):
    response = api_client.post("/api/v1/auth/refresh", json={"refresh_token": "gpr_made_up"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_refresh_token"


def test_sign_out_ends_the_refresh_and_access_tokens_at_once(api_client):
    signup(api_client)
    tokens = login(api_client).json()
    assert (
        api_client.post("/api/v1/auth/logout", json={"refresh_token": tokens["refresh_token"]}).status_code
        == 204
    )
    assert api_client.get("/api/v1/me", headers=bearer(tokens["access_token"])).status_code == 401
    assert (
        api_client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code
        == 401
    )


def test_sign_out_with_only_the_access_token(api_client):
    signup(api_client)
    tokens = login(api_client).json()
    assert api_client.post("/api/v1/auth/logout", headers=bearer(tokens["access_token"])).status_code == 204
    assert api_client.get("/api/v1/me", headers=bearer(tokens["access_token"])).status_code == 401
    assert api_client.post("/api/v1/auth/logout").status_code == 401


def test_a_user_sees_their_sessions_and_can_revoke_another_one(api_client):
    signup(api_client)
    laptop = login(api_client).json()
    phone = login(api_client).json()
    sessions = api_client.get("/api/v1/me/sessions", headers=bearer(laptop["access_token"])).json()
    assert len(sessions) == 2
    assert sum(s["current"] for s in sessions) == 1
    other = next(s for s in sessions if not s["current"])
    revoked = api_client.delete(f"/api/v1/me/sessions/{other['id']}", headers=bearer(laptop["access_token"]))
    assert revoked.status_code == 204
    assert api_client.get("/api/v1/me", headers=bearer(phone["access_token"])).status_code == 401
    assert api_client.get("/api/v1/me", headers=bearer(laptop["access_token"])).status_code == 200


def test_another_users_session_is_not_found_and_stays_signed_in(api_client, parts):
    signup(api_client)
    tokens = login(api_client).json()
    with session_scope(parts.engine) as session:
        stranger = make_user(session)
        stranger_token = access_token_for(session, stranger)
        stranger_session_id = session.exec(
            select(AuthSession.id).where(AuthSession.user_id == stranger.id)
        ).one()
    response = api_client.delete(
        f"/api/v1/me/sessions/{stranger_session_id}", headers=bearer(tokens["access_token"])
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert api_client.get("/api/v1/me", headers=bearer(stranger_token)).status_code == 200


# --- Solana wallets --------------------------------------------------------------------------------


def wallet_sign_in(client, keypair: Keypair, *, sign_with: Keypair | None = None, nonce: str | None = None):
    address = str(keypair.pubkey())
    challenge = client.post("/api/v1/auth/wallet/challenge", json={"address": address}).json()
    signature = (sign_with or keypair).sign_message(challenge["message"].encode())
    body = {"address": address, "nonce": nonce or challenge["nonce"], "signature": str(signature)}
    return client.post("/api/v1/auth/wallet/verify", json=body), body


def test_a_wallet_signs_in_with_a_signed_one_time_message(api_client):
    wallet = Keypair()
    response, _ = wallet_sign_in(api_client, wallet)
    assert response.status_code == 200, response.text
    me = api_client.get("/api/v1/me", headers=bearer(response.json()["access_token"])).json()
    assert me["wallet_address"] == str(wallet.pubkey())
    assert me["email"] is None and me["roles"] == ["customer"]
    again, _ = wallet_sign_in(api_client, wallet)
    assert api_client.get("/api/v1/me", headers=bearer(again.json()["access_token"])).json()["id"] == me["id"]


def test_a_replayed_wallet_signature_is_refused(api_client):
    first, body = wallet_sign_in(api_client, Keypair())
    assert first.status_code == 200
    replay = api_client.post("/api/v1/auth/wallet/verify", json=body)
    assert replay.status_code == 401
    assert replay.json()["error"]["code"] == "invalid_nonce"


def test_a_forged_wallet_signature_is_refused_and_burns_the_nonce(api_client):
    victim, attacker = Keypair(), Keypair()
    forged, body = wallet_sign_in(api_client, victim, sign_with=attacker)
    assert forged.status_code == 401
    assert forged.json()["error"]["code"] == "invalid_signature"
    assert api_client.post("/api/v1/auth/wallet/verify", json=body).json()["error"]["code"] == "invalid_nonce"


def test_malformed_wallet_input_is_a_4xx(api_client):
    assert api_client.post("/api/v1/auth/wallet/challenge", json={"address": "0" * 40}).status_code == 422
    _, body = wallet_sign_in(api_client, Keypair())
    body["signature"] = "not-base58-!!"
    body["nonce"] = "unknown"
    assert api_client.post("/api/v1/auth/wallet/verify", json=body).status_code in (401, 422)


def test_a_payout_wallet_is_linked_by_signature_and_only_to_one_account(api_client, parts):
    with session_scope(parts.engine) as session:
        provider = make_user(session, Role.PROVIDER)
        other = make_user(session, Role.PROVIDER)
        provider_token, other_token = access_token_for(session, provider), access_token_for(session, other)
    wallet = Keypair()

    def link(token: str):
        challenge = api_client.post(
            "/api/v1/auth/wallet/challenge", json={"address": str(wallet.pubkey())}
        ).json()
        body = {
            "address": str(wallet.pubkey()),
            "nonce": challenge["nonce"],
            "signature": str(wallet.sign_message(challenge["message"].encode())),
        }
        return api_client.put("/api/v1/me/wallet", json=body, headers=bearer(token))

    linked = link(provider_token)
    assert linked.status_code == 200 and linked.json()["wallet_address"] == str(wallet.pubkey())
    taken = link(other_token)
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "wallet_taken"


# --- API keys --------------------------------------------------------------------------------------


def test_an_api_key_is_shown_once_listed_by_prefix_used_and_revoked(api_client, parts):
    with session_scope(parts.engine) as session:
        user = make_user(session, Role.CUSTOMER)
        token = access_token_for(session, user)
    created = api_client.post(
        "/api/v1/api-keys",
        json={"name": "ci", "scopes": ["clusters:read", "account:read"]},
        headers=bearer(token),
    )
    assert created.status_code == 201
    key = created.json()["key"]
    assert key.startswith("gpk_") and created.json()["prefix"] == key[:12]

    listed = api_client.get("/api/v1/api-keys", headers=bearer(token)).json()
    assert [k["prefix"] for k in listed] == [key[:12]]
    assert key not in str(listed)
    with session_scope(parts.engine) as session:
        stored = session.exec(select(ApiKey)).one()
        assert key not in (stored.key_hash, stored.prefix)

    assert api_client.get("/api/v1/me", headers=bearer(key)).json()["id"] == str(user.id)
    # A key cannot mint or list keys: that takes a signed-in person.
    assert api_client.get("/api/v1/api-keys", headers=bearer(key)).status_code == 403
    assert api_client.get("/api/v1/api-keys", headers=bearer(token)).json()[0]["last_used_at"] is not None

    assert (
        api_client.delete(f"/api/v1/api-keys/{created.json()['id']}", headers=bearer(token)).status_code
        == 204
    )
    assert api_client.get("/api/v1/me", headers=bearer(key)).status_code == 401
    assert api_client.get("/api/v1/api-keys", headers=bearer(token)).json() == []


def test_another_users_api_key_is_not_found(api_client, parts):
    with session_scope(parts.engine) as session:
        owner, stranger = make_user(session), make_user(session)
        api_key_for(session, owner)
        key_id = session.exec(select(ApiKey.id)).one()
        stranger_token = access_token_for(session, stranger)
    response = api_client.delete(f"/api/v1/api-keys/{key_id}", headers=bearer(stranger_token))
    assert response.status_code == 404
    with session_scope(parts.engine) as session:
        assert session.get(ApiKey, key_id).revoked_at is None


def test_unknown_scopes_are_refused(api_client, parts):
    with session_scope(parts.engine) as session:
        token = access_token_for(session, make_user(session))
    response = api_client.post(
        "/api/v1/api-keys", json={"name": "x", "scopes": ["root"]}, headers=bearer(token)
    )
    assert response.status_code == 422
    assert "clusters:read" in response.json()["error"]["message"]


# --- admin -----------------------------------------------------------------------------------------


def test_admins_read_the_audit_log_with_filters(api_client, parts):
    signup(api_client)
    login(api_client, password="wrong password")
    login(api_client)
    with session_scope(parts.engine) as session:
        admin_token = access_token_for(session, make_user(session, Role.ADMIN))
    failures = api_client.get(
        "/api/v1/admin/audit",
        params={"action": "auth.login", "outcome": "failure"},
        headers=bearer(admin_token),
    ).json()
    assert failures["total"] == 1
    assert failures["items"][0]["details"]["email"] == "ada@example.com"
    assert failures["items"][0]["request_id"]
    everything = api_client.get(
        "/api/v1/admin/audit", params={"limit": 2}, headers=bearer(admin_token)
    ).json()
    assert everything["total"] == 3 and len(everything["items"]) == 2
    assert everything["items"][0]["at"] >= everything["items"][1]["at"]
    users = api_client.get(
        "/api/v1/admin/users", params={"email": "ada@"}, headers=bearer(admin_token)
    ).json()
    assert [u["email"] for u in users["items"]] == ["ada@example.com"]


def test_admin_routes_honour_the_ip_allowlist(parts, sqlite_url):
    from fastapi.testclient import TestClient

    from portal.api.app import create_api
    from portal.parts import AppParts

    restricted = AppParts(
        parts.settings.model_copy(update={"admin_ip_allowlist": ["10.0.0.0/8"]}), parts.engine, parts.cache
    )
    with session_scope(parts.engine) as session:
        admin_token = access_token_for(session, make_user(session, Role.ADMIN))
    client = TestClient(create_api(restricted), raise_server_exceptions=False)
    response = client.get("/api/v1/admin/users", headers=bearer(admin_token))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "ip_not_allowed"


# --- secrets stay secret ---------------------------------------------------------------------------


def test_no_password_or_token_appears_in_any_log_line(api_client, caplog):
    caplog.set_level("DEBUG")
    signup(api_client)
    tokens = login(api_client).json()
    refreshed = api_client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    ).json()
    key = api_client.post(
        "/api/v1/api-keys",
        json={"name": "k", "scopes": ["clusters:read"]},
        headers=bearer(refreshed["access_token"]),
    ).json()["key"]
    logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    assert "auth.login" in logged
    for secret in (
        PASSWORD,
        tokens["access_token"],
        tokens["refresh_token"],
        refreshed["refresh_token"],
        key,
    ):
        assert secret not in logged
