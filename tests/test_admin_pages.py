"""The admin's people and clusters pages in Chromium: grant credits with a reason, change roles, lock and
unlock an account, and terminate a customer's cluster with a reason."""

import re

import httpx
import pytest
from playwright.sync_api import Page, expect
from sqlmodel import select

from portal.infra.db import build_engine, session_scope
from portal.models import AuditLog, Cluster, Role
from portal.services.accounts import users
from portal.services.money import billing

pytestmark = [pytest.mark.slow, pytest.mark.browser]

PASSWORD = "a long test password"


def test_an_admin_grants_credits_sets_roles_locks_and_terminates(portal, page: Page):
    engine = build_engine(portal.database_url)
    with session_scope(engine) as session:
        users.create_user(session, email="boss@example.com", password=PASSWORD, roles=[Role.ADMIN])
        renter = users.create_user(
            session, email="renter-9@example.com", password=PASSWORD, roles=[Role.CUSTOMER]
        )
        cluster = Cluster(
            owner_id=renter.id,
            name="long-job",
            gpu_model="H100-80GB",
            gpu_count=1,
            duration_hours=1,
            price_per_gpu_hour_micro=2_000_000,
            state="running",
        )
        session.add(cluster)
        session.flush()
        renter_id, cluster_id = renter.id, cluster.id
    page.goto(portal.url + "/login")
    page.locator("#email").fill("boss@example.com")
    page.locator("#password").fill(PASSWORD)
    page.locator("#submit-sign-in").click()
    expect(page).to_have_url(re.compile(r"/account/?$"))

    page.goto(portal.url + "/admin/users")
    page.locator("#user-search").fill("renter-9")
    page.get_by_role("button", name="Search").click()
    table = page.locator("#users-table")
    expect(table.get_by_role("row")).to_have_count(2)  # the header and the renter
    table.get_by_role("button", name="Grant credits").click()
    page.locator("#grant-amount").fill("12.50")
    page.locator("#grant-reason").fill("x")
    page.locator("#confirm-grant").click()
    expect(page.locator("#admin-user-error")).to_contain_text("Say why")
    page.locator("#grant-reason").fill("refund for the outage")
    page.locator("#confirm-grant").click()
    expect(table).to_contain_text("$12.50")

    table.get_by_role("button", name="Roles").click()
    page.get_by_role("dialog").get_by_text("Provider").click()
    page.locator("#save-roles").click()
    expect(table).to_contain_text("Customer, Provider")

    table.get_by_role("button", name="Lock").click()
    expect(table.get_by_text("locked")).to_be_visible()
    login = {"email": "renter-9@example.com", "password": PASSWORD}
    assert httpx.post(portal.url + "/api/v1/auth/login", json=login).status_code == 401
    table.get_by_role("button", name="Unlock").click()
    expect(table.get_by_text("active")).to_be_visible()
    assert httpx.post(portal.url + "/api/v1/auth/login", json=login).status_code == 200

    page.goto(portal.url + "/admin/clusters")
    page.locator("#cluster-state-filter").get_by_role("combobox").click()
    page.get_by_role("option", name="Running").click()
    clusters = page.locator("#admin-clusters-table")
    expect(clusters).to_contain_text("long-job")
    clusters.get_by_role("button", name="Terminate").click()
    page.locator("#terminate-reason").fill("abuse report 1432")
    page.locator("#confirm-terminate").click()
    expect(page.locator("#no-clusters")).to_be_visible()  # no longer running

    with session_scope(engine) as session:
        assert billing.balance(session, renter_id)[0] == 12_500_000
        assert users.roles_of(session, renter_id) == {Role.CUSTOMER, Role.PROVIDER}
        ended = session.get(Cluster, cluster_id)
        assert ended.state in ("terminating", "terminated")
        actions = {entry.action: entry for entry in session.exec(select(AuditLog)).all()}
        assert {"billing.grant", "user.roles", "user.lock", "user.unlock", "cluster.terminate"} <= set(
            actions
        )
        assert actions["billing.grant"].details["reason"] == "refund for the outage"
        assert "abuse report 1432" in actions["cluster.terminate"].details["reason"]
    engine.dispose()


def test_the_admins_tables_page_through_long_lists(portal, page: Page):
    engine = build_engine(portal.database_url)
    with session_scope(engine) as session:
        users.create_user(session, email="pager-boss@example.com", password=PASSWORD, roles=[Role.ADMIN])
        for number in range(29):
            users.create_user(
                session, email=f"pager-{number:02d}@example.com", password=None, roles=[Role.CUSTOMER]
            )
    page.goto(portal.url + "/login")
    page.locator("#email").fill("pager-boss@example.com")
    page.locator("#password").fill(PASSWORD)
    page.locator("#submit-sign-in").click()
    expect(page).to_have_url(re.compile(r"/account/?$"))

    page.goto(portal.url + "/admin/users")
    page.locator("#user-search").fill("pager-")
    page.get_by_role("button", name="Search").click()
    newer, older = page.get_by_role("button", name="Newer"), page.get_by_role("button", name="Older")
    expect(page.get_by_text("1-25 of 30")).to_be_visible()
    expect(newer).to_be_disabled()
    older.click()
    expect(page.get_by_text("26-30 of 30")).to_be_visible()
    expect(page.locator("#users-table").get_by_role("row")).to_have_count(6)  # the header and five
    expect(older).to_be_disabled()
    newer.click()
    expect(page.get_by_text("1-25 of 30")).to_be_visible()
