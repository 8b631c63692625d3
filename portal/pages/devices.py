"""The provider's devices: list, add (token and launch command shown once), and each device's page."""

from __future__ import annotations

import reflex as rx

from portal.components.charts import chart, gpu_charts
from portal.components.forms import worded_select
from portal.components.layout import page_frame
from portal.components.tables import confirm_button, data_table
from portal.components.times import DATE_TIME_SECONDS, local_time, relative_time
from portal.state.charts import ChartsState
from portal.state.devices import DevicesState

REFRESH_MS = 3000


def state_badge(row: rx.Var) -> rx.Component:
    return rx.hstack(
        rx.badge(row["state"], color_scheme=row["color"], id="device-state"),
        rx.cond(row["simulated"], rx.badge("simulated", color_scheme="amber", variant="soft")),
        spacing="1",
    )


def device_row(row: rx.Var) -> rx.Component:
    return rx.table.row(
        rx.table.cell(rx.link(row["name"], href="/device/" + row["id"].to(str))),
        rx.table.cell(state_badge(row)),
        rx.table.cell(row["gpus"]),
        rx.table.cell(row["country"]),
        rx.table.cell(relative_time(row["heartbeat"], row["heartbeat_at"])),
        rx.table.cell(rx.text(row["reason"], size="1", color_scheme="gray")),
    )


def new_device_callout() -> rx.Component:
    return rx.cond(
        DevicesState.new_token != "",
        rx.callout(
            rx.vstack(
                rx.text(
                    "Device added. Its token is shown this once: start the agent with it now.", weight="bold"
                ),
                rx.text("With pip:", size="2"),
                rx.code(DevicesState.new_commands["pip"], id="launch-pip", size="2"),
                rx.text("With Docker:", size="2"),
                rx.code(DevicesState.new_commands["docker"], size="2"),
                rx.text("Development, with simulated GPUs:", size="2"),
                rx.code(DevicesState.new_commands["simulate"], id="launch-simulate", size="2"),
                rx.hstack(
                    rx.button(
                        rx.icon("copy", size=14),
                        "Copy the pip command",
                        size="1",
                        variant="soft",
                        on_click=rx.set_clipboard(DevicesState.new_commands["pip"]),
                    ),
                    rx.button("Done", size="1", variant="ghost", on_click=DevicesState.dismiss_token),
                ),
                spacing="2",
                width="100%",
            ),
            icon="key",
            color_scheme="green",
            width="100%",
        ),
    )


def add_device_form() -> rx.Component:
    return rx.card(
        rx.form(
            rx.vstack(
                rx.heading("Add a device", size="4"),
                rx.hstack(
                    rx.input(
                        name="name",
                        placeholder="Name, e.g. rack-1-gpu-a",
                        required=True,
                        max_length=80,
                        id="device-name",
                        width="16rem",
                    ),
                    rx.input(
                        name="country",
                        placeholder="Country (DE)",
                        required=True,
                        min_length=2,
                        max_length=2,
                        id="device-country",
                        width="9rem",
                    ),
                    worded_select(DevicesState.tiers, name="tier", default_value="medium", id="device-tier"),
                    rx.input(
                        name="price",
                        placeholder="USD per GPU-hour (optional)",
                        id="device-price",
                        width="14rem",
                    ),
                    rx.button(rx.icon("plus", size=14), "Add device", type="submit", id="add-device"),
                    wrap="wrap",
                    spacing="2",
                ),
                rx.cond(
                    DevicesState.error != "",
                    rx.callout(
                        DevicesState.error, icon="triangle_alert", color_scheme="red", id="device-error"
                    ),
                ),
                spacing="3",
            ),
            on_submit=DevicesState.add,
            reset_on_submit=True,
        ),
        width="100%",
    )


