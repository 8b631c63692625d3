"""The admin's payouts and analytics pages in Chromium: filter payouts by state, provider and date, retry a
failed one with a reason (the settlement then sends it once), and read the analytics' totals and charts,
which fit their boxes on a desktop and a phone, and the sign-up cohorts' words before anyone signed up.
Screenshots of both pages at 1440 and 390 px land in test-results/admin-money."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from playwright.sync_api import Browser, Page, expect
from sqlmodel import select

from portal.config import PROJECT_ROOT
from portal.infra.db import build_engine, session_scope
from portal.models import AuditLog, DeviceState, Payout, PayoutState, Role
from portal.models.base import utcnow
from portal.services.accounts import users
from tests.conftest import wait_until
from tests.factories import make_device, make_usage
from tests.test_admin_payouts import make_payout
from tests.test_ui_sweep import MEASURE

pytestmark = [pytest.mark.slow, pytest.mark.browser]

PASSWORD = "a long test password"
SCREENSHOTS = PROJECT_ROOT / "test-results" / "admin-money"


@pytest.fixture(scope="module")
def books(portal) -> dict[str, str]:
    """An admin; a provider paid once and failed once, another failed once with a payout on its way; a week
    of usage by two customers on their devices."""
    engine = build_engine(portal.database_url)
    now = utcnow()
    with session_scope(engine) as session:
        users.create_user(session, email="treasurer@example.com", password=PASSWORD, roles=[Role.ADMIN])
        ada = users.create_user(session, email="ada@rigs.example", password=None, roles=[Role.PROVIDER])
        bo = users.create_user(session, email="bo@farm.example", password=None, roles=[Role.PROVIDER])
        make_payout(session, ada.id, PayoutState.CONFIRMED, now - timedelta(days=3), amount=12_340_000)
        failed = make_payout(session, ada.id, PayoutState.FAILED, now - timedelta(days=1), amount=7_500_000)
        make_payout(session, bo.id, PayoutState.PENDING, now, amount=1_000_000)
        make_payout(session, bo.id, PayoutState.FAILED, now - timedelta(days=2), amount=2_000_000)
        h100 = make_device(session, ada.id, state=DeviceState.HIRED, model="H100-80GB")
        a100 = make_device(session, bo.id, state=DeviceState.HIRED, gpus=2, model="A100-40GB")
        renters = [
            users.create_user(session, email=f"renter-{n}@example.com", password=None, roles=[Role.CUSTOMER])
            for n in (1, 2)
        ]
        for days_ago in range(7):
            ended = now - timedelta(days=days_ago, minutes=5)
            make_usage(session, customer_id=renters[0].id, device=h100, ended_at=ended)
            if days_ago % 2 == 0:
                make_usage(
                    session,
                    customer_id=renters[1].id,
                    device=a100,
                    ended_at=ended,
                    gpu_count=2,
                    amount_micro=3_000_000,
                    fee_micro=300_000,
                )
        # Sign-up cohorts of earlier months (31 days apart: never one month twice): one customer each, active
        # the day after signing up and every other month since, up to two months ago (before the period).
        for months_ago in range(2, 6):
            joined = users.create_user(
                session, email=f"early-{months_ago}@example.com", password=None, roles=[Role.CUSTOMER]
            )
            joined.created_at = now - timedelta(days=31 * months_ago)
            session.add(joined)
            for later in range(0, months_ago - 1, 2):
                ended = joined.created_at + timedelta(days=31 * later + 1)
                make_usage(session, customer_id=joined.id, device=h100, ended_at=ended)
        failed_id = str(failed.id)
    engine.dispose()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return {"failed": failed_id, "database": portal.database_url}


def sign_in(page: Page, url: str, email: str = "treasurer@example.com") -> None:
    page.goto(url + "/login")
    page.locator("#email").fill(email)
    page.locator("#password").fill(PASSWORD)
    page.locator("#submit-sign-in").click()
    expect(page).to_have_url(re.compile(r"/account/?$"))


def test_the_cohorts_say_so_before_anyone_has_signed_up(portal, browser: Browser):
    # First in the module, before ``books`` adds anyone: the portal's database holds only this admin.
    engine = build_engine(portal.database_url)
    with session_scope(engine) as session:
        users.create_user(session, email="first-admin@example.com", password=PASSWORD, roles=[Role.ADMIN])
    engine.dispose()
    context = browser.new_context(viewport={"width": 390, "height": 844})
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        sign_in(page, portal.url, "first-admin@example.com")
        page.goto(portal.url + "/admin/analytics")
        empty = page.locator("#cohorts-empty")
        expect(empty).to_have_text("No customers signed up in the last 12 months.")
        expect(page.locator("#chart-cohorts")).to_have_count(0)
        page.locator("#cohorts-who").get_by_role("radio", name="Providers").click()
        page.locator("#cohorts-by").get_by_role("radio", name="By week").click()
        expect(empty).to_have_text("No providers signed up in the last 12 weeks.")
        measured = page.evaluate(MEASURE)
        assert measured["scroll"] <= measured["view"], measured["culprit"]
        empty.scroll_into_view_if_needed()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "analytics-cohorts-empty-390.png"))
        assert errors == []
    finally:
        context.close()


def test_an_admin_filters_payouts_and_retries_a_failed_one_once(portal, books, page: Page):
    sign_in(page, portal.url)
    page.goto(portal.url + "/admin/payouts")
    table = page.locator("#admin-payouts-table")
    expect(table.get_by_role("row")).to_have_count(5)  # the header and four payouts
    expect(table).to_contain_text("$12.34")

    page.get_by_role("combobox", name="State").click()
    page.get_by_role("option", name="Failed").click()
    expect(table.get_by_role("row")).to_have_count(3)
    page.locator("#payout-provider").fill("nobody.example")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#no-payouts")).to_be_visible()
    page.locator("#payout-provider").fill("rigs.example")
    page.locator("#payout-since").fill("2026-05-02")
    page.locator("#payout-until").fill("2026-05-01")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#payout-filter-error")).to_contain_text("before")
    page.locator("#payout-since").fill("")
    page.locator("#payout-until").fill("")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#payout-filter-error")).to_have_count(0)
    expect(table.get_by_role("row")).to_have_count(2)
    expect(table).to_contain_text("insufficient token funds")

    table.get_by_role("button", name="Retry").click()
    page.locator("#retry-reason").fill("x")
    page.locator("#confirm-retry").click()
    expect(page.locator("#retry-error")).to_contain_text("Say why")
    page.locator("#retry-reason").fill("treasury topped up")
    page.locator("#confirm-retry").click()
    expect(page.get_by_text("queued: the next settlement sends it")).to_be_visible()
    # Pending now, so it leaves the failed list and offers no second retry.
    expect(page.locator("#no-payouts")).to_be_visible()

    engine = build_engine(books["database"])

    def payout() -> Payout:
        """the retried payout, as the portal's settlement leaves it"""
        with session_scope(engine) as session:
            found = session.get(Payout, uuid.UUID(books["failed"]))
            assert found is not None
            session.expunge(found)
            return found

    # The settlement the retry asked for sends it, once: one attempt, landed on the portal's chain.
    sent = wait_until(payout, lambda p: p.state == PayoutState.CONFIRMED, timeout_s=120, every_s=1)
    assert sent.attempts == 1 and sent.tx_signature
    with session_scope(engine) as session:
        entries = session.exec(select(AuditLog).where(AuditLog.action == "payout.retry")).all()
        assert [(e.target_id, e.details["reason"], e.ip) for e in entries] == [
            (books["failed"], "treasury topped up", "127.0.0.1")
        ]
    engine.dispose()


