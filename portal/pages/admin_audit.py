"""The admin's audit log viewer."""

from __future__ import annotations

import reflex as rx

from portal.components.layout import page_frame
from portal.components.tables import data_table, pager
from portal.components.times import DATE_TIME_SECONDS, local_time
from portal.state.audit import AuditState


def audit_row(row: rx.Var) -> rx.Component:
    return rx.table.row(
        rx.table.cell(rx.text(local_time(row["at"], DATE_TIME_SECONDS), size="1")),
        rx.table.cell(rx.code(row["action"])),
        rx.table.cell(
            rx.badge(row["outcome"], color_scheme=rx.cond(row["outcome"] == "success", "green", "red"))
        ),
        rx.table.cell(rx.text(row["actor"], size="1")),
        rx.table.cell(rx.text(row["target"], size="1")),
        rx.table.cell(row["ip"]),
        rx.table.cell(rx.text(row["details"], size="1")),
    )


def filters() -> rx.Component:
    return rx.form(
        rx.hstack(
            rx.input(name="action", placeholder="action or prefix, e.g. auth.", max_length=64),
            rx.input(name="actor", placeholder="actor, e.g. user:…", max_length=64),
            rx.select(["success", "failure"], name="outcome", placeholder="any outcome"),
            rx.button(rx.icon("filter", size=14), "Filter", type="submit"),
            wrap="wrap",
            spacing="2",
        ),
        on_submit=AuditState.apply_filters,
    )


def audit_log() -> rx.Component:
    return page_frame(
        rx.vstack(
            rx.heading("Audit log", size="7"),
            rx.text("Who did what, to which target, from where, and whether it worked.", color_scheme="gray"),
            filters(),
            rx.cond(
                AuditState.rows.length() > 0,
                data_table(
                    ("When", "Action", "Outcome", "Actor", "Target", "From", "Details"),
                    AuditState.rows,
                    audit_row,
                    size="1",
                    id="audit-table",
                ),
                rx.cond(
                    AuditState.loaded, rx.text("No entries match.", color_scheme="gray"), rx.spinner(size="3")
                ),
            ),
            pager(
                AuditState.shown, AuditState.has_newer, AuditState.has_older, AuditState.page, id="audit-page"
            ),
            spacing="4",
            width="100%",
        ),
        role="admin",
    )


def register(app: rx.App) -> None:
    app.add_page(audit_log, route="/admin/audit", title="Audit log · GPU Portal", on_load=AuditState.load)