def devices_page() -> rx.Component:
    return page_frame(
        rx.vstack(
            rx.heading("Your devices", size="7"),
            rx.text(
                "Machines you connect with the worker agent. A device earns once it is ready and hired.",
                color_scheme="gray",
            ),
            new_device_callout(),
            # Only a provider's list loads: nobody else is offered a form they may not use.
            rx.cond(DevicesState.loaded, add_device_form()),
            rx.cond(
                DevicesState.rows.length() > 0,
                data_table(
                    ("Device", "State", "GPUs", "Country", "Heartbeat", ""),
                    DevicesState.rows,
                    device_row,
                    id="device-table",
                ),
                rx.cond(
                    DevicesState.loaded,
                    rx.text("No devices yet: add one above.", color_scheme="gray"),
                    rx.cond(
                        DevicesState.forbidden,
                        rx.vstack(
                            rx.callout(
                                "Your account does not have the provider role.",
                                icon="info",
                                id="not-provider",
                            ),
                            rx.link(
                                "Become a provider on your account page",
                                href="/account",
                                id="become-provider-link",
                            ),
                            spacing="2",
                        ),
                        rx.spinner(),
                    ),
                ),
            ),
            # Refreshes only once the list loaded, so a refused visitor gets one notice, not one per tick.
            rx.cond(
                DevicesState.loaded,
                rx.moment(interval=REFRESH_MS, on_change=DevicesState.tick, display="none"),
            ),
            spacing="4",
            width="100%",
        )
    )


def check_row(check: rx.Var) -> rx.Component:
    return rx.hstack(
        rx.cond(
            check["ok"],
            rx.icon("circle_check", color=rx.color("green", 9), size=18),
            rx.icon("circle_x", color=rx.color("red", 9), size=18),
        ),
        rx.text(check["message"], size="2"),
        align="center",
        spacing="2",
    )


def gpu_row(gpu: rx.Var) -> rx.Component:
    return rx.table.row(
        rx.table.cell(gpu["index"]),
        rx.table.cell(
            rx.flex(
                rx.text(gpu["model"]),
                rx.cond(gpu["simulated"], rx.badge("simulated", color_scheme="amber")),
                gap="1",
                wrap="wrap",
            )
        ),
        rx.table.cell(gpu["memory"], white_space="nowrap"),
        rx.table.cell(
            rx.code(gpu["uuid_short"], size="1", title=gpu["uuid"].to(str), word_break="break-all")
        ),
        rx.table.cell(gpu["driver"]),
    )


def price_form() -> rx.Component:
    """The provider's price per GPU-hour: saved, the marketplace shows it at once."""
    return rx.card(
        rx.form(
            rx.vstack(
                rx.heading("Price per GPU-hour", size="4"),
                rx.text(
                    "What customers pay for each GPU-hour of this device; you earn it less the platform's "
                    "fee. Leave it empty for the model's list price. Running clusters keep the price they "
                    "were placed at.",
                    size="2",
                    color_scheme="gray",
                ),
                rx.flex(
                    rx.input(
                        rx.input.slot("$"),
                        rx.input.slot("/ GPU-hour", side="right"),
                        name="price",
                        default_value=DevicesState.detail["price_usd"].to(str),
                        placeholder="list price",
                        input_mode="decimal",
                        aria_label="Price in dollars per GPU-hour",
                        id="device-price-input",
                        width=rx.breakpoints(initial="100%", sm="16rem"),
                    ),
                    rx.button("Save price", type="submit", id="save-price"),
                    gap="2",
                    direction=rx.breakpoints(initial="column", sm="row"),
                    align=rx.breakpoints(initial="stretch", sm="center"),
                    width="100%",
                ),
                rx.cond(
                    DevicesState.price_error != "",
                    rx.callout(
                        DevicesState.price_error, icon="triangle_alert", color_scheme="red", id="price-error"
                    ),
                ),
                spacing="3",
                width="100%",
            ),
            on_submit=DevicesState.save_price,
            width="100%",
        ),
        width="100%",
        id="price-card",
    )


def earnings_card() -> rx.Component:
    """What this device earned each UTC day of the last 30 (its share, after the platform's fee)."""
    return rx.card(
        rx.vstack(
            rx.heading("Earnings", size="4"),
            rx.cond(
                DevicesState.has_earnings,
                chart(DevicesState.earnings_chart, "chart-device-earnings"),
                rx.text("No earnings yet.", color_scheme="gray", size="2", id="device-earnings-empty"),
            ),
            spacing="2",
            width="100%",
        ),
        width="100%",
        id="device-earnings",
    )