@pytest.mark.parametrize("size", [(1440, 900), (390, 844)], ids=["desktop", "phone"])
def test_the_analytics_show_the_periods_totals_in_charts_that_fit(portal, books, browser: Browser, size):
    width, height = size
    context = browser.new_context(viewport={"width": width, "height": height})
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        sign_in(page, portal.url)
        now = utcnow()
        page.goto(portal.url + "/admin/analytics")
        # Seven days: the H100 an hour a day ($2), the two A100s an hour every other day ($3, 4 times).
        expect(page.locator("#stat-revenue")).to_have_text("$26.00")
        expect(page.locator("#stat-fees")).to_have_text("$2.60")
        expect(page.locator("#stat-earnings")).to_have_text("$23.40")
        expect(page.locator("#stat-gpu-hours")).to_have_text("15.0")
        expect(page.locator("#stat-customers")).to_have_text("2")
        # Plotly arrives as a chunk of its own, loaded when a chart is first drawn: slow on a busy machine.
        expect(page.locator("#chart-money .main-svg").first).to_be_visible(timeout=30_000)
        expect(page.locator("#chart-gpu-hours")).to_contain_text("A100-40GB")
        page.wait_for_timeout(800)  # the charts' first draw at the box's width
        measured = page.evaluate(MEASURE)
        assert measured["scroll"] <= measured["view"], measured["culprit"]
        # The sign-up cohorts: this month's two renters, both active, under four earlier months' one each.
        cohorts = page.locator("#chart-cohorts")
        expect(cohorts).to_contain_text(f"{now:%Y-%m} (2)")
        expect(cohorts.locator(".ytick")).to_have_count(5)
        measured = page.evaluate(MEASURE)
        assert measured["scroll"] <= measured["view"], measured["culprit"]
        assert len(measured["charts"]) == 4
        for chart in measured["charts"]:
            assert chart["chart"] <= chart["box"] + 1 and chart["right"] <= measured["view"], chart
        page.screenshot(path=str(SCREENSHOTS / f"analytics-{width}.png"), full_page=True)
        page.locator("#cohorts-who").get_by_role("radio", name="Providers").click()
        expect(cohorts.locator(".ytick")).to_have_count(1)  # ada and bo, signed up this month
        expect(cohorts).to_contain_text(f"{now:%Y-%m} (2)")
        page.locator("#cohorts-by").get_by_role("radio", name="By week").click()
        expect(cohorts).to_contain_text("(2)")
        cohorts.scroll_into_view_if_needed()
        page.screenshot(path=str(SCREENSHOTS / f"analytics-cohorts-{width}.png"))
        page.locator("#cohorts-who").get_by_role("radio", name="Customers").click()
        expect(cohorts.locator(".ytick")).to_have_count(2)  # by week: the renters and early-2 (62 days ago)
        page.emulate_media(color_scheme="dark")  # the heatmap in the dark theme
        page.wait_for_timeout(500)
        cohorts.scroll_into_view_if_needed()
        page.screenshot(path=str(SCREENSHOTS / f"analytics-cohorts-dark-{width}.png"))
        page.emulate_media(color_scheme="light")
        with page.expect_download() as download:
            page.locator("#export-signups").click()
        assert download.value.suggested_filename == "gpu-portal-signups.csv"

        page.get_by_role("radio", name="7d").click()
        expect(page.locator("#analytics-period-label")).to_contain_text("7 days")
        page.locator("#analytics-since").fill("2026-05-02")
        page.locator("#analytics-until").fill("2026-05-01")
        page.locator("#analytics-show").click()
        expect(page.locator("#analytics-error")).to_contain_text("before")
        page.locator("#analytics-since").fill("2020-01-01")
        page.locator("#analytics-until").fill("2020-01-07")
        page.locator("#analytics-show").click()
        expect(page.locator("#analytics-empty")).to_be_visible()
        expect(page.locator("#stat-revenue")).to_have_text("$0.00")
        expect(page.locator("#chart-money")).to_have_count(0)

        with page.expect_download() as download:
            page.locator("#export-cohorts").click()
        assert download.value.suggested_filename == "gpu-portal-cohorts.csv"

        page.goto(portal.url + "/admin/payouts")
        expect(page.locator("#admin-payouts-table")).to_be_visible()
        page.wait_for_timeout(500)
        measured = page.evaluate(MEASURE)
        assert measured["scroll"] <= measured["view"], measured["culprit"]
        page.screenshot(path=str(SCREENSHOTS / f"payouts-{width}.png"), full_page=True)
        assert errors == []
    finally:
        context.close()
