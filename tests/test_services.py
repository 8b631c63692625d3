"""Services on SQLite and PostgreSQL: accounts, the ledger, demo seeding and network counts."""

import json
import stat

import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from portal.infra.db import session_scope
from portal.models import AccountKind, Cluster, ClusterState, Device, DeviceState, Role, User
from portal.security.passwords import verify_password
from portal.services import demo
from portal.services.accounts import users
from portal.services.demo import DEMO_CREDITS_MICRO, seed_demo
from portal.services.errors import Conflict, InvalidInput
from portal.services.money import ledger
from portal.services.network.network_stats import network_counts
from tests.factories import make_device, make_provider

pytestmark = pytest.mark.integration


def test_a_user_is_created_with_a_hashed_password_and_roles(engine):
    with session_scope(engine) as session:
        user = users.create_user(
            session,
            email="  Ada@Example.COM ",
            password="correct horse battery",
            roles=[Role.CUSTOMER, Role.PROVIDER],
        )
    with session_scope(engine) as session:
        stored = users.get_user_by_email(session, "ada@example.com")
        assert stored is not None and stored.id == user.id
        assert stored.password_hash.startswith("$argon2id$")
        assert verify_password(stored.password_hash, "correct horse battery")
        assert not verify_password(stored.password_hash, "wrong horse battery")
        assert users.roles_of(session, user.id) == {Role.CUSTOMER, Role.PROVIDER}


@pytest.mark.parametrize(
    ("email", "password", "error"),
    [("not-an-email", "long enough password", InvalidInput), ("a@example.com", "short", InvalidInput)],
)
def test_bad_account_input_is_refused_and_nothing_is_stored(engine, email, password, error):
    with pytest.raises(error), session_scope(engine) as session:
        users.create_user(session, email=email, password=password, roles=[Role.CUSTOMER])
    with session_scope(engine) as session:
        assert session.exec(select(User)).all() == []


def test_an_email_can_hold_one_account_only(engine):
    with session_scope(engine) as session:
        users.create_user(session, email="bo@example.com", password="a long password", roles=[Role.CUSTOMER])
    with pytest.raises(Conflict), session_scope(engine) as session:
        users.create_user(session, email="BO@example.com", password="another password", roles=[Role.PROVIDER])


def test_ledger_postings_balance_and_are_posted_once(engine):
    with session_scope(engine) as session:
        customer = users.create_user(
            session, email="c@example.com", password="a long password", roles=[Role.CUSTOMER]
        )
        first = ledger.grant_credits(
            session, user_id=customer.id, amount_micro=25_000_000, reason="welcome", idempotency_key="grant-1"
        )
        again = ledger.grant_credits(
            session, user_id=customer.id, amount_micro=25_000_000, reason="welcome", idempotency_key="grant-1"
        )
        assert again.id == first.id
        assert ledger.available_balance(session, customer.id) == 25_000_000
        assert ledger.get_account(session, AccountKind.GRANTS).balance_micro == -25_000_000
        assert ledger.verify_books(session) == []


def test_an_unbalanced_posting_is_refused(engine):
    with session_scope(engine) as session:
        customer = users.create_user(
            session, email="d@example.com", password="a long password", roles=[Role.CUSTOMER]
        )
        available = ledger.get_account(session, AccountKind.CUSTOMER_AVAILABLE, customer.id)
        fees = ledger.get_account(session, AccountKind.PLATFORM_FEES)
        with pytest.raises(ValueError, match="sum to zero"):
            ledger.post(
                session,
                kind="test",
                idempotency_key="unbalanced",
                legs=[ledger.Leg(available, 10), ledger.Leg(fees, -9)],
            )
        assert ledger.verify_books(session) == []


def test_two_postings_of_one_key_in_parallel_transactions_cannot_both_land(engine):
    with session_scope(engine) as session:
        customer = users.create_user(
            session, email="e@example.com", password="a long password", roles=[Role.CUSTOMER]
        )
        ledger.get_account(session, AccountKind.GRANTS)
        ledger.get_account(session, AccountKind.CUSTOMER_AVAILABLE, customer.id)
    with session_scope(engine) as session:
        ledger.grant_credits(session, user_id=customer.id, amount_micro=5, reason="r", idempotency_key="same")
    with pytest.raises(IntegrityError), session_scope(engine) as session:
        # A second writer that did not see the first posting still cannot record it again.
        session.add(ledger.LedgerTransaction(kind="credit_grant", idempotency_key="same"))
        session.flush()
    with session_scope(engine) as session:
        assert ledger.available_balance(session, customer.id) == 5


