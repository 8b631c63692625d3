"""The admin's devices and faults: filter every provider's devices, block one (with the reason its owner
sees) or unblock it, and read the network's latest fault events."""

from __future__ import annotations

import reflex as rx

from portal.components.layout import page_frame
from portal.components.tables import data_table, pager, reason_dialog
from portal.components.times import DATE_TIME_SECONDS, local_time
from portal.state.admin_devices import STATES, AdminDevicesState


def device_row(row: rx.Var) -> rx.Component:
    return rx.table.row(
        rx.table.cell(
            rx.hstack(
                rx.text(row["name"], weight="medium"),
                rx.cond(row["simulated"], rx.badge("simulated", color_scheme="amber", size="1")),
                spacing="2",
            )
        ),
        rx.table.cell(rx.text(row["owner"], size="1")),
        rx.table.cell(
            rx.badge(row["state"], color_scheme=rx.cond(row["blocked"], "red", "gray")),
            # Beside the state, not in a column of its own: on a phone the table's far columns scroll away.
            rx.box(
                rx.cond(
                    row["blocked"],
                    rx.button(
                        "Unblock", size="1", variant="soft", on_click=AdminDevicesState.unblock(row["id"])
                    ),
                    rx.button(
                        "Block",
                        size="1",
                        variant="soft",
                        color_scheme="red",
                        on_click=AdminDevicesState.ask_reason(row["id"], row["name"]),
                    ),
                ),
                margin_top="0.35rem",
            ),
        ),
        rx.table.cell(rx.text(row["reason"], size="1", color_scheme="gray")),
        rx.table.cell(row["gpus"]),
        rx.table.cell(rx.code(local_time(row["beat"], DATE_TIME_SECONDS), size="1")),
    )


def block_dialog() -> rx.Component:
    return reason_dialog(
        AdminDevicesState,
        title="Block",
        description=(
            "It leaves the market at once; a cluster it serves replaces it. Its owner sees your reason."
        ),
        placeholder="Reason, e.g. GPU in use while idle (double-renting)",
        keep="Cancel",
        confirm="Block device",
        on_confirm=AdminDevicesState.confirm_block,
        name="block",
    )


def filters() -> rx.Component:
    return rx.form(
        rx.hstack(
            rx.input(name="text", placeholder="name or owner email", max_length=100),
            rx.select(STATES, name="state", placeholder="any state"),
            rx.button(rx.icon("filter", size=14), "Filter", type="submit"),
            wrap="wrap",
            spacing="2",
        ),
        on_submit=AdminDevicesState.apply_filters,
    )


def fault_row(row: rx.Var) -> rx.Component:
    return rx.table.row(
        rx.table.cell(rx.code(local_time(row["at"], DATE_TIME_SECONDS), size="1")),
        rx.table.cell(row["device"]),
        rx.table.cell(rx.code(row["kind"], size="1")),
        rx.table.cell(
            rx.badge(
                row["severity"],
                color_scheme=rx.match(row["severity"], ("error", "red"), ("warning", "amber"), "gray"),
            )
        ),
        rx.table.cell(rx.text(row["message"], size="1")),
    )


def admin_devices() -> rx.Component:
    return page_frame(
        rx.vstack(
            rx.heading("Devices and faults", size="7"),
            rx.text(
                "Every provider's devices. Block one to take it off the market, with a reason.",
                color_scheme="gray",
            ),
            filters(),
            rx.cond(
                AdminDevicesState.rows.length() > 0,
                data_table(
                    ("Device", "Owner", "State", "Why", "GPUs", "Last heartbeat"),
                    AdminDevicesState.rows,
                    device_row,
                    size="1",
                    id="admin-devices-table",
                ),
                rx.cond(
                    AdminDevicesState.loaded,
                    rx.text("No devices match.", color_scheme="gray"),
                    rx.spinner(size="3"),
                ),
            ),
            pager(
                AdminDevicesState.shown,
                AdminDevicesState.has_newer,
                AdminDevicesState.has_older,
                AdminDevicesState.page,
            ),
            rx.heading("Latest faults", size="4"),
            rx.cond(
                AdminDevicesState.faults.length() > 0,
                data_table(
                    ("When", "Device", "Kind", "Severity", "What happened"),
                    AdminDevicesState.faults,
                    fault_row,
                    size="1",
                    id="admin-faults-table",
                ),
                rx.text("No faults recorded.", color_scheme="gray"),
            ),
            block_dialog(),
            spacing="4",
            width="100%",
        ),
        role="admin",
    )


def register(app: rx.App) -> None:
    app.add_page(
        admin_devices,
        route="/admin/devices",
        title="Devices and faults · GPU Portal",
        on_load=AdminDevicesState.load,
    )
