"""The admin's clusters: every customer's, filtered by state; terminate one with a reason they see."""

from __future__ import annotations

import reflex as rx

from portal.components.forms import worded_select
from portal.components.layout import page_frame
from portal.components.tables import data_table, pager, reason_dialog
from portal.components.times import local_time
from portal.state.admin_clusters import AdminClustersState


def cluster_row(row: rx.Var) -> rx.Component:
    return rx.table.row(
        rx.table.cell(
            rx.text(row["name"], weight="medium"), rx.text(row["gpus"], size="1", color_scheme="gray")
        ),
        rx.table.cell(rx.text(row["owner"], size="2")),
        rx.table.cell(
            rx.badge(row["state"], color_scheme=row["color"]),
            rx.text(row["reason"], size="1", color_scheme="gray"),
            # Beside the state, not in a column of its own: on a phone the table's far columns scroll away.
            rx.cond(
                row["active"],
                rx.button(
                    "Terminate",
                    size="1",
                    variant="soft",
                    color_scheme="red",
                    margin_top="0.35rem",
                    on_click=AdminClustersState.ask_reason(row["id"], row["name"]),
                ),
            ),
        ),
        rx.table.cell(row["spent"], white_space="nowrap"),
        rx.table.cell(local_time(row["created"])),
    )


def terminate_dialog() -> rx.Component:
    return reason_dialog(
        AdminClustersState,
        title="Terminate",
        description="Its nodes stop now and the unused escrow returns to the customer, who sees your reason.",
        placeholder="Reason, e.g. abuse report 1432",
        keep="Keep it",
        confirm="Terminate",
        on_confirm=AdminClustersState.confirm_terminate,
        name="terminate",
    )


def admin_clusters() -> rx.Component:
    return page_frame(
        rx.vstack(
            rx.heading("Clusters", size="7"),
            rx.text("Every customer's clusters, newest first.", color_scheme="gray"),
            rx.box(
                worded_select(
                    AdminClustersState.states,
                    value=AdminClustersState.state_filter,
                    on_change=AdminClustersState.pick_state,
                    aria_label="State",
                ),
                width="12rem",
                id="cluster-state-filter",
            ),
            rx.cond(
                AdminClustersState.rows.length() > 0,
                data_table(
                    ("Cluster", "Customer", "State", "Spent", "Created"),
                    AdminClustersState.rows,
                    cluster_row,
                    id="admin-clusters-table",
                ),
                rx.cond(
                    AdminClustersState.loaded,
                    rx.text("No cluster in this state.", color_scheme="gray", id="no-clusters"),
                    rx.spinner(),
                ),
            ),
            pager(
                AdminClustersState.shown,
                AdminClustersState.has_newer,
                AdminClustersState.has_older,
                AdminClustersState.page,
            ),
            terminate_dialog(),
            spacing="4",
            width="100%",
        ),
        role="admin",
    )


def register(app: rx.App) -> None:
    app.add_page(
        admin_clusters,
        route="/admin/clusters",
        title="Clusters · GPU Portal",
        on_load=AdminClustersState.load,
    )
