"""The admin's payouts: every provider's, filtered by state, provider and date, and a failed one retried
through the settlement service (once: its amount stays in flight and no second transfer is booked),
audited with where the admin was; over the service on SQLite and PostgreSQL, and over the API."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from solders.keypair import Keypair
from sqlmodel import Session, col, func, select

from portal.infra.db import session_scope
from portal.models import AccountKind, AuditLog, LedgerEntry, Payout, PayoutState, Role, StateTransition
from portal.security.principal import RequestOrigin
from portal.services.errors import Conflict, InvalidInput
from portal.services.money import ledger, payouts
from tests.factories import RecordedFollowUps, access_token_for, make_provider, make_user

MARCH = datetime(2026, 3, 1, tzinfo=UTC)


def make_payout(
    session: Session,
    provider_id: uuid.UUID,
    state: PayoutState,
    created_at: datetime,
    amount: int = 5_000_000,
) -> Payout:
    payout = Payout(
        provider_id=provider_id,
        wallet_address=str(Keypair().pubkey()),
        amount_micro=amount,
        state=state,
        created_at=created_at,
        error="insufficient token funds" if state == PayoutState.FAILED else "",
    )
    session.add(payout)
    session.flush()
    return payout


def some_payouts(session: Session) -> dict[str, object]:
    ada = make_provider(session, email="ada@gpu.example")
    bo = make_provider(session, email="bo@other.example")
    made = {
        "ada_confirmed": make_payout(session, ada, PayoutState.CONFIRMED, MARCH),
        "ada_failed": make_payout(session, ada, PayoutState.FAILED, MARCH + timedelta(days=2)),
        "bo_failed": make_payout(session, bo, PayoutState.FAILED, MARCH + timedelta(days=5)),
        "bo_pending": make_payout(session, bo, PayoutState.PENDING, MARCH + timedelta(days=9)),
    }
    return {"ada": ada, "bo": bo, **{name: payout.id for name, payout in made.items()}}


def ids(rows: list[tuple[Payout, str | None]]) -> list[uuid.UUID]:
    return [payout.id for payout, _ in rows]


def test_admins_find_payouts_by_state_provider_and_date_newest_first(engine):
    with session_scope(engine) as session:
        made = some_payouts(session)
        everything, total = payouts.search_payouts(session, limit=50, offset=0)
        assert total == 4
        assert ids(everything) == [
            made[n] for n in ("bo_pending", "bo_failed", "ada_failed", "ada_confirmed")
        ]
        assert [email for _, email in everything][:2] == ["bo@other.example"] * 2

        failed, total = payouts.search_payouts(session, state="failed", limit=50, offset=0)
        assert (ids(failed), total) == ([made["bo_failed"], made["ada_failed"]], 2)
        by_email, _ = payouts.search_payouts(session, provider_email="GPU.example", limit=50, offset=0)
        assert ids(by_email) == [made["ada_failed"], made["ada_confirmed"]]
        by_id, _ = payouts.search_payouts(session, provider_id=made["bo"], limit=50, offset=0)
        assert ids(by_id) == [made["bo_pending"], made["bo_failed"]]
        # A percent sign is a character of the email, not a wildcard.
        assert payouts.search_payouts(session, provider_email="%", limit=50, offset=0)[1] == 0

        window, total = payouts.search_payouts(
            session, since=MARCH + timedelta(days=2), until=MARCH + timedelta(days=9), limit=50, offset=0
        )
        assert (ids(window), total) == ([made["bo_failed"], made["ada_failed"]], 2)
        second_page, total = payouts.search_payouts(session, limit=1, offset=1)
        assert (ids(second_page), total) == ([made["bo_failed"]], 4)

        with pytest.raises(InvalidInput):
            payouts.search_payouts(session, since=MARCH, until=MARCH, limit=50, offset=0)
        with pytest.raises(InvalidInput):
            payouts.search_payouts(session, state="lost", limit=50, offset=0)


def in_flight_and_entries(session: Session) -> tuple[int, int]:
    in_flight = ledger.get_account(session, AccountKind.PAYOUTS_IN_FLIGHT)
    return in_flight.balance_micro, session.exec(select(func.count()).select_from(LedgerEntry)).one()


def test_a_failed_payout_is_retried_once_audited_with_its_origin_and_nothing_else_is(engine):
    admin_id = uuid.uuid4()
    origin = RequestOrigin(ip="203.0.113.7", user_agent="admin's browser")
    followups = RecordedFollowUps()
    with session_scope(engine) as session:
        made = some_payouts(session)
        books_before = in_flight_and_entries(session)
    with session_scope(engine) as session:
        retried = payouts.retry(
            session,
            followups,
            made["ada_failed"],
            reason="treasury topped up",
            admin_id=admin_id,
            origin=origin,
        )
        assert retried.state == PayoutState.PENDING and retried.tx_signature is None
    assert followups.handed == [("settle_payouts", None)]  # the next settlement sends it
    with session_scope(engine) as session:
        # Its amount was held in flight since it was made: the retry books nothing, so nothing is paid twice.
        assert in_flight_and_entries(session) == books_before
        (entry,) = session.exec(select(AuditLog).where(AuditLog.action == "payout.retry")).all()
        assert (entry.target_id, entry.actor_id, entry.ip) == (
            str(made["ada_failed"]),
            f"user:{admin_id}",
            "203.0.113.7",
        )
        assert entry.details == {"amount_micro": 5_000_000, "reason": "treasury topped up"}
        moves = session.exec(
            select(StateTransition.to_state, StateTransition.reason)
            .where(StateTransition.entity_id == str(made["ada_failed"]))
            .order_by(col(StateTransition.at))
        ).all()
        assert moves[-1] == ("pending", "retried by an admin: treasury topped up")

    # A second click finds it pending: refused, not queued again; nor are payouts that have not failed.
    for name in ("ada_failed", "ada_confirmed", "bo_pending"):
        with session_scope(engine) as session, pytest.raises(Conflict):
            payouts.retry(session, followups, made[name], reason="again", admin_id=admin_id, origin=origin)
    with session_scope(engine) as session:
        assert session.exec(select(func.count()).select_from(AuditLog)).one() == 1
        assert session.get(Payout, made["bo_failed"]).state == PayoutState.FAILED
    assert len(followups.handed) == 1


def test_the_admin_api_filters_payouts_and_refuses_bad_filters_and_non_admins(parts, api_client):
    with session_scope(parts.engine) as session:
        made = some_payouts(session)
        admin = {"Authorization": f"Bearer {access_token_for(session, make_user(session, Role.ADMIN))}"}
        provider = {"Authorization": f"Bearer {access_token_for(session, make_user(session, Role.PROVIDER))}"}
        customer = {"Authorization": f"Bearer {access_token_for(session, make_user(session))}"}
    listed = api_client.get(
        "/api/v1/admin/payouts",
        params={"state": "failed", "provider": "other.example", "since": "2026-03-01", "until": "2026-03-31"},
        headers=admin,
    )
    assert listed.status_code == 200, listed.text
    (row,) = listed.json()["items"]
    assert (row["id"], row["provider_email"], row["state"]) == (
        str(made["bo_failed"]),
        "bo@other.example",
        "failed",
    )
    by_id = api_client.get("/api/v1/admin/payouts", params={"provider_id": str(made["ada"])}, headers=admin)
    assert by_id.json()["total"] == 2

    for bad in (
        {"state": "lost"},
        {"since": "2026-03-09", "until": "2026-03-01"},
        {"since": "last tuesday"},
        {"since": "1900-01-01T00:00:00Z"},
        {"provider_id": "ada"},
        {"provider": "x" * 321},
        {"limit": 0},
        {"offset": -1},
    ):
        refused = api_client.get("/api/v1/admin/payouts", params=bad, headers=admin)
        assert refused.status_code == 422, (bad, refused.text)

    retried = api_client.post(
        f"/api/v1/admin/payouts/{made['bo_failed']}/retry", json={"reason": "wallet fixed"}, headers=admin
    )
    assert retried.status_code == 200 and retried.json()["state"] == "pending"
    again = api_client.post(
        f"/api/v1/admin/payouts/{made['bo_failed']}/retry", json={"reason": "wallet fixed"}, headers=admin
    )
    assert again.status_code == 409
    missing = api_client.post(
        f"/api/v1/admin/payouts/{uuid.uuid4()}/retry", json={"reason": "x"}, headers=admin
    )
    assert missing.status_code == 404

    for caller in (provider, customer):
        assert api_client.get("/api/v1/admin/payouts", headers=caller).status_code == 403
        refused = api_client.post(
            f"/api/v1/admin/payouts/{made['ada_failed']}/retry", json={"reason": "mine"}, headers=caller
        )
        assert refused.status_code == 403
    with session_scope(parts.engine) as session:
        assert session.get(Payout, made["ada_failed"]).state == PayoutState.FAILED
