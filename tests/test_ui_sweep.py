"""Every page as each kind of visitor sees it, on a desktop and a phone, in light and dark.

Each route x (signed out, customer, provider, admin) x (1440 px, 390 px) in the light theme, and a sample of
routes (DARK_SAMPLE) at phone width in the dark theme. The sweep fails on: a console error, an uncaught page
error, a failed request, an error toast, a page wider than the screen, a chart wider than its container. It
keeps a full-page screenshot of each under one folder (``UI_SWEEP_DIR``, else test-results/ui-sweep) and
prints its path, so a person can look at them. One built frontend (the ``portal`` fixture) and one browser
serve it all.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Response

from portal.config import PROJECT_ROOT
from portal.infra.db import build_engine, session_scope
from portal.models import Cluster, DeviceState, Role
from portal.models.base import utcnow
from portal.services.accounts import users
from tests.conftest import RunningPortal
from tests.factories import make_device

pytestmark = [pytest.mark.slow, pytest.mark.browser]

PASSWORD = "a long sweep password"
ROLES = ("signed_out", "customer", "provider", "admin")
DESKTOP, PHONE = (1440, 900), (390, 844)
# Every page of the portal; {device} and {cluster} are filled with rows the sweep makes.
ROUTES = (
    "/",
    "/market",
    "/explorer",
    "/customer",
    "/provider",
    "/admin",
    "/login",
    "/signup",
    "/unlock",
    "/account",
    "/deploy",
    "/clusters",
    "/cluster/{cluster}",
    "/billing",
    "/billing/invoice/2026-11",
    "/earnings",
    "/devices",
    "/device/{device}",
    "/admin/users",
    "/admin/clusters",
    "/admin/devices",
    "/admin/audit",
    "/admin/payouts",
    "/admin/analytics",
    "/no-such-page",
)
# The dark theme's sample: one page of each kind (public, form, chart, table, detail, admin, 404), by first
# path segment.
DARK_SAMPLE = {"", "explorer", "login", "billing", "device", "cluster", "admin", "no-such-page"}
# The one failure a route is expected to cause: the unknown page's own document answers 404.
EXPECTED_STATUS = {"/no-such-page": 404}
# Reflex's toasts are Sonner's: an error toast carries data-type="error".
ERROR_TOAST = "[data-sonner-toast][data-type='error']"
NETWORK_CHANGED = "ERR_NETWORK_CHANGED"
MEASURE = """() => {
    const page = document.documentElement;
    const charts = [...document.querySelectorAll('.js-plotly-plot')].map((plot) => {
        const box = plot.closest('.portal-chart') || plot.parentElement;
        const svg = plot.querySelector('.main-svg');
        return {
            id: box.id,
            chart: Math.round((svg || plot).getBoundingClientRect().width),
            box: Math.round(box.getBoundingClientRect().width),
            right: Math.round((svg || plot).getBoundingClientRect().right),
        };
    });
    // The innermost element reaching past the screen's right edge: what to fix when the page is too wide.
    const inside = '[data-radix-scroll-area-viewport], .rt-TableRoot';  // scrolls in its own box
    const past = [...document.body.querySelectorAll('*')].filter(
        (el) => el.getBoundingClientRect().right > page.clientWidth + 0.5 && !el.closest(inside));
    const culprit = past.find((el) => ![...el.children].some((child) => past.includes(child)));
    const named = culprit
        ? `${culprit.tagName.toLowerCase()}#${culprit.id}.${[...culprit.classList].join('.')}`
          + ` "${(culprit.textContent || '').slice(0, 40)}"`
        : '';
    return {scroll: page.scrollWidth, view: page.clientWidth, charts, culprit: named};
}"""


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)

    def add(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")


@dataclass
class Sweep:
    portal: RunningPortal
    routes: list[str]
    logins: dict[str, str]
    folder: Path


@pytest.fixture(scope="module")
def sweep(portal: RunningPortal, request: pytest.FixtureRequest) -> Iterator[Sweep]:
    """A customer, a provider with a device and an admin, a cluster of the customer's: every page has
    something to show."""
    engine = build_engine(portal.database_url)
    tag = uuid.uuid4().hex[:6]
    logins = {role: f"sweep-{role}-{tag}@example.com" for role in ROLES if role != "signed_out"}
    with session_scope(engine) as session:
        accounts = {
            role: users.create_user(session, email=email, password=PASSWORD, roles=[Role(role)])
            for role, email in logins.items()
        }
        device = make_device(session, accounts["provider"].id, state=DeviceState.READY, gpus=2)
        device.verified_at = utcnow()
        cluster = Cluster(
            owner_id=accounts["customer"].id,
            name="sweep",
            gpu_model="H100-80GB",
            gpu_count=1,
            duration_hours=1,
            price_per_gpu_hour_micro=2_000_000,
            state="terminated",
            state_reason="ended by its owner",
        )
        session.add(cluster)
        session.flush()
        ids = {"device": str(device.id), "cluster": str(cluster.id)}
    engine.dispose()
    folder = Path(os.environ.get("UI_SWEEP_DIR") or PROJECT_ROOT / "test-results" / "ui-sweep")
    shutil.rmtree(folder, ignore_errors=True)  # this run's pictures only
    folder.mkdir(parents=True)
    # Through the terminal reporter, so the path shows although pytest captures the tests' output.
    say = request.config.pluginmanager.get_plugin("terminalreporter").write_line
    say(f"UI sweep screenshots: {folder}")
    yield Sweep(portal, [route.format(**ids) for route in ROUTES], logins, folder)
    say(f"UI sweep screenshots: {folder}")


def sign_in(page: Page, sweep: Sweep, role: str) -> None:
    page.goto(sweep.portal.url + "/login")
    page.locator("#email").fill(sweep.logins[role])
    page.locator("#password").fill(PASSWORD)
    page.locator("#submit-sign-in").click()
    page.wait_for_url(re.compile(r"/account/?$"), timeout=30_000)


def check_route(page: Page, sweep: Sweep, route: str, where: str, findings: Findings, tries: int = 2) -> None:
    seen: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        # The browser reports a document's expected 404 as a console error too; it is checked below.
        if message.type == "error" and not (route in EXPECTED_STATUS and "status of 404" in message.text):
            seen.append(f"console error: {message.text[:300]}")

    def on_response(response: Response) -> None:
        expected = EXPECTED_STATUS.get(route) if response.request.is_navigation_request() else None
        if response.status >= 400 and response.status != expected:
            seen.append(f"{response.status} from {response.request.method} {response.url}")

    def on_failed(request: Request) -> None:
        seen.append(f"request failed: {request.method} {request.url} ({request.failure})")

    page.on("console", on_console)
    page.on("pageerror", lambda error: seen.append(f"page error: {error}"))
    page.on("response", on_response)
    page.on("requestfailed", on_failed)
    try:
        page.goto(sweep.portal.url + route)
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(600)  # on-load events and the charts' first draw
        measured = page.evaluate(MEASURE)
        if page.locator(ERROR_TOAST).count():
            seen.append(f"error toast: {page.locator(ERROR_TOAST).first.inner_text()[:200]}")
        if measured["scroll"] > measured["view"]:
            seen.append(
                f"page {measured['scroll']} px wide on a {measured['view']} px screen ({measured['culprit']})"
            )
        for chart in measured["charts"]:
            if chart["chart"] > chart["box"] + 1 or chart["right"] > measured["view"]:
                seen.append(f"chart {chart['id']} {chart['chart']} px wide in a {chart['box']} px box")
        name = where.replace(" ", "-") + "-" + (route.strip("/").replace("/", "_") or "home")
        page.screenshot(path=str(sweep.folder / f"{name}.png"), full_page=True)
    finally:
        page.remove_listener("console", on_console)
        page.remove_listener("response", on_response)
        page.remove_listener("requestfailed", on_failed)
    if tries > 1 and any(NETWORK_CHANGED in problem for problem in seen):
        # Chromium cuts every load when the host's interfaces change (other tests make network
        # namespaces): the page is not at fault; load it again.
        check_route(page, sweep, route, where, findings, tries - 1)
        return
    for problem in seen:
        findings.add(f"{where} {route}", problem)


def sweep_as(
    browser: Browser, sweep: Sweep, role: str, size: tuple[int, int], scheme: str, routes: list[str]
) -> list[str]:
    findings = Findings()
    width, height = size
    context = browser.new_context(viewport={"width": width, "height": height}, color_scheme=scheme)
    try:
        page = context.new_page()
        if role != "signed_out":
            sign_in(page, sweep, role)
        for route in routes:
            check_route(page, sweep, route, f"{role} {width} {scheme}", findings)
    finally:
        context.close()
    return findings.problems


@pytest.mark.parametrize("role", ROLES)
def test_every_page_is_clean_on_desktop_and_phone(browser: Browser, sweep: Sweep, role: str):
    dark = [route for route in sweep.routes if route.split("/")[1] in DARK_SAMPLE]
    problems = [
        *sweep_as(browser, sweep, role, DESKTOP, "light", sweep.routes),
        *sweep_as(browser, sweep, role, PHONE, "light", sweep.routes),
        # Dark on a sample at phone width: the theme changes colours, not layout (CI's time is short).
        *sweep_as(browser, sweep, role, PHONE, "dark", dark),
    ]
    assert problems == [], "\n".join(problems)
