"""A provider adds a device in the browser, starts the agent with the command shown, and sees it ready."""

import os
import re
import signal
import subprocess

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import PROJECT_ROOT, VENV_BIN

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def test_add_a_device_start_a_simulated_agent_and_watch_it_become_ready(portal, page: Page):
    page.goto(portal.url + "/signup")
    page.locator("#email").fill("maker@example.com")
    page.locator("#password").fill("a long test password")
    page.locator("#confirm").fill("a long test password")
    page.locator("#role-customer").click()  # only a provider
    page.locator("#role-provider").click()
    page.locator("#submit-sign-up").click()
    expect(page).to_have_url(re.compile(r"/account/?$"))

    page.goto(portal.url + "/devices")
    page.locator("#device-name").fill("garage-rig")
    page.locator("#device-country").fill("nl")
    page.locator("#add-device").click()
    command = page.locator("#launch-simulate").inner_text()
    assert f"--portal {portal.url}" in command
    token = re.search(r"--token (gpd_\S+)", command).group(1)
    expect(page.locator("#device-table")).to_contain_text("registered")

    agent = subprocess.Popen(
        [str(VENV_BIN / "gpu-pool"), "worker", "--portal", portal.url, "--simulate", "2xH100-80GB"],
        env={**os.environ, "GPU_POOL_TOKEN": token},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # The list refreshes by itself; the device page shows why it is (not yet) hireable.
        expect(page.locator("#device-table")).to_contain_text("ready", timeout=60_000)
        page.locator("#device-table").get_by_role("link", name="garage-rig").click()
        expect(page.locator("#device-state")).to_have_text("ready")
        expect(page.locator("#eligibility")).to_contain_text("Proof of compute passed")
        expect(page.locator("#eligibility")).to_contain_text("2 GPUs reported.")
        expect(page.locator("#eligibility")).to_contain_text("Simulated GPUs (development mode).")
        expect(page.locator("#eligibility")).to_contain_text("Link a payout wallet")
        expect(page.get_by_text("simulated").first).to_be_visible()
        # An agent started without --isolation container runs renters' code on the host, and says so.
        expect(page.locator("#device-customer-code")).to_contain_text("not isolated (development only")
        expect(page.locator("#device-last-wipe")).to_have_count(0)
        expect(page.locator("#device-overlay")).to_have_text("Not on the overlay")
        shots = PROJECT_ROOT / "test-results" / "provider-pages"
        shots.mkdir(parents=True, exist_ok=True)
        for width, height in ((1440, 900), (390, 844)):
            page.set_viewport_size({"width": width, "height": height})
            page.screenshot(path=shots / f"device-{width}.png", full_page=True)
        page.set_viewport_size({"width": 1440, "height": 900})
        # Its charts: the GPUs from the heartbeats, and its uptime per day.
        expect(page.locator("#chart-uptime .js-plotly-plot")).to_be_visible(timeout=20_000)
        expect(page.locator("#chart-util .js-plotly-plot")).to_be_visible(timeout=20_000)
    finally:
        os.killpg(agent.pid, signal.SIGINT)
        agent.wait(timeout=30)


def test_bad_device_input_is_explained(portal, page: Page):
    page.goto(portal.url + "/signup")
    page.locator("#email").fill("maker2@example.com")
    page.locator("#password").fill("a long test password")
    page.locator("#confirm").fill("a long test password")
    page.locator("#role-provider").click()
    page.locator("#submit-sign-up").click()
    expect(page).to_have_url(re.compile(r"/account/?$"))
    page.goto(portal.url + "/devices")
    page.locator("#device-name").fill("rig")
    page.locator("#device-country").fill("D1")
    page.locator("#add-device").click()
    expect(page.locator("#device-error")).to_contain_text("two-letter ISO code")


def test_customers_cannot_open_the_device_pages(portal, page: Page):
    page.goto(portal.url + "/signup")
    page.locator("#email").fill("renter@example.com")
    page.locator("#password").fill("a long test password")
    page.locator("#confirm").fill("a long test password")
    page.locator("#submit-sign-up").click()
    expect(page).to_have_url(re.compile(r"/account/?$"))
    page.goto(portal.url + "/devices")
    expect(page.locator("#not-provider")).to_have_text("Your account does not have the provider role.")
    # No form they may not use (the handler refuses them anyway: tests/test_page_access.py).
    expect(page.locator("#device-name")).to_have_count(0)
    expect(page.locator("#device-table")).to_have_count(0)
