"""The admin's payouts: every provider's, filtered by state, provider and date; a failed one sent again."""

from __future__ import annotations

import reflex as rx

from portal.components.forms import worded_select
from portal.components.layout import page_frame
from portal.components.tables import data_table, pager, reason_dialog
from portal.components.times import local_time
from portal.state.admin_payouts import AdminPayoutsState


def payout_row(row: rx.Var) -> rx.Component:
    return rx.table.row(
        rx.table.cell(
            rx.text(row["provider"], size="2", weight="medium"),
            rx.code(row["wallet"], size="1", variant="ghost"),
        ),
        rx.table.cell(row["amount"], white_space="nowrap"),
        rx.table.cell(
            rx.badge(row["state"], color_scheme=row["color"]),
            rx.text(row["why"], size="1", color_scheme="gray"),
            # Beside the state, not in a column of its own: on a phone the table's far columns scroll away.
            rx.cond(
                row["failed"],
                rx.button(
                    "Retry",
                    size="1",
                    variant="soft",
                    margin_top="0.35rem",
                    on_click=AdminPayoutsState.ask_reason(row["id"], row["label"]),
                ),
            ),
        ),
        rx.table.cell(row["attempts"]),
        rx.table.cell(local_time(row["created"])),
        rx.table.cell(
            rx.cond(
                row["link"] != "",
                rx.link("Transaction", href=row["link"], is_external=True, size="2"),
            )
        ),
    )


def retry_dialog() -> rx.Component:
    return reason_dialog(
        AdminPayoutsState,
        title="Retry the payout of",
        description=(
            "It failed on chain, so nothing was paid; its amount is still held for it. The next settlement "
            "sends it once. Your reason goes to the audit log."
        ),
        placeholder="Reason, e.g. treasury topped up",
        keep="Cancel",
        confirm="Retry payout",
        on_confirm=AdminPayoutsState.confirm_retry,
        name="retry",
        color_scheme=None,
    )


def labelled(label: str, control: rx.Component, width: str) -> rx.Component:
    return rx.vstack(rx.text(label, size="1", color_scheme="gray"), control, spacing="1", width=width)


def filters() -> rx.Component:
    return rx.form(
        rx.flex(
            labelled(
                "State",
                worded_select(
                    AdminPayoutsState.states,
                    value=AdminPayoutsState.filters["state"],
                    on_change=AdminPayoutsState.pick_state,
                    aria_label="State",
                ),
                "10rem",
            ),
            labelled(
                "Provider",
                rx.input(
                    name="provider",
                    placeholder="email contains",
                    max_length=100,
                    id="payout-provider",
                    width="100%",
                ),
                "14rem",
            ),
            labelled("From", rx.input(type="date", name="since", id="payout-since", width="100%"), "10rem"),
            labelled("To", rx.input(type="date", name="until", id="payout-until", width="100%"), "10rem"),
            rx.button(rx.icon("filter", size=14), "Filter", type="submit"),
            spacing="3",
            wrap="wrap",
            align="end",
        ),
        on_submit=AdminPayoutsState.apply_filters,
        reset_on_submit=False,
        id="payout-filters",
    )


def admin_payouts() -> rx.Component:
    return page_frame(
        rx.vstack(
            rx.heading("Payouts", size="7"),
            rx.text(
                "Every provider's payouts on Solana, newest first. A failed one can be sent again.",
                color_scheme="gray",
            ),
            filters(),
            rx.cond(
                AdminPayoutsState.filter_error != "",
                rx.callout(
                    AdminPayoutsState.filter_error,
                    icon="triangle_alert",
                    color_scheme="amber",
                    id="payout-filter-error",
                ),
            ),
            rx.cond(
                AdminPayoutsState.rows.length() > 0,
                data_table(
                    ("Provider", "Amount", "State", "Tries", "Made", "On chain"),
                    AdminPayoutsState.rows,
                    payout_row,
                    id="admin-payouts-table",
                ),
                rx.cond(
                    AdminPayoutsState.loaded,
                    rx.text("No payout matches.", color_scheme="gray", id="no-payouts"),
                    rx.spinner(),
                ),
            ),
            pager(
                AdminPayoutsState.shown,
                AdminPayoutsState.has_newer,
                AdminPayoutsState.has_older,
                AdminPayoutsState.page,
            ),
            retry_dialog(),
            spacing="4",
            width="100%",
        ),
        role="admin",
    )


def register(app: rx.App) -> None:
    app.add_page(
        admin_payouts, route="/admin/payouts", title="Payouts · GPU Portal", on_load=AdminPayoutsState.load
    )
