"""Deposits, payouts and invoices over the API; the actors settle on the installation's LiteSVM chain."""

from __future__ import annotations

import csv
import io

import pytest
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from sqlmodel import select

from portal.infra.cache import MemoryCache
from portal.infra.db import build_engine, session_scope
from portal.infra.migrations import upgrade
from portal.models import Payout, PayoutState, Role, User
from portal.parts import AppParts
from portal.parts import in_use as parts_in_use
from portal.services.money import chain, treasury
from tasks import billing as billing_actors
from tests.conftest import settings_for
from tests.factories import access_token_for, make_user
from tests.test_billing import bearer
from tests.test_clusters import backdate, beat, run_to_running


@pytest.fixture
def parts(tmp_path):
    """The API's parts with their own data directory: their own chain, treasury and mint."""
    url = f"sqlite:///{tmp_path / 'portal.db'}"
    upgrade(url)
    engine = build_engine(url)
    settings = settings_for(
        data_dir=tmp_path,
        rate_limit_per_minute=100_000,
        payout_threshold_micro=100_000,
        platform_fee_bps=1000,
    )
    parts = AppParts(settings, engine, MemoryCache())
    with parts_in_use(parts):
        yield parts
    engine.dispose()


def test_a_customer_deposit_is_credited_once_and_listed(parts, api_client):
    with session_scope(parts.engine) as session:
        customer = bearer(session, make_user(session, Role.CUSTOMER))
    address = api_client.post("/api/v1/billing/deposits", headers=customer).json()
    assert api_client.post("/api/v1/billing/deposits", headers=customer).json() == address
    assert address["network"] == "local" and address["decimals"] == 6
    settlement = treasury.settlement(parts.settings)
    assert address["mint"] == str(settlement.treasury.mint)
    owner = Pubkey.from_string(address["deposit_address"])
    assert address["token_account"] == str(chain.token_account(owner, settlement.treasury.mint))

    assert api_client.get("/api/v1/billing/deposits", headers=customer).json()["items"] == []
    keys = settlement.treasury
    chain.mint_to(settlement.chain, keys.keypair, keys.mint, 6, owner, 12_500_000)
    billing_actors.watch_deposits.fn()
    billing_actors.watch_deposits.fn()

    (deposit,) = api_client.get("/api/v1/billing/deposits", headers=customer).json()["items"]
    assert deposit["state"] == "confirmed" and deposit["amount_micro"] == 12_500_000
    assert deposit["tx_signature"] in deposit["explorer_url"]
    assert api_client.get("/api/v1/billing/balance", headers=customer).json()["available_micro"] == 12_500_000
    (line,) = api_client.get("/api/v1/billing/ledger", headers=customer).json()["items"]
    assert line["kind"] == "deposit" and line["amount_micro"] == 12_500_000


