"""The account page: who you are, where you are signed in, and your API keys."""

from __future__ import annotations

import reflex as rx

from portal.components.layout import page_frame
from portal.components.tables import confirm_button, data_table
from portal.components.times import local_time
from portal.state.account import AccountState


def profile() -> rx.Component:
    return rx.card(
        rx.vstack(
            rx.heading("Profile", size="4"),
            rx.cond(
                AccountState.wallet_error != "",
                rx.callout(
                    AccountState.wallet_error, icon="triangle_alert", color_scheme="red", id="wallet-error"
                ),
            ),
            rx.data_list.root(
                rx.data_list.item(
                    rx.data_list.label("Email"), rx.data_list.value(AccountState.email, id="account-email")
                ),
                rx.data_list.item(
                    rx.data_list.label("Roles"),
                    rx.data_list.value(
                        rx.hstack(rx.foreach(AccountState.roles, lambda r: rx.badge(r)), id="account-roles")
                    ),
                ),
                rx.data_list.item(
                    rx.data_list.label("Payout wallet"),
                    rx.data_list.value(
                        rx.hstack(
                            rx.cond(
                                AccountState.wallet != "",
                                rx.code(AccountState.wallet, id="account-wallet"),
                                rx.text("none linked", color_scheme="gray"),
                            ),
                            rx.button(
                                rx.icon("wallet", size=14),
                                "Link a wallet",
                                size="1",
                                variant="soft",
                                on_click=AccountState.start_link_wallet,
                                id="link-wallet",
                            ),
                            align="center",
                        )
                    ),
                ),
            ),
            spacing="3",
        ),
        width="100%",
    )


def providing() -> rx.Component:
    """Become a provider, or stop: the navigation follows at once."""
    return rx.card(
        rx.vstack(
            rx.heading("Offer your GPUs", size="4"),
            rx.cond(
                AccountState.provider_error != "",
                rx.callout(
                    AccountState.provider_error,
                    icon="triangle_alert",
                    color_scheme="red",
                    id="provider-error",
                    width="100%",
                ),
            ),
            rx.cond(
                AccountState.is_provider,
                rx.flex(
                    rx.text(
                        "You are a provider: your devices' GPUs are offered on the marketplace and you are "
                        "paid for their verified uptime.",
                        size="2",
                        id="provider-status",
                    ),
                    rx.spacer(),
                    rx.hstack(
                        rx.button(
                            rx.link("Your devices", href="/devices", underline="none"),
                            as_child=True,
                            size="2",
                            variant="soft",
                        ),
                        confirm_button(
                            "Stop being a provider",
                            title="Stop being a provider?",
                            description="The provider area leaves your navigation. You cannot stop while one "
                            "of your devices serves a rental or is on the market. You can become a provider "
                            "again at any time.",
                            confirm="Stop being a provider",
                            keep="Keep providing",
                            on_confirm=AccountState.stop_providing,
                            id="stop-providing",
                        ),
                        wrap="wrap",
                        spacing="2",
                    ),
                    direction=rx.breakpoints(initial="column", md="row"),
                    gap="3",
                    align=rx.breakpoints(initial="start", md="center"),
                    width="100%",
                ),
                rx.flex(
                    rx.text(
                        "Earn from idle GPUs: become a provider, add a device and run the agent on it. You "
                        "keep renting as a customer.",
                        size="2",
                        id="provider-status",
                    ),
                    rx.spacer(),
                    rx.button(
                        rx.icon("server", size=14),
                        "Become a provider",
                        on_click=AccountState.become_provider,
                        id="become-provider",
                    ),
                    direction=rx.breakpoints(initial="column", md="row"),
                    gap="3",
                    align=rx.breakpoints(initial="start", md="center"),
                    width="100%",
                ),
            ),
            spacing="3",
            width="100%",
        ),
        width="100%",
        id="provider-card",
    )


def session_row(row: rx.Var) -> rx.Component:
    return rx.table.row(
        rx.table.cell(
            rx.hstack(
                rx.text(row["kind"]), rx.cond(row["current"], rx.badge("this browser", color_scheme="green"))
            )
        ),
        rx.table.cell(row["method"]),
        rx.table.cell(row["ip"]),
        rx.table.cell(rx.text(row["agent"], size="1")),
        rx.table.cell(local_time(row["last_used"], empty="never")),
        rx.table.cell(
            rx.cond(
                row["current"],
                rx.button(
                    "Sign out", size="1", variant="soft", on_click=AccountState.sign_out, id="sign-out"
                ),
                rx.button(
                    "Revoke",
                    size="1",
                    variant="soft",
                    color_scheme="red",
                    on_click=AccountState.end_session(row["id"]),
                ),
            )
        ),
    )


