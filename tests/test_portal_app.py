"""The running portal, as a person sees it: `portal run` in production mode, driven in Chromium."""

import re

import httpx
import pytest
from playwright.sync_api import Page, expect

from portal.infra.db import build_engine, session_scope
from portal.models import DeviceState, Role
from portal.services.accounts import users
from tests.factories import make_device, make_provider

pytestmark = pytest.mark.slow
PASSWORD = "a long test password"


@pytest.mark.browser
def test_the_landing_page_shows_live_network_counts_from_the_database(portal, page: Page):
    page.goto(portal.url + "/")
    expect(page.get_by_text("No GPUs are online yet")).to_be_visible()
    expect(page.locator("#stat-gpus-available")).to_have_text("0")

    engine = build_engine(portal.database_url)
    with session_scope(engine) as session:
        owner = make_provider(session)
        make_device(session, owner, state=DeviceState.READY, gpus=2, model="H100-80GB")
        make_device(session, owner, state=DeviceState.HIRED, gpus=1, model="A100-40GB", simulated=False)
        make_device(session, owner, state=DeviceState.OFFLINE, gpus=8)

    # The open page picks the new devices up by itself, without a reload.
    expect(page.locator("#stat-gpus-available")).to_have_text("2", timeout=15_000)
    expect(page.locator("#stat-gpus-hired")).to_have_text("1")
    expect(page.locator("#stat-devices-online")).to_have_text("2")
    expect(page.locator("#stat-clusters-running")).to_have_text("0")
    expect(page.locator("#simulated-badge")).to_have_text("includes 2 simulated GPUs")
    table = page.locator("#gpus-by-model")
    expect(table).to_contain_text("H100-80GB")
    expect(table.get_by_text("simulated")).to_have_count(1)

    page.reload()
    expect(page.locator("#stat-gpus-available")).to_have_text("2")
    engine.dispose()


@pytest.mark.browser
def test_navigation_offers_each_visitor_the_areas_they_can_use(portal, page: Page):
    areas = page.get_by_role("navigation", name="Areas")
    page.goto(portal.url + "/")
    for link, heading in [("Rent GPUs", "#area-customer"), ("Provide GPUs", "#area-provider")]:
        areas.get_by_role("link", name=link).click()
        expect(page.locator(heading)).to_be_visible()
    expect(areas.get_by_role("link", name="Admin")).to_have_count(0)
    areas.get_by_role("link", name="Network").click()
    expect(page.get_by_role("heading", name="The network right now")).to_be_visible()

    engine = build_engine(portal.database_url)
    with session_scope(engine) as session:
        users.create_user(session, email="nav-customer@example.com", password=PASSWORD, roles=[Role.CUSTOMER])
    engine.dispose()
    page.goto(portal.url + "/login")
    page.locator("#email").fill("nav-customer@example.com")
    page.locator("#password").fill(PASSWORD)
    page.locator("#submit-sign-in").click()
    expect(page).to_have_url(re.compile(r"/account/?$"))
    expect(areas.get_by_role("link", name="Rent GPUs")).to_be_visible()
    expect(areas.get_by_role("link", name="Provide GPUs")).to_have_count(0)
    expect(areas.get_by_role("link", name="Admin")).to_have_count(0)
    # The admin's pages say what they need rather than show an empty admin area.
    page.goto(portal.url + "/admin/devices")
    expect(page.locator("#role-needed")).to_have_text("This needs the admin role.")

    # On a phone the areas fold into a menu, offering the same.
    page.set_viewport_size({"width": 390, "height": 844})
    expect(areas).to_be_hidden()
    page.get_by_role("button", name="Menu").click()
    menu = page.get_by_role("menu")
    expect(menu.get_by_role("menuitem", name="Rent GPUs")).to_be_visible()
    expect(menu.get_by_role("menuitem", name="Admin")).to_have_count(0)
    menu.get_by_role("menuitem", name="Marketplace").click()
    expect(page).to_have_url(re.compile(r"/market/?$"))


@pytest.mark.browser
def test_an_unknown_address_gets_a_page_in_the_frame_with_ways_back(portal, page: Page):
    reply = page.goto(portal.url + "/no/such/page")
    assert reply is not None and reply.status == 404
    expect(page.locator("#not-found")).to_have_text("This page does not exist")
    page.get_by_role("link", name="Marketplace").first.click()
    expect(page).to_have_url(re.compile(r"/market/?$"))


@pytest.mark.browser
def test_the_theme_switches_between_light_and_dark(portal, page: Page):
    page.goto(portal.url + "/")
    html = page.locator("html")
    expect(html).to_have_class(re.compile(r"\b(light|dark)\b"))
    before = "dark" if "dark" in (html.get_attribute("class") or "") else "light"
    page.get_by_role("button", name="Switch light or dark theme").click()
    after = "light" if before == "dark" else "dark"
    expect(html).to_have_class(re.compile(rf"\b{after}\b"))


def test_the_api_is_served_beside_the_pages(portal):
    assert httpx.get(portal.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(portal.url + "/api/v1/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    missing = httpx.get(portal.url + "/api/v1/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert "portal_http_requests_total" in httpx.get(portal.url + "/metrics").text
    assert httpx.get(portal.url + "/api/openapi.json").json()["info"]["title"] == "GPU Portal API"


def test_cors_admits_only_the_portals_own_origin(portal):
    own = httpx.options(
        portal.url + "/api/v1/auth/login",
        headers={"Origin": portal.url, "Access-Control-Request-Method": "POST"},
    )
    assert own.headers.get("access-control-allow-origin") == portal.url
    foreign = httpx.options(
        portal.url + "/api/v1/auth/login",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in foreign.headers
    simple = httpx.get(portal.url + "/api/v1/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


def test_pages_carry_the_security_headers(portal):
    headers = httpx.get(portal.url + "/").headers
    assert headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"


@pytest.mark.browser
def test_the_api_docs_render_offline_in_the_browser(portal, page: Page):
    page.goto(portal.url + "/api/docs")
    expect(page.get_by_text("GPU Portal API").first).to_be_visible()
    expect(page.get_by_text("/api/v1/auth/login").first).to_be_visible()
