"""What people read on the pages: amounts, rates, states and reliability, the same on every page."""

from datetime import UTC, datetime, timedelta, timezone

from portal.models import ConnectivityTier
from portal.models.base import utcnow
from portal.services import display
from portal.services.display import count, plain_text, reliability, sentence, usd, usd_rate, words
from portal.services.providers.reliability import is_new
from portal.state.charts import MIN_SPAN, in_zone, time_axis, time_zone, zone_label


def test_amounts_are_in_cents_with_the_sign_before_the_symbol():
    assert usd(12_345_678) == "$12.35"
    assert usd(1_234_567_890) == "$1,234.57"
    assert usd(0) == "$0.00"
    assert usd(-8_333) == "-$0.01"
    assert usd(-10_000) == "-$0.01"
    assert usd(1_950_000, signed=True) == "+$1.95"
    assert usd(-1_950_000, signed=True) == "-$1.95"


def test_an_amount_under_half_a_cent_is_never_shown_as_nothing():
    assert usd(3_400) == "<$0.01"
    assert usd(-7) == "-<$0.01"
    assert usd(5_000) == "$0.01"


def test_rates_carry_their_unit_and_only_the_digits_they_need():
    assert usd_rate(1_200_000) == "$1.20/h"
    assert usd_rate(2_000_000, "/GPU-h") == "$2.00/GPU-h"
    assert usd_rate(4_444) == "$0.004444/h"
    assert usd_rate(1_234_560) == "$1.23456/h"
    assert usd_rate(12_500_000_000) == "$12,500.00/h"


def test_enum_values_read_as_words():
    assert words("ultra_high") == "Ultra high"
    assert words(ConnectivityTier.MEDIUM) == "Medium"
    assert words("node_joined") == "Node joined"
    assert words(None) == ""


def test_a_device_without_a_days_history_is_new_rather_than_unreliable():
    assert reliability(0.8791, new=False) == "87.9%"
    assert reliability(0.0, new=True) == "new"
    assert is_new(utcnow() - timedelta(hours=3))
    assert not is_new(utcnow() - timedelta(days=2))


def test_job_output_loses_its_terminal_escapes():
    assert (
        plain_text("\x1b[32mINFO\x1b[0m job \x1b[1;33mstarted\x1b[0m\x1b]0;title\x07") == "INFO job started"
    )


def test_counts_take_the_plural_only_when_they_are_not_one():
    assert count(1, "node") == "1 node"
    assert count(2, "node") == "2 nodes"
    assert count(0, "GPU") == "0 GPUs"
    assert count(1_200, "device") == "1,200 devices"
    assert count(3, "more worker") == "3 more workers"


def test_recorded_reasons_read_as_sentences():
    assert sentence("the cluster did not come up within 600 s") == "The cluster did not come up within 600 s."
    assert sentence("Done.") == "Done."
    assert sentence("") == ""


def test_where_a_device_runs_customers_code_is_said_plainly():
    assert display.customer_code("container", "podman", "gpu-pool-worker:1") == (
        "In a podman container per rental (gpu-pool-worker:1)"
    )
    assert display.customer_code("container", "", "") == "In a container per rental"
    assert display.customer_code("none", "", "").startswith("On the host as the agent's user: not isolated")


def test_a_devices_overlay_says_whether_its_tunnels_are_direct_or_relayed():
    assert display.overlay(None, "none", None) == "Not on the overlay"
    assert display.overlay("100.64.0.9", "connected", False) == "100.64.0.9, connected, direct (hole punched)"
    assert display.overlay("100.64.0.9", "connected", True) == "100.64.0.9, connected, through the relay"
    assert display.overlay("100.64.0.9", "certified", None) == "100.64.0.9, certified"


def test_moments_go_to_the_pages_as_fixed_width_utc_text():
    # local_time slices its UTC title from fixed places: the same width whatever the zone it came in.
    assert display.utc_iso(datetime(2026, 12, 3, 1, 20, 5, 123456, tzinfo=UTC)) == "2026-12-03T01:20:05Z"
    assert display.utc_iso(datetime(2026, 12, 3, 2, 20, 5, tzinfo=timezone(timedelta(hours=1)))) == (
        "2026-12-03T01:20:05Z"
    )
    assert display.utc_iso(datetime(2026, 12, 3, 1, 20, 5)) == "2026-12-03T01:20:05Z"  # naive is UTC
    assert display.utc_iso(None) == ""


def test_a_gpu_chart_spans_minutes_even_for_a_device_seconds_old():
    now = utcnow()
    axis = time_axis([now - timedelta(seconds=4), now])
    assert axis["range"] == [now - MIN_SPAN, now]
    # An hour of points keeps its own span; ticks never show seconds.
    assert time_axis([now - timedelta(hours=1), now])["range"] == [now - timedelta(hours=1), now]
    assert all("%S" not in stop["value"] for stop in axis["tickformatstops"])


def test_gpu_chart_times_are_drawn_in_the_zone_the_browser_names():
    kolkata = time_zone("Asia/Kolkata")
    assert zone_label(kolkata) == "IST" and zone_label(None) == "UTC"
    noon = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    # Plotly draws a time's own clock reading: the times go as Kolkata's wall clock, and say so on hover.
    assert in_zone([noon], kolkata) == [datetime(2026, 3, 10, 17, 30)]
    assert in_zone([noon], None) == [datetime(2026, 3, 10, 12, 0)]
    assert time_axis([], "IST")["hoverformat"] == "%H:%M:%S IST"
    for bad in ("", "Mars/Olympus", "../../etc/passwd", "A" * 65, "Asia/Kolkata\x00"):
        assert time_zone(bad) is None, bad