def test_a_provider_is_paid_for_metered_usage_and_sees_the_payout(parts, api_client):
    cluster_id, _, devices = run_to_running(parts.engine, [1], 1)
    backdate(parts.engine, cluster_id, 1800)
    beat(parts.engine, devices)
    billing_actors.meter_clusters.fn()
    with session_scope(parts.engine) as session:
        provider_user = session.get(User, devices[0].owner_id)
        wallet = Pubkey.from_string(provider_user.wallet_address)
        provider = bearer(session, provider_user)
        admin = bearer(session, make_user(session, Role.ADMIN))
    before = api_client.get("/api/v1/earnings", headers=provider).json()
    assert before["pending_micro"] > 0 and before["paid_micro"] == 0
    assert before["by_day"][-1]["earned_micro"] == before["pending_micro"] and len(before["by_day"]) == 30

    billing_actors.settle_payouts.fn()

    (payout,) = api_client.get("/api/v1/payouts", headers=provider).json()["items"]
    assert payout["state"] == "confirmed" and payout["amount_micro"] == before["pending_micro"]
    assert payout["wallet_address"] == str(wallet) and payout["tx_signature"] in payout["explorer_url"]
    settlement = treasury.settlement(parts.settings)
    assert (
        settlement.chain.token_balance(chain.token_account(wallet, settlement.treasury.mint))
        == (payout["amount_micro"])
    )
    exposition = api_client.get("/metrics").text
    assert 'portal_payouts{state="confirmed"} 1.0' in exposition
    assert f"portal_payouts_paid_micro_total {float(payout['amount_micro'])!r}" in exposition
    after = api_client.get("/api/v1/earnings", headers=provider).json()
    assert after["paid_micro"] == payout["amount_micro"] and after["pending_micro"] == 0
    assert after["accrued_micro"] == before["accrued_micro"]

    listed = api_client.get("/api/v1/admin/payouts", params={"state": "confirmed"}, headers=admin).json()
    assert [row["id"] for row in listed["items"]] == [payout["id"]]
    retry = api_client.post(
        f"/api/v1/admin/payouts/{payout['id']}/retry", json={"reason": "x"}, headers=admin
    )
    assert retry.status_code == 409 and retry.json()["error"]["code"] == "invalid_state"
    missing = api_client.post(
        "/api/v1/admin/payouts/00000000-0000-0000-0000-000000000000/retry",
        json={"reason": "x"},
        headers=admin,
    )
    assert missing.status_code == 404
    assert (
        api_client.post(f"/api/v1/admin/payouts/{payout['id']}/retry", json={}, headers=admin).status_code
        == 422
    )
    assert api_client.get("/api/v1/admin/payouts", params={"state": "nope"}, headers=admin).status_code == 422


def test_an_admin_retries_a_failed_payout(parts, api_client):
    with session_scope(parts.engine) as session:
        provider = make_user(session, Role.PROVIDER)
        admin = make_user(session, Role.ADMIN)
        failed = Payout(
            provider_id=provider.id,
            wallet_address=str(Keypair().pubkey()),
            amount_micro=0,
            state=PayoutState.FAILED,
            error="insufficient token funds",
        )
        session.add(failed)
        session.flush()
        payout_id, headers = failed.id, {"Authorization": f"Bearer {access_token_for(session, admin)}"}
    retried = api_client.post(
        f"/api/v1/admin/payouts/{payout_id}/retry", json={"reason": "treasury topped up"}, headers=headers
    )
    assert retried.status_code == 200 and retried.json()["state"] == "pending"
    assert "treasury topped up" in retried.json()["state_reason"]
    audit = api_client.get("/api/v1/admin/audit", params={"action": "payout.retry"}, headers=headers).json()
    assert [entry["target_id"] for entry in audit["items"]] == [str(payout_id)]
    with session_scope(parts.engine) as session:
        assert session.exec(select(Payout.state)).one() == PayoutState.PENDING


def test_the_invoice_is_the_months_usage_lines_with_an_exact_total(parts, api_client):
    cluster_id, customer_id, devices = run_to_running(parts.engine, [1], 1)
    for _ in range(2):
        backdate(parts.engine, cluster_id, 700)
        beat(parts.engine, devices)
        billing_actors.meter_clusters.fn()
    with session_scope(parts.engine) as session:
        customer = bearer(session, session.get(User, customer_id))
    usage = api_client.get("/api/v1/billing/usage", headers=customer).json()["items"]
    month = usage[0]["period_start"][:7]

    response = api_client.get("/api/v1/billing/invoice.csv", params={"month": month}, headers=customer)

    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert f"gpu-portal-invoice-{month}.csv" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    lines, total = rows[:-1], rows[-1]
    assert len(lines) == len(usage) >= 2
    assert sum(int(row["amount_micro"]) for row in lines) == int(total["amount_micro"])
    assert int(total["amount_micro"]) == sum(line["amount_micro"] for line in usage)
    assert (
        total["amount_usd"]
        == f"{int(total['amount_micro']) // 1_000_000}.{int(total['amount_micro']) % 1_000_000:06d}"
    )
    empty = api_client.get("/api/v1/billing/invoice.csv", params={"month": "2001-01"}, headers=customer)
    assert empty.text.count("\n") == 2  # the header and a zero total
    for bad in ("2026-13", "26-11", "november"):
        assert (
            api_client.get("/api/v1/billing/invoice.csv", params={"month": bad}, headers=customer).status_code
            == 422
        )
