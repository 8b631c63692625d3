"""A provider adds a device in the browser, starts the agent with the command shown, and sees it ready."""

import os
import re
import signal
import subprocess
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Page, expect
from sqlmodel import select

from portal.infra.db import build_engine, session_scope
from portal.models import ClusterNode, Device, FaultEvent, NodeState
from portal.models.base import utcnow
from tests.conftest import PROJECT_ROOT, VENV_BIN
from tests.factories import make_usage, make_user

pytestmark = [pytest.mark.slow, pytest.mark.browser]
# The pages show moments in the browser's zone: this one's is 5 h 30 min ahead of UTC, all year.
ZONE = "Asia/Kolkata"
# Every chart drawn full height within its box's width.
CHARTS_FIT = """() => [...document.querySelectorAll('.portal-chart')].every((box) => {
    const svg = box.querySelector('.main-svg');
    const drawn = svg && svg.getBoundingClientRect();
    return drawn && drawn.height > 200 && drawn.width <= box.getBoundingClientRect().width + 1;
})"""
# Whether an element fits the screen's width (its table scrolls in no box of its own).
FITS_SCREEN = "(el) => el.getBoundingClientRect().right <= document.documentElement.clientWidth"


@pytest.fixture
def browser_context_args(browser_context_args: dict) -> dict:
    return {**browser_context_args, "timezone_id": ZONE}


def a_fault_and_an_hours_earnings(database_url: str, device_name: str) -> None:
    """What the meter and the fault monitor write for a device: an hour rented today, and a fault."""
    engine = build_engine(database_url)
    with session_scope(engine) as session:
        device = session.exec(select(Device).where(Device.name == device_name)).one()
        usage = make_usage(session, customer_id=make_user(session).id, device=device, ended_at=utcnow())
        node = session.get(ClusterNode, usage.node_id)
        node.state = NodeState.RELEASED  # its rental is over: the device stays free
        session.add(
            FaultEvent(
                device_id=device.id,
                at=datetime(2026, 3, 10, 12, 0, 5, tzinfo=UTC),
                kind="heartbeat_missed",
                severity="warning",
                message="No heartbeat for 30 s.",
            )
        )
    engine.dispose()


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
        # A GPU's UUID is cut short (the whole one on hover), so the table fits a phone.
        uuid_cell = page.locator("#device-gpus code").first
        expect(uuid_cell).to_have_text(re.compile(r"^GPU-.{4}….{4}$"))
        expect(uuid_cell).to_have_attribute("title", re.compile(r".{20,}"))
        expect(page.locator("#device-earnings-empty")).to_have_text("No earnings yet.")

        # An hour rented shows in the device's earnings per day; its fault's time is in the browser's zone.
        a_fault_and_an_hours_earnings(portal.database_url, "garage-rig")
        expect(page.locator("#chart-device-earnings .js-plotly-plot")).to_be_visible(timeout=20_000)
        when = page.locator("#device-faults .local-time").first
        expect(when).to_have_text("2026-03-10 17:30:05")
        expect(when).to_have_attribute("title", "2026-03-10 12:00:05 UTC")
        # Its charts: the GPUs from the heartbeats, and its uptime per day.
        expect(page.locator("#chart-uptime .js-plotly-plot")).to_be_visible(timeout=20_000)
        expect(page.locator("#chart-util .js-plotly-plot")).to_be_visible(timeout=20_000)
        # A device seconds old: its GPU charts' ticks are hours and minutes, not fractions of a second, and
        # read in the browser's zone (the last few minutes of Kolkata's clock), which the title names.
        expect(page.locator("#chart-util .gtitle")).to_have_text("Utilization (%, IST)")
        ticks = page.locator("#chart-util .xtick text").all_text_contents()
        assert ticks and all(re.fullmatch(r"\d{2}:\d{2}", tick) for tick in ticks), ticks
        local = datetime.now(ZoneInfo(ZONE))
        for tick in ticks:
            minutes = int(tick[:2]) * 60 + int(tick[3:])
            assert (local.hour * 60 + local.minute - minutes) % 1440 <= 10, (tick, local)
        # "Last heartbeat: 3 s ago", its UTC moment on hover.
        beat = page.locator("#device-last-heartbeat .relative-time")
        expect(beat).to_have_text(re.compile(r"^\d+ s ago$"))
        expect(beat).to_have_attribute("title", re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC$"))
        shots = PROJECT_ROOT / "test-results" / "provider-pages"
        shots.mkdir(parents=True, exist_ok=True)
        for width, height in ((1440, 900), (390, 844)):
            page.set_viewport_size({"width": width, "height": height})
            # The charts redraw for the new width before the picture (seconds on a busy machine; until then
            # a phone's column holds them squashed on top of one another).
            page.wait_for_function(CHARTS_FIT, timeout=20_000)
            page.screenshot(path=shots / f"device-{width}.png", full_page=True)
            assert page.locator("#device-gpus table").evaluate(FITS_SCREEN), f"GPU table too wide at {width}"
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
