"""Balances, ledger and usage lines for customers, earnings for providers, admin credit grants, and the
metering actor charging a running cluster."""

from sqlmodel import select

from portal.infra.db import session_scope
from portal.models import AuditLog, Cluster, Role, User
from portal.parts import in_use as parts_in_use
from portal.services.money import ledger
from portal.services.rentals import clusters
from tasks import billing as billing_actors
from tests.factories import access_token_for, make_user
from tests.test_clusters import SETTINGS, backdate, beat, run_to_running


def bearer(session, user) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token_for(session, user)}"}


def test_a_running_cluster_is_metered_and_shows_in_balance_ledger_usage_and_earnings(parts, api_client):
    cluster_id, customer_id, devices = run_to_running(parts.engine, [1], 1)
    backdate(parts.engine, cluster_id, 900)
    beat(parts.engine, devices)
    with parts_in_use(parts):
        billing_actors.meter_clusters.fn()
    with session_scope(parts.engine) as session:
        customer = bearer(session, session.get(User, customer_id))
        provider = bearer(session, session.get(User, devices[0].owner_id))
        cluster = session.get(Cluster, cluster_id)
        spent, held = clusters.spent_and_escrow(session, SETTINGS, cluster)
    balance = api_client.get("/api/v1/billing/balance", headers=customer).json()
    assert balance["escrow_micro"] == held + (spent - sum_usage(api_client, customer))
    usage = api_client.get(
        "/api/v1/billing/usage", params={"cluster_id": str(cluster_id)}, headers=customer
    ).json()
    (line,) = usage["items"]
    assert line["seconds"] >= 900 and line["amount_micro"] == 2_000_000 * line["seconds"] // 3600
    assert line["device_name"] == devices[0].name
    kinds = [
        entry["kind"] for entry in api_client.get("/api/v1/billing/ledger", headers=customer).json()["items"]
    ]
    assert kinds[0] == "cluster_charge" and "escrow_hold" in kinds and "credit_grant" in kinds
    earnings = api_client.get("/api/v1/earnings", headers=provider).json()
    assert (
        earnings["pending_micro"]
        == earnings["accrued_micro"]
        == line["amount_micro"] - line["amount_micro"] // 10
    )
    assert earnings["by_device"][0]["seconds"] == line["seconds"] and earnings["paid_micro"] == 0
    # Another customer sees none of it.
    with session_scope(parts.engine) as session:
        stranger = bearer(session, make_user(session, Role.CUSTOMER))
    assert api_client.get("/api/v1/billing/usage", headers=stranger).json()["total"] == 0


def sum_usage(api_client, headers) -> int:
    return sum(
        line["amount_micro"]
        for line in api_client.get("/api/v1/billing/usage", headers=headers).json()["items"]
    )


def test_admins_grant_credits_with_a_reason_and_bad_grants_change_nothing(parts, api_client):
    with session_scope(parts.engine) as session:
        admin = bearer(session, make_user(session, Role.ADMIN))
        customer = make_user(session, Role.CUSTOMER)
    granted = api_client.post(
        "/api/v1/admin/credits",
        json={"user_id": str(customer.id), "amount_micro": 7_000_000, "reason": "pilot"},
        headers=admin,
    )
    assert granted.status_code == 201 and granted.json() == {"available_micro": 7_000_000, "escrow_micro": 0}
    for body in (
        {"user_id": str(customer.id), "amount_micro": -5, "reason": "x"},
        {"user_id": str(customer.id), "amount_micro": 5, "reason": ""},
        {"user_id": "00000000-0000-0000-0000-000000000000", "amount_micro": 5, "reason": "x"},
    ):
        assert api_client.post("/api/v1/admin/credits", json=body, headers=admin).status_code in (404, 422)
    with session_scope(parts.engine) as session:
        assert ledger.available_balance(session, customer.id) == 7_000_000
        assert [
            a.action for a in session.exec(select(AuditLog).where(AuditLog.action == "billing.grant"))
        ] == ["billing.grant"]
        assert ledger.verify_books(session) == []