def device_detail() -> rx.Component:
    detail = DevicesState.detail
    return page_frame(
        rx.cond(
            DevicesState.detail_error != "",
            rx.callout(DevicesState.detail_error, icon="triangle_alert", color_scheme="red"),
            rx.cond(
                detail.contains("id"),
                rx.vstack(
                    rx.link("← All devices", href="/devices", size="2"),
                    rx.hstack(rx.heading(detail["name"], size="7"), state_badge(detail), align="center"),
                    rx.text(detail["reason"], color_scheme="gray", id="device-reason"),
                    rx.card(
                        rx.vstack(
                            rx.heading(
                                rx.cond(detail["hireable"], "Hireable", "Not hireable yet"),
                                size="4",
                                id="device-hireable",
                            ),
                            rx.foreach(detail["checks"].to(list[dict]), check_row),
                            spacing="2",
                        ),
                        width="100%",
                        id="eligibility",
                    ),
                    rx.data_list.root(
                        rx.data_list.item(rx.data_list.label("Agent"), rx.data_list.value(detail["agent"])),
                        rx.data_list.item(
                            rx.data_list.label("Last heartbeat"),
                            rx.data_list.value(
                                relative_time(detail["heartbeat"], detail["heartbeat_at"]),
                                id="device-last-heartbeat",
                            ),
                        ),
                        rx.data_list.item(
                            rx.data_list.label("Proof of compute"),
                            rx.data_list.value(detail["verified"], id="device-verified"),
                        ),
                        rx.data_list.item(
                            rx.data_list.label("Price"),
                            rx.data_list.value(detail["price"], id="device-price-shown"),
                        ),
                        rx.data_list.item(
                            rx.data_list.label("Connectivity"), rx.data_list.value(detail["connectivity"])
                        ),
                        rx.data_list.item(
                            rx.data_list.label("Customers' code"),
                            rx.data_list.value(detail["customer_code"], id="device-customer-code"),
                        ),
                        rx.cond(
                            detail["last_wipe"] != "",
                            rx.data_list.item(
                                rx.data_list.label("Last wipe"),
                                rx.data_list.value(
                                    relative_time(detail["last_wipe"], detail["last_wipe_at"]),
                                    id="device-last-wipe",
                                ),
                            ),
                        ),
                        rx.data_list.item(
                            rx.data_list.label("Overlay"),
                            rx.data_list.value(detail["overlay"], id="device-overlay"),
                        ),
                        rx.data_list.item(
                            rx.data_list.label("Reliability"),
                            rx.data_list.value(detail["reliability"], id="device-reliability"),
                        ),
                        rx.data_list.item(
                            rx.data_list.label("Token"),
                            rx.data_list.value(rx.code(detail["token_prefix"].to(str) + "…")),
                        ),
                    ),
                    price_form(),
                    earnings_card(),
                    data_table(
                        ("GPU", "Model", "Memory", "UUID", "Driver"),
                        detail["gpu_rows"].to(list[dict]),
                        gpu_row,
                        id="device-gpus",
                        # Tighter cells on a phone: the five columns then fit 390 px with no scrolling.
                        size=rx.breakpoints(initial="1", sm="2"),
                    ),
                    rx.heading("Faults", size="4"),
                    rx.cond(
                        detail["faults"].to(list[dict]).length() > 0,
                        data_table(
                            ("When", "Kind", "Severity", "What happened"),
                            detail["faults"].to(list[dict]),
                            lambda f: rx.table.row(
                                rx.table.cell(rx.code(local_time(f["at"], DATE_TIME_SECONDS), size="1")),
                                rx.table.cell(f["kind"]),
                                rx.table.cell(f["severity"]),
                                rx.table.cell(rx.text(f["message"], size="1")),
                            ),
                            id="device-faults",
                        ),
                        rx.text("No faults recorded.", color_scheme="gray", size="2"),
                    ),
                    gpu_charts(),
                    confirm_button(
                        "Remove device",
                        title="Remove this device?",
                        description="Its token stops working and it leaves the marketplace.",
                        confirm="Remove",
                        keep="Keep it",
                        on_confirm=DevicesState.remove,
                    ),
                    rx.moment(interval=REFRESH_MS, on_change=DevicesState.tick_detail, display="none"),
                    spacing="4",
                    width="100%",
                ),
                rx.center(rx.spinner(size="3"), padding="4rem"),
            ),
        ),
        role="provider",
    )


def register(app: rx.App) -> None:
    app.add_page(devices_page, route="/devices", title="Your devices · GPU Portal", on_load=DevicesState.load)
    app.add_page(
        device_detail,
        route="/device/[device_id]",
        title="Device · GPU Portal",
        on_load=[DevicesState.load_detail, ChartsState.refresh],
    )
