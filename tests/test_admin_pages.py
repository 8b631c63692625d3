"""The admin's people, clusters and devices pages in Chromium: grant credits with a reason, change roles,
lock and unlock an account, terminate a customer's cluster with a reason, and block a device with a reason
its owner sees (then unblock it)."""

import re

import httpx
import pytest
from playwright.sync_api import Page, expect
from sqlmodel import select

from portal.infra.db import build_engine, session_scope
from portal.models import AuditLog, Cluster, Device, DeviceState, Role
from portal.services.accounts import users
from portal.services.money import billing
from tests.factories import make_device

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


def test_an_admin_blocks_a_device_with_a_reason_and_unblocks_it(portal, page: Page):
    engine = build_engine(portal.database_url)
    with session_scope(engine) as session:
        users.create_user(session, email="warden@example.com", password=PASSWORD, roles=[Role.ADMIN])
        owner = users.create_user(
            session, email="rig-owner@example.com", password=None, roles=[Role.PROVIDER]
        )
        device = make_device(session, owner.id, state=DeviceState.READY)
        device_id, name = device.id, device.name
    page.goto(portal.url + "/login?next=/admin/devices")
    page.locator("#email").fill("warden@example.com")
    page.locator("#password").fill(PASSWORD)
    page.locator("#submit-sign-in").click()

    row = page.locator("#admin-devices-table tr", has_text=name)
    row.get_by_role("button", name="Block", exact=True).click()
    expect(page.get_by_role("alertdialog")).to_contain_text(f"Block {name}")
    page.locator("#block-reason").fill("x")
    page.locator("#confirm-block").click()
    expect(page.locator("#block-error")).to_contain_text("Say why")  # in the dialog, which stays open
    page.locator("#block-reason").fill("GPU busy while idle: double-renting")
    page.locator("#confirm-block").click()
    expect(page.get_by_role("alertdialog")).to_have_count(0)
    expect(row).to_contain_text("blocked")
    expect(row).to_contain_text("double-renting")
    expect(page.locator("#admin-faults-table")).to_contain_text("double-renting")
    row.get_by_role("button", name="Unblock").click()
    expect(row.get_by_role("button", name="Block", exact=True)).to_be_visible()

    with session_scope(engine) as session:
        assert session.get(Device, device_id).state in (DeviceState.REGISTERED, DeviceState.VERIFYING)
        actions = [entry.action for entry in session.exec(select(AuditLog)).all()]
        assert "device.block" in actions and "device.unblock" in actions
    engine.dispose()