def sessions() -> rx.Component:
    return rx.card(
        rx.vstack(
            rx.heading("Signed-in browsers and clients", size="4"),
            data_table(
                ("Kind", "Method", "Address", "Client", "Last used", ""),
                AccountState.sessions,
                session_row,
                size="1",
            ),
            spacing="3",
            width="100%",
        ),
        width="100%",
    )


def new_key_callout() -> rx.Component:
    return rx.cond(
        AccountState.new_key != "",
        rx.callout(
            rx.vstack(
                rx.text("Copy your new key now: it is shown this once.", weight="bold"),
                rx.hstack(
                    rx.code(AccountState.new_key, id="new-api-key", size="3"),
                    rx.button(
                        rx.icon("copy", size=14),
                        "Copy",
                        size="1",
                        variant="soft",
                        on_click=rx.set_clipboard(AccountState.new_key),
                    ),
                    rx.button("Done", size="1", variant="ghost", on_click=AccountState.dismiss_new_key),
                    align="center",
                    wrap="wrap",
                ),
            ),
            icon="key",
            color_scheme="green",
            width="100%",
        ),
    )


def key_row(row: rx.Var) -> rx.Component:
    return rx.table.row(
        rx.table.cell(row["name"]),
        rx.table.cell(rx.code(row["prefix"])),
        rx.table.cell(rx.text(row["scopes"], size="1")),
        rx.table.cell(local_time(row["created"])),
        rx.table.cell(local_time(row["last_used"], empty="never")),
        rx.table.cell(
            confirm_button(
                "Revoke",
                title="Revoke this key?",
                description="Programs using it stop working at once. This cannot be undone.",
                confirm="Revoke",
                keep="Keep it",
                on_confirm=AccountState.revoke_key(row["id"]),
                size="1",
            )
        ),
    )


def api_keys() -> rx.Component:
    return rx.card(
        rx.vstack(
            rx.heading("API keys", size="4", id="api-keys"),
            rx.text(
                "For scripts and the portal CLI. Keys never sign in to pages and cannot manage keys.",
                size="2",
                color_scheme="gray",
            ),
            new_key_callout(),
            rx.cond(
                AccountState.key_error != "",
                rx.callout(AccountState.key_error, icon="triangle_alert", color_scheme="red"),
            ),
            rx.form(
                rx.vstack(
                    rx.input(
                        name="name",
                        placeholder="Key name, e.g. ci-pipeline",
                        required=True,
                        max_length=80,
                        id="key-name",
                    ),
                    rx.flex(
                        rx.foreach(
                            AccountState.scope_choices,
                            lambda choice: rx.text(
                                rx.flex(
                                    rx.checkbox(name=choice[0]),
                                    rx.tooltip(rx.code(choice[0]), content=choice[1]),
                                    spacing="2",
                                ),
                                as_="label",
                            ),
                        ),
                        wrap="wrap",
                        spacing="4",
                    ),
                    rx.button(rx.icon("plus", size=14), "Create key", type="submit", id="create-key"),
                    spacing="3",
                    align="start",
                ),
                on_submit=AccountState.create_key,
                reset_on_submit=True,
            ),
            rx.cond(
                AccountState.keys.length() > 0,
                data_table(
                    ("Name", "Prefix", "Scopes", "Created", "Last used", ""),
                    AccountState.keys,
                    key_row,
                    size="1",
                    id="api-key-table",
                ),
                rx.text("No active keys.", size="2", color_scheme="gray", id="no-api-keys"),
            ),
            spacing="3",
            width="100%",
        ),
        width="100%",
    )


def account() -> rx.Component:
    return page_frame(
        rx.cond(
            AccountState.loaded,
            rx.vstack(
                rx.heading("Your account", size="7"),
                profile(),
                providing(),
                api_keys(),
                sessions(),
                spacing="5",
                width="100%",
            ),
            rx.center(rx.spinner(size="3"), padding="4rem"),
        )
    )


def register(app: rx.App) -> None:
    app.add_page(account, route="/account", title="Account · GPU Portal", on_load=AccountState.load)
