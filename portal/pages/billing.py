"""Billing (customers): balance, ledger, usage. Earnings (providers): accrued, pending, paid."""

from __future__ import annotations

import reflex as rx

from portal.components.layout import page_frame, stat_card
from portal.components.tables import data_table
from portal.state.billing import BillingState

REFRESH_MS = 5000


def ledger_row(line: rx.Var) -> rx.Component:
    return rx.table.row(
        rx.table.cell(rx.code(line["at"], size="1")),
        rx.table.cell(line["what"]),
        rx.table.cell(line["account"]),
        rx.table.cell(line["amount"]),
        rx.table.cell(rx.text(line["description"], size="1", color_scheme="gray")),
    )


def usage_row(line: rx.Var) -> rx.Component:
    return rx.table.row(
        rx.table.cell(line["period"]),
        rx.table.cell(line["device"]),
        rx.table.cell(line["gpus"]),
        rx.table.cell(line["seconds"]),
        rx.table.cell(line["rate"]),
        rx.table.cell(line["amount"]),
    )


def billing_page() -> rx.Component:
    summary = BillingState.summary
    return page_frame(
        rx.cond(
            summary.contains("available"),
            rx.vstack(
                rx.heading("Billing", size="7"),
                rx.grid(
                    stat_card("Available credit", summary["available"], "wallet", "balance-available"),
                    stat_card("Held in escrow", summary["escrow"], "lock", "balance-escrow"),
                    columns=rx.breakpoints(initial="1", sm="2"),
                    spacing="4",
                    width="100%",
                ),
                rx.text(
                    "Running clusters are charged every few seconds of verified uptime; downtime is never "
                    "charged, and escrow not used is returned when a cluster ends.",
                    size="2",
                    color_scheme="gray",
                ),
                rx.heading("Usage", size="4"),
                rx.cond(
                    summary["usage"].to(list[dict]).length() > 0,
                    data_table(
                        ("Period (UTC)", "Device", "GPUs", "Seconds", "Rate", "Amount"),
                        summary["usage"].to(list[dict]),
                        usage_row,
                        id="usage-table",
                    ),
                    rx.text("No usage yet: it appears once a cluster runs.", color_scheme="gray"),
                ),
                rx.heading("Ledger", size="4"),
                data_table(
                    ("When (UTC)", "What", "Account", "Amount", ""),
                    summary["ledger"].to(list[dict]),
                    ledger_row,
                    id="ledger-table",
                ),
                rx.hstack(
                    rx.button("Newer", size="1", variant="soft", on_click=BillingState.page(-1)),
                    rx.button("Older", size="1", variant="soft", on_click=BillingState.page(1)),
                    rx.text(summary["total"].to(str) + " lines", size="1", color_scheme="gray"),
                    align="center",
                ),
                rx.moment(interval=REFRESH_MS, on_change=BillingState.tick, display="none"),
                spacing="4",
                width="100%",
            ),
            rx.center(rx.spinner(size="3"), padding="4rem"),
        )
    )


def earnings_page() -> rx.Component:
    earnings = BillingState.earnings
    return page_frame(
        rx.cond(
            BillingState.not_provider,
            rx.callout("Your account does not have the provider role.", icon="info"),
            rx.cond(
                earnings.contains("accrued"),
                rx.vstack(
                    rx.heading("Earnings", size="7"),
                    rx.grid(
                        stat_card("Earned, all time", earnings["accrued"], "coins", "earned-accrued"),
                        stat_card("Not paid out yet", earnings["pending"], "hourglass", "earned-pending"),
                        stat_card("Paid out", earnings["paid"], "circle_check", "earned-paid"),
                        columns=rx.breakpoints(initial="1", sm="3"),
                        spacing="4",
                        width="100%",
                    ),
                    rx.heading("By device", size="4"),
                    data_table(
                        ("Device", "Earned", "GPU hours served"),
                        earnings["devices"].to(list[dict]),
                        lambda d: rx.table.row(
                            rx.table.cell(d["name"]), rx.table.cell(d["earned"]), rx.table.cell(d["hours"])
                        ),
                        id="earnings-devices",
                    ),
                    rx.heading("By cluster", size="4"),
                    data_table(
                        ("Cluster", "Earned", "Since (UTC)"),
                        earnings["clusters"].to(list[dict]),
                        lambda c: rx.table.row(
                            rx.table.cell(c["name"]), rx.table.cell(c["earned"]), rx.table.cell(c["since"])
                        ),
                    ),
                    spacing="4",
                    width="100%",
                ),
                rx.center(rx.spinner(size="3"), padding="4rem"),
            ),
        )
    )


def register(app: rx.App) -> None:
    app.add_page(billing_page, route="/billing", title="Billing · GPU Portal", on_load=BillingState.load)
    app.add_page(
        earnings_page, route="/earnings", title="Earnings · GPU Portal", on_load=BillingState.load_earnings
    )
