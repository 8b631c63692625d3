"""Billing (customers): balance, deposits, usage, invoices, ledger. Earnings (providers): accrued, pending,
paid, a daily chart and payouts with their transaction signatures."""

from __future__ import annotations

import reflex as rx

from portal.components.charts import chart
from portal.components.layout import page_frame, stat_card
from portal.components.tables import data_table
from portal.components.times import DATE_TIME_SECONDS, TIME_SECONDS, local_time
from portal.pages import invoice
from portal.state.billing import BillingState

REFRESH_MS = 5000


def ledger_row(line: rx.Var) -> rx.Component:
    return rx.table.row(
        rx.table.cell(rx.code(local_time(line["at"], DATE_TIME_SECONDS), size="1")),
        rx.table.cell(line["what"]),
        rx.table.cell(line["account"]),
        rx.table.cell(line["amount"]),
        rx.table.cell(rx.text(line["description"], size="1", color_scheme="gray")),
    )


def usage_row(line: rx.Var) -> rx.Component:
    return rx.table.row(
        rx.table.cell(
            local_time(line["start"], TIME_SECONDS),
            " to ",
            local_time(line["end"], TIME_SECONDS),
            white_space="nowrap",
        ),
        rx.table.cell(line["cluster"]),
        rx.table.cell(line["device"]),
        rx.table.cell(line["gpus"]),
        rx.table.cell(line["seconds"]),
        rx.table.cell(line["rate"]),
        rx.table.cell(line["amount"]),
    )


def state_badge(state: rx.Var) -> rx.Component:
    return rx.badge(
        state,
        color_scheme=rx.match(
            state, ("confirmed", "green"), ("failed", "red"), ("submitted", "blue"), "gray"
        ),
    )


def signature_link(row: rx.Var) -> rx.Component:
    return rx.cond(
        row["signature"] != "",
        rx.link(rx.code(row["signature"].to(str) + "…", size="1"), href=row["link"], is_external=True),
        rx.text("—", color_scheme="gray"),
    )


def deposit_section() -> rx.Component:
    deposit = BillingState.deposit
    return rx.vstack(
        rx.heading("Deposit", size="4"),
        rx.cond(
            deposit.contains("address"),
            rx.hstack(
                rx.image(src=deposit["qr"], width="164px", height="164px", alt="Deposit address QR code"),
                rx.vstack(
                    rx.cond(
                        deposit["local"] != "",
                        rx.callout(
                            "Local development chain (LiteSVM): these tokens are not real money.",
                            icon="flask_conical",
                            color_scheme="amber",
                            size="1",
                        ),
                    ),
                    rx.text("Send the credit token to your personal deposit address:", size="2"),
                    rx.hstack(
                        rx.code(deposit["address"], id="deposit-address"),
                        rx.icon_button(
                            rx.icon("copy", size=14),
                            size="1",
                            variant="soft",
                            on_click=[
                                rx.set_clipboard(deposit["address"]),
                                rx.toast.success("Address copied"),
                            ],
                            aria_label="Copy the deposit address",
                        ),
                        align="center",
                    ),
                    rx.text(
                        "Token (mint): ", rx.code(deposit["mint"], size="1"), size="1", color_scheme="gray"
                    ),
                    rx.text(
                        "Credited once the transfer is confirmed on chain, usually within a minute. "
                        "The address is yours alone: no memo needed.",
                        size="1",
                        color_scheme="gray",
                    ),
                    spacing="2",
                ),
                spacing="4",
                align="start",
            ),
            rx.button(
                rx.icon("qr_code", size=16),
                "Show my deposit address",
                variant="soft",
                on_click=BillingState.show_deposit_address,
                id="show-deposit-address",
            ),
        ),
        rx.cond(
            BillingState.summary["deposits"].to(list[dict]).length() > 0,
            data_table(
                ("When", "Amount", "State", "Transaction"),
                BillingState.summary["deposits"].to(list[dict]),
                lambda d: rx.table.row(
                    rx.table.cell(rx.code(local_time(d["at"], DATE_TIME_SECONDS), size="1")),
                    rx.table.cell(d["amount"]),
                    rx.table.cell(state_badge(d["state"])),
                    rx.table.cell(signature_link(d)),
                ),
                id="deposits-table",
            ),
        ),
        spacing="3",
        width="100%",
    )


