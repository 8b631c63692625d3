"""Accounts and the portal's edges against a hostile stranger: metrics kept to Prometheus, sign-up that does
not say who has an account, sign-in throttling a stranger cannot turn against the owner, redirects and
websockets that stay on the portal's own origin, and API-key scopes that cover the account itself."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlmodel import select

from portal.api.app import create_api
from portal.config import PROJECT_ROOT, Settings, SettingsError, load_settings
from portal.infra.db import session_scope
from portal.models import AuditLog, Role, User
from portal.parts import AppParts
from portal.security.firewall import security_headers
from portal.security.redirects import public_location
from portal.services.accounts import auth, mail
from tests.conftest import closed_port, free_port, settings_for, wait_until
from tests.factories import access_token_for, api_key_for, make_user

PASSWORD = "correct horse battery staple"
METRICS_TOKEN = "m3tr1cs-" + "t" * 40


# --- helpers ---------------------------------------------------------------------------------------


@dataclass
class Inbox:
    """A mail server on loopback (aiosmtpd) and what it received."""

    url: str
    messages: list[Message] = field(default_factory=list)

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.messages.append(message_from_bytes(envelope.content))  # type: ignore[attr-defined]
        return "250 OK"


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    from aiosmtpd.controller import Controller

    port = free_port()
    received = Inbox(url=f"smtp://127.0.0.1:{port}")
    controller = Controller(received, hostname="127.0.0.1", port=port)
    controller.start()
    yield received
    controller.stop()


def parts_with(parts: AppParts, **settings: object) -> AppParts:
    return AppParts(parts.settings.model_copy(update=settings), parts.engine, parts.cache, parts.wakeups)


def client_from(app: object, ip: str) -> TestClient:
    return TestClient(app, raise_server_exceptions=False, client=(ip, 50000))  # type: ignore[arg-type]


def signup(client: TestClient, email: str = "ada@example.com", password: str = PASSWORD) -> httpx.Response:
    return client.post(
        "/api/v1/auth/signup", json={"email": email, "password": password, "roles": ["customer"]}
    )


def login(client: TestClient, email: str = "ada@example.com", password: str = PASSWORD) -> httpx.Response:
    return client.post("/api/v1/auth/login", json={"email": email, "password": password})


def body_of(message: Message) -> str:
    return message.get_payload(decode=True).decode()  # type: ignore[union-attr]


# --- /metrics --------------------------------------------------------------------------------------


def test_metrics_answer_only_the_metrics_token_once_one_is_set(parts):
    client = TestClient(
        create_api(parts_with(parts, metrics_token=SecretStr(METRICS_TOKEN))), raise_server_exceptions=False
    )
    for path in ("/metrics", "/api/v1/metrics"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer " + "x" * 48}).status_code == 401
        assert client.get(path, headers={"Authorization": METRICS_TOKEN}).status_code == 401
        refused = client.get(path, headers={"Authorization": f"Bearer {METRICS_TOKEN[:-1]}"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_token"
        scraped = client.get(path, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert scraped.status_code == 200 and "http_requests_total" in scraped.text
    assert client.get("/api/v1/stats/network").status_code == 200  # the public view stays public
    assert client.get("/healthz").status_code == 200


def test_without_a_metrics_token_a_development_portal_serves_metrics_openly(api_client):
    assert api_client.get("/metrics").status_code == 200


def test_a_production_portal_refuses_to_start_without_a_metrics_token(monkeypatch):
    monkeypatch.setenv("PORTAL_ENVIRONMENT", "production")
    monkeypatch.setenv("PORTAL_SECRET_KEY", "s" * 48)
    with pytest.raises(
        SettingsError, match="PORTAL_METRICS_TOKEN must be set when PORTAL_ENVIRONMENT=production"
    ):
        load_settings()
    monkeypatch.setenv("PORTAL_METRICS_TOKEN", "short")
    with pytest.raises(SettingsError, match="PORTAL_METRICS_TOKEN"):
        load_settings()
    monkeypatch.setenv("PORTAL_METRICS_TOKEN", METRICS_TOKEN)
    assert METRICS_TOKEN not in repr(load_settings())


def test_the_shipped_prometheus_configs_send_the_metrics_token():
    prometheus = yaml.safe_load((PROJECT_ROOT / "deploy" / "prometheus.yml").read_text())
    (portal_job,) = [job for job in prometheus["scrape_configs"] if job["job_name"] == "portal"]
    token_file = portal_job["authorization"]["credentials_file"]
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    assert "PORTAL_METRICS_TOKEN" in compose["x-portal-env"]
    (secret,) = compose["services"]["prometheus"]["secrets"]
    assert token_file == f"/run/secrets/{secret}"
    assert compose["secrets"][secret] == {"environment": "PORTAL_METRICS_TOKEN"}
    documents = list(
        yaml.safe_load_all((PROJECT_ROOT / "deploy" / "k8s" / "base" / "prometheus-scrape.yaml").read_text())
    )
    (config_map,) = [d for d in documents if d["kind"] == "ConfigMap"]
    scrape = yaml.safe_load(config_map["data"]["prometheus.yml"])
    (k8s_job,) = [job for job in scrape["scrape_configs"] if job["job_name"] == "portal"]
    assert k8s_job["authorization"]["credentials_file"].startswith("/etc/prometheus/secrets/")


# --- sign-up ---------------------------------------------------------------------------------------


def test_a_taken_email_gets_the_same_sign_up_answer_and_reveals_nothing(api_client, parts):
    with session_scope(parts.engine) as session:
        owner = make_user(session, Role.PROVIDER, email="owner@example.com", password="the owner's password")
        owner.wallet_address = "So11111111111111111111111111111111111111112"
        session.add(owner)
        owner_id = owner.id
    new = signup(api_client, email="newcomer@example.com")
    taken = signup(api_client, email="Owner@Example.com")
    assert new.status_code == taken.status_code == 201
    assert new.json()["user"].keys() == taken.json()["user"].keys()
    shown = taken.json()["user"]
    assert shown["id"] != str(owner_id) and shown["roles"] == ["customer"] and shown["wallet_address"] is None
    # Nothing of the owner's changed: the stranger's password does not sign in, the owner's still does.
    assert login(api_client, email="owner@example.com").status_code == 401
    assert login(api_client, email="owner@example.com", password="the owner's password").status_code == 200
    with session_scope(parts.engine) as session:
        assert session.get(User, uuid.UUID(shown["id"])) is None
        attempts = session.exec(
            select(AuditLog).where(AuditLog.action == "user.signup", AuditLog.outcome == "failure")
        ).all()
        assert [entry.details["reason"] for entry in attempts] == ["email_taken"]


def test_a_taken_email_costs_the_same_password_hash_as_a_new_account(api_client, parts, monkeypatch):
    """The answer's time is the argon2 hash's: a taken email that skipped it would answer some 50 times
    faster. Counted, not timed, so a busy machine cannot make it flaky."""
    from portal.security import passwords
    from portal.services.accounts import auth, users

    hashed: list[str] = []

    def counting_hash(password: str) -> str:
        hashed.append(password)
        return passwords.hash_password(password)

    monkeypatch.setattr(auth, "hash_password", counting_hash)
    monkeypatch.setattr(users, "hash_password", counting_hash)
    with session_scope(parts.engine) as session:
        make_user(session, Role.CUSTOMER, email="owner@example.com")
    assert signup(api_client, email="newcomer@example.com").status_code == 201
    new_account = list(hashed)
    hashed.clear()
    assert signup(api_client, email="owner@example.com").status_code == 201
    assert len(new_account) == len(hashed) == 1 and hashed == new_account


def test_the_owner_of_a_taken_email_is_told_once_an_hour(parts, inbox):
    client = TestClient(create_api(parts_with(parts, smtp_url=inbox.url)), raise_server_exceptions=False)
    with session_scope(parts.engine) as session:
        make_user(session, Role.CUSTOMER, email="owner@example.com")
    assert signup(client, email="owner@example.com").status_code == 201
    (told,) = wait_until(lambda: inbox.messages, timeout_s=10, what="the owner's letter")
    assert told["To"] == "owner@example.com"
    assert "sign up" in told["Subject"]
    assert "No account was created" in body_of(told)
    assert signup(client, email="owner@example.com").status_code == 201
    assert signup(client, email="newcomer@example.com").status_code == 201
    # The mail thread sends in order: once a later letter is out, a second notice would be out too.
    later = mail.Mail(to="later@example.com", subject="later", body="after the sign-ups")
    assert mail.send_later(settings_for(smtp_url=inbox.url), later).result(timeout=10)
    assert [letter["To"] for letter in inbox.messages] == ["owner@example.com", "later@example.com"]


def test_mail_is_skipped_without_a_server_and_a_down_server_fails_quietly():
    letter = mail.Mail(to="a@example.com", subject="hello", body="hi")
    assert mail.send_later(settings_for(), letter) is None
    down = settings_for(smtp_url=f"smtp://127.0.0.1:{closed_port()}")
    sent = mail.send_later(down, letter)
    assert sent is not None and sent.result(timeout=15) is False
    with pytest.raises(ValueError):
        Settings(smtp_url="http://mail.example.com")


# --- sign-in throttling ----------------------------------------------------------------------------


def test_a_stranger_guessing_elsewhere_does_not_lock_the_owner_out(parts):
    app = create_api(parts)
    owner, stranger = client_from(app, "198.51.100.7"), client_from(app, "203.0.113.66")
    assert signup(owner).status_code == 201
    for _ in range(parts.settings.login_max_failures):
        assert login(stranger, password="a wrong guess").status_code == 401
    waiting = login(stranger)  # even the right password, from the stranger's address, waits
    assert waiting.status_code == 429 and waiting.json()["error"]["code"] == "locked_out"
    assert 0 < int(waiting.headers["retry-after"]) <= auth.FIRST_WAIT_S
    assert login(owner).status_code == 200


def test_each_wait_of_one_address_on_one_account_is_longer_up_to_the_lockout():
    settings = settings_for(login_max_failures=5, login_lockout_s=900)
    waits = [auth.pair_wait_s(failures, settings) for failures in range(1, 14)]
    assert waits == [0, 0, 0, 0, 15, 30, 60, 120, 240, 480, 900, 900, 900]


def test_one_address_guessing_across_accounts_is_cut_off(parts):
    client = client_from(create_api(parts), "203.0.113.9")
    cap = parts.settings.login_max_failures * 4
    for i in range(cap):
        assert login(client, email=f"victim{i}@example.com", password="a wrong guess").status_code == 401
    cut_off = login(client, email="another@example.com", password="a wrong guess")
    assert cut_off.status_code == 429 and cut_off.json()["error"]["code"] == "locked_out"


def test_guesses_from_everywhere_lock_the_account_and_the_owner_unlocks_it_by_email(parts, inbox):
    hostile = parts_with(parts, smtp_url=inbox.url, login_max_failures=3, login_account_max_failures=6)
    app = create_api(hostile)
    owner = client_from(app, "198.51.100.7")
    assert signup(owner).status_code == 201
    for address in ("203.0.113.1", "203.0.113.2", "203.0.113.3"):
        stranger = client_from(app, address)
        for _ in range(2):  # under each address's own limit
            assert login(stranger, password="a wrong guess").status_code == 401
    locked = login(owner)
    assert locked.status_code == 429 and locked.json()["error"]["code"] == "locked_out"
    assert "link emailed" in locked.json()["error"]["message"]

    (letter,) = wait_until(lambda: inbox.messages, timeout_s=10, what="the unlock letter")
    assert letter["To"] == "ada@example.com"
    link = re.search(r"(http\S+/unlock\?token=(\S+))", body_of(letter))
    assert link and link.group(1).startswith(hostile.settings.base_url)
    token = link.group(2)
    assert token not in str(parts.cache._values)  # the cache holds the token hashed, never as sent

    assert owner.post("/api/v1/auth/unlock", json={"token": token}).status_code == 204
    assert login(owner).status_code == 200
    reused = owner.post("/api/v1/auth/unlock", json={"token": token})
    assert reused.status_code == 401 and reused.json()["error"]["code"] == "invalid_unlock_token"
    assert owner.post("/api/v1/auth/unlock", json={}).status_code == 422

    # Locked again by strangers, the address that opened the link still signs in.
    for address in ("203.0.113.4", "203.0.113.5", "203.0.113.6"):
        stranger = client_from(app, address)
        for _ in range(2):
            login(stranger, password="a wrong guess")
    assert login(client_from(app, "192.0.2.200")).status_code == 429
    assert login(owner).status_code == 200


def test_without_mail_an_account_lock_says_nothing_of_a_link(parts):
    app = create_api(parts_with(parts, login_max_failures=3, login_account_max_failures=4))
    assert signup(client_from(app, "198.51.100.7")).status_code == 201
    for address in ("203.0.113.1", "203.0.113.2"):
        for _ in range(2):
            login(client_from(app, address), password="a wrong guess")
    locked = login(client_from(app, "198.51.100.7"))
    assert locked.status_code == 429 and "link" not in locked.json()["error"]["message"]


# --- redirects and the pages' policy ---------------------------------------------------------------


def test_api_redirects_never_follow_the_host_header(api_client, parts):
    for path in ("/healthz/", "/metrics/"):
        moved = api_client.get(path, headers={"Host": "evil.example"}, follow_redirects=False)
        assert moved.status_code == 307
        assert moved.headers["location"] == parts.settings.base_url + path.rstrip("/")


def test_only_redirects_to_the_requests_own_host_are_rewritten():
    base = "https://portal.example.com"
    assert public_location("http://evil.example/login/", "evil.example", base) == base + "/login/"
    assert public_location("/account", "evil.example", base) == "/account"
    oauth = "https://github.com/login/oauth/authorize?state=x"
    assert public_location(oauth, "evil.example", base) == oauth


def test_pages_connect_only_to_the_portals_own_origin():
    for base, websocket in (
        ("https://portal.example.com", "wss://portal.example.com"),
        ("http://127.0.0.1:3000", "ws://127.0.0.1:3000"),
    ):
        headers = dict(security_headers({"path": "/login", "type": "http"}, base))
        policy = headers[b"content-security-policy"].decode()
        (connect,) = [d.strip() for d in policy.split(";") if d.strip().startswith("connect-src")]
        assert connect == f"connect-src 'self' {websocket}"


@pytest.mark.slow
def test_the_running_portal_keeps_page_redirects_and_websockets_on_its_origin(portal):
    for path in ("/login", "/signup", "/unlock"):
        response = httpx.get(portal.url + path, headers={"Host": "evil.example"}, follow_redirects=False)
        assert "evil.example" not in response.headers.get("location", ""), response.headers
        assert response.status_code in (200, 301, 302, 307, 308)
    policy = httpx.get(portal.url + "/login/").headers["content-security-policy"]
    assert f"connect-src 'self' {portal.url.replace('http://', 'ws://')};" in policy


# --- API-key scopes on the account -----------------------------------------------------------------


def test_an_api_key_reads_the_account_only_with_the_account_scope(api_client, parts):
    with session_scope(parts.engine) as session:
        user = make_user(session, Role.CUSTOMER)
        billing_key = api_key_for(session, user, ["billing:read"])
        account_key = api_key_for(session, user, ["account:read"])
        signed_in = access_token_for(session, user)
    refused = api_client.get("/api/v1/me", headers={"Authorization": f"Bearer {billing_key}"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "missing_scope"
    for credential in (account_key, signed_in):
        me = api_client.get("/api/v1/me", headers={"Authorization": f"Bearer {credential}"})
        assert me.status_code == 200 and me.json()["id"] == str(user.id)
