"""The admin's people: find an account by email, set its roles, lock or unlock it, grant it credits."""

from __future__ import annotations

import reflex as rx

from portal.components.layout import page_frame
from portal.components.tables import data_table, pager
from portal.components.times import DATE, local_time
from portal.state.admin_users import ROLES, AdminUsersState


def user_row(row: rx.Var) -> rx.Component:
    return rx.table.row(
        rx.table.cell(
            rx.text(row["email"], weight="medium"), rx.text(row["name"], size="1", color_scheme="gray")
        ),
        rx.table.cell(row["roles"]),
        rx.table.cell(
            rx.cond(
                row["locked"],
                rx.badge("locked", color_scheme="red"),
                rx.badge("active", color_scheme="green", variant="soft"),
            )
        ),
        rx.table.cell(row["balance"], white_space="nowrap"),
        rx.table.cell(local_time(row["joined"], DATE)),
        rx.table.cell(
            rx.hstack(
                rx.button(
                    "Roles",
                    size="1",
                    variant="soft",
                    on_click=AdminUsersState.open_dialog("roles", row["id"], row["email"]),
                ),
                rx.button(
                    "Grant credits",
                    size="1",
                    variant="soft",
                    on_click=AdminUsersState.open_dialog("credits", row["id"], row["email"]),
                ),
                rx.cond(
                    row["locked"],
                    rx.button(
                        "Unlock",
                        size="1",
                        variant="soft",
                        on_click=AdminUsersState.set_locked(row["id"], False),
                    ),
                    rx.button(
                        "Lock",
                        size="1",
                        variant="soft",
                        color_scheme="red",
                        on_click=AdminUsersState.set_locked(row["id"], True),
                    ),
                ),
                spacing="2",
            )
        ),
    )


def dialog_error() -> rx.Component:
    return rx.cond(
        AdminUsersState.error != "",
        rx.callout(AdminUsersState.error, icon="triangle_alert", color_scheme="red", id="admin-user-error"),
    )


def dialog_buttons(label: str, element_id: str) -> rx.Component:
    return rx.hstack(
        rx.button(
            "Cancel",
            type="button",
            variant="soft",
            color_scheme="gray",
            on_click=AdminUsersState.close_dialog,
        ),
        rx.button(label, type="submit", id=element_id),
        justify="end",
        spacing="3",
    )


def roles_form() -> rx.Component:
    return rx.form(
        rx.vstack(
            *(
                rx.checkbox(
                    role.capitalize(), name=role, default_checked=AdminUsersState.editing_roles.contains(role)
                )
                for role in ROLES
            ),
            dialog_error(),
            dialog_buttons("Save roles", "save-roles"),
            spacing="3",
        ),
        on_submit=AdminUsersState.save_roles,
    )


def credits_form() -> rx.Component:
    return rx.form(
        rx.vstack(
            rx.input(name="amount", placeholder="Amount in USD, e.g. 25", id="grant-amount", width="100%"),
            rx.input(
                name="reason",
                placeholder="Reason, e.g. refund for the outage of 2 May",
                max_length=200,
                id="grant-reason",
                width="100%",
            ),
            dialog_error(),
            dialog_buttons("Grant", "confirm-grant"),
            spacing="3",
            width="100%",
        ),
        on_submit=AdminUsersState.grant,
        reset_on_submit=False,
    )


def user_dialog() -> rx.Component:
    return rx.dialog.root(
        rx.dialog.content(
            rx.dialog.title(
                rx.cond(AdminUsersState.dialog == "roles", "Roles of ", "Grant credits to "),
                AdminUsersState.editing_email,
            ),
            rx.dialog.description(
                rx.cond(
                    AdminUsersState.dialog == "roles",
                    "What this account may do. The change is audited.",
                    "Credits land on the account's balance at once; the reason goes to the ledger and the "
                    "audit log.",
                ),
                size="2",
                margin_bottom="1rem",
            ),
            rx.cond(AdminUsersState.dialog == "roles", roles_form(), credits_form()),
        ),
        open=AdminUsersState.editing_id != "",
        on_open_change=lambda _open: AdminUsersState.close_dialog(),
    )


def admin_users() -> rx.Component:
    return page_frame(
        rx.vstack(
            rx.heading("People", size="7"),
            rx.text("Every account: its roles, whether it may sign in, its balance.", color_scheme="gray"),
            rx.form(
                rx.hstack(
                    rx.input(name="text", placeholder="email contains", max_length=100, id="user-search"),
                    rx.button(rx.icon("search", size=14), "Search", type="submit"),
                    spacing="2",
                    wrap="wrap",
                ),
                on_submit=AdminUsersState.search,
            ),
            rx.cond(
                AdminUsersState.rows.length() > 0,
                data_table(
                    ("Account", "Roles", "State", "Balance", "Joined", ""),
                    AdminUsersState.rows,
                    user_row,
                    id="users-table",
                ),
                rx.cond(
                    AdminUsersState.loaded,
                    rx.text("No account matches.", color_scheme="gray", id="no-users"),
                    rx.spinner(),
                ),
            ),
            pager(
                AdminUsersState.shown,
                AdminUsersState.has_newer,
                AdminUsersState.has_older,
                AdminUsersState.page,
            ),
            user_dialog(),
            spacing="4",
            width="100%",
        ),
        role="admin",
    )


def register(app: rx.App) -> None:
    app.add_page(admin_users, route="/admin/users", title="People · GPU Portal", on_load=AdminUsersState.load)