def invoice_picker() -> rx.Component:
    return rx.hstack(
        rx.select(
            BillingState.months, value=BillingState.month, on_change=BillingState.choose_month, size="1"
        ),
        rx.button(
            rx.icon("download", size=14),
            "Invoice (CSV)",
            size="1",
            variant="soft",
            on_click=BillingState.download_invoice,
            id="download-invoice",
        ),
        rx.button(
            rx.link(
                rx.hstack(rx.icon("printer", size=14), "Invoice", spacing="1", align="center"),
                href="/billing/invoice/" + BillingState.month,
                underline="none",
            ),
            as_child=True,
            size="1",
            variant="soft",
            id="open-invoice",
        ),
        align="center",
        wrap="wrap",
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
                deposit_section(),
                rx.hstack(rx.heading("Usage", size="4"), rx.spacer(), invoice_picker(), width="100%"),
                rx.cond(
                    summary["usage"].to(list[dict]).length() > 0,
                    data_table(
                        ("Period", "Cluster", "Device", "GPUs", "Seconds", "Rate", "Amount"),
                        summary["usage"].to(list[dict]),
                        usage_row,
                        id="usage-table",
                    ),
                    rx.text("No usage yet: it appears once a cluster runs.", color_scheme="gray"),
                ),
                rx.heading("Ledger", size="4"),
                rx.cond(
                    summary["ledger"].to(list[dict]).length() > 0,
                    data_table(
                        ("When", "What", "Account", "Amount", ""),
                        summary["ledger"].to(list[dict]),
                        ledger_row,
                        id="ledger-table",
                    ),
                    rx.text(
                        "No money has moved yet: credits, deposits, escrow and charges appear here.",
                        color_scheme="gray",
                        id="ledger-empty",
                    ),
                ),
                rx.hstack(
                    rx.button(
                        "Newer",
                        size="1",
                        variant="soft",
                        disabled=~BillingState.has_newer,
                        on_click=BillingState.page(-1),
                        id="ledger-newer",
                    ),
                    rx.button(
                        "Older",
                        size="1",
                        variant="soft",
                        disabled=~BillingState.has_older,
                        on_click=BillingState.page(1),
                        id="ledger-older",
                    ),
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
                        stat_card("Being paid", earnings["in_flight"], "send", "earned-in-flight"),
                        stat_card("Paid out", earnings["paid"], "circle_check", "earned-paid"),
                        columns=rx.breakpoints(initial="1", sm="2", md="4"),
                        spacing="4",
                        width="100%",
                    ),
                    rx.cond(
                        earnings["wallet"] != "",
                        rx.text(
                            "Paid in the credit token to ",
                            rx.code(earnings["wallet"], size="1"),
                            " once your unpaid earnings reach ",
                            earnings["threshold"],
                            ".",
                            size="2",
                            color_scheme="gray",
                        ),
                        rx.callout(
                            rx.fragment(
                                "Link a payout wallet to be paid: ",
                                rx.link("Account", href="/account"),
                                ".",
                            ),
                            icon="wallet",
                            color_scheme="amber",
                        ),
                    ),
                    chart(BillingState.earnings_chart, "chart-earnings"),
                    rx.heading("Payouts", size="4"),
                    rx.cond(
                        earnings["payouts"].to(list[dict]).length() > 0,
                        data_table(
                            ("When", "Amount", "State", "Wallet", "Transaction", ""),
                            earnings["payouts"].to(list[dict]),
                            lambda p: rx.table.row(
                                rx.table.cell(rx.code(local_time(p["at"], DATE_TIME_SECONDS), size="1")),
                                rx.table.cell(p["amount"]),
                                rx.table.cell(state_badge(p["state"])),
                                rx.table.cell(rx.code(p["wallet"], size="1")),
                                rx.table.cell(signature_link(p)),
                                rx.table.cell(rx.text(p["why"], size="1", color_scheme="red")),
                            ),
                            id="payouts-table",
                        ),
                        rx.text("No payouts yet.", color_scheme="gray"),
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
                        ("Cluster", "Earned", "Since"),
                        earnings["clusters"].to(list[dict]),
                        lambda c: rx.table.row(
                            rx.table.cell(c["name"]),
                            rx.table.cell(c["earned"]),
                            rx.table.cell(local_time(c["since"])),
                        ),
                    ),
                    rx.moment(interval=REFRESH_MS, on_change=BillingState.tick_earnings, display="none"),
                    spacing="4",
                    width="100%",
                ),
                rx.center(rx.spinner(size="3"), padding="4rem"),
            ),
        )
    )


def register(app: rx.App) -> None:
    app.add_page(billing_page, route="/billing", title="Billing · GPU Portal", on_load=BillingState.load)
    invoice.register(app)  # the printable invoice, under /billing
    app.add_page(
        earnings_page, route="/earnings", title="Earnings · GPU Portal", on_load=BillingState.load_earnings
    )