def test_demo_seeding_is_repeatable_and_keeps_its_logins_private(engine, tmp_path):
    with session_scope(engine) as session:
        first = seed_demo(session, tmp_path)
    with session_scope(engine) as session:
        second = seed_demo(session, tmp_path)
        assert [login.role for login in first] == ["admin", "customer", "provider"]
        assert first == second
        for login in first:
            user = users.get_user_by_email(session, login.email)
            assert verify_password(user.password_hash, login.password)
        customer = users.get_user_by_email(session, first[1].email)
        assert ledger.available_balance(session, customer.id) == DEMO_CREDITS_MICRO
        assert users.roles_of(session, users.get_user_by_email(session, first[0].email).id) == {Role.ADMIN}
    saved = tmp_path / "demo_logins.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert {row["email"] for row in json.loads(saved.read_text())} == {login.email for login in first}


def test_network_counts_follow_device_and_cluster_states(engine):
    with session_scope(engine) as session:
        owner = make_provider(session)
        make_device(session, owner, state=DeviceState.READY, gpus=4, model="H100-80GB")
        hired = make_device(
            session, owner, state=DeviceState.HIRED, gpus=2, model="A100-40GB", simulated=False
        )
        make_device(session, owner, state=DeviceState.OFFLINE, gpus=8)
        make_device(session, owner, state=DeviceState.BLOCKED, gpus=1)
        session.add(
            Cluster(
                owner_id=owner,
                name="c",
                gpu_model="A100-40GB",
                gpu_count=2,
                duration_hours=1,
                state=ClusterState.RUNNING,
            )
        )
        session.add(
            Cluster(
                owner_id=owner,
                name="old",
                gpu_model="A100-40GB",
                gpu_count=2,
                duration_hours=1,
                state=ClusterState.TERMINATED,
            )
        )
    with session_scope(engine) as session:
        counts = network_counts(session)
    assert counts.devices_online == 2
    assert (counts.gpus_available, counts.gpus_hired, counts.gpus_online) == (4, 2, 6)
    assert counts.simulated_gpus_online == 4
    assert counts.clusters_running == 1
    assert [(m.model, m.available, m.hired, m.simulated) for m in counts.by_model] == [
        ("H100-80GB", 4, 0, True),
        ("A100-40GB", 0, 2, False),
    ]
    assert hired.simulated is False


def test_demo_devices_are_made_once_and_get_fresh_tokens(engine, tmp_path):
    from portal.security.secrets import keyed_hash
    from portal.services.demo import demo_devices

    with session_scope(engine) as session:
        seed_demo(session, tmp_path)
        first = demo_devices(session, 4)
    with session_scope(engine) as session:
        again = demo_devices(session, 4)
        stored = {d.name: d for d in session.exec(select(Device)).all()}
        provider = users.get_user_by_email(session, "provider@demo.gpu-portal.test")
    assert sorted(stored) == ["demo-rig-1", "demo-rig-2", "demo-rig-3", "demo-rig-4"]
    assert [spec for _, spec in again] == ["1xH100-80GB", "1xH100-80GB", "1xH100-80GB", "2xA100-80GB"]
    assert {keyed_hash(token) for token, _ in again} == {d.token_hash for d in stored.values()}
    assert not {token for token, _ in first} & {token for token, _ in again}
    assert provider.wallet_address is not None


def test_a_device_whose_agent_went_quiet_no_longer_counts_as_online(engine):
    from datetime import timedelta

    from portal.models.base import utcnow

    with session_scope(engine) as session:
        owner = make_provider(session)
        quiet = make_device(session, owner, state=DeviceState.READY, gpus=2)
        make_device(session, owner, state=DeviceState.READY, gpus=1)
        quiet.last_heartbeat_at = utcnow() - timedelta(minutes=5)
        session.add(quiet)
    with session_scope(engine) as session:
        counts = network_counts(session)
    assert (counts.devices_online, counts.gpus_available) == (1, 1)


def test_demo_seeding_checks_a_password_again_only_when_its_hash_changed(engine, tmp_path, monkeypatch):
    with session_scope(engine) as session:
        first = seed_demo(session, tmp_path)
    checked = []
    monkeypatch.setattr(demo, "verify_password", lambda stored, password: checked.append(password) or True)
    with session_scope(engine) as session:
        assert seed_demo(session, tmp_path) == first
        assert checked == []  # each hash is the one seeding left: no Argon2 at a start
        users.set_password(session, users.get_user_by_email(session, first[0].email), "changed elsewhere")
    monkeypatch.undo()
    with session_scope(engine) as session:
        seed_demo(session, tmp_path)
        assert verify_password(
            users.get_user_by_email(session, first[0].email).password_hash, first[0].password
        )
