"""Sign up and sign in."""

from __future__ import annotations

import reflex as rx

from portal.components.layout import page_frame
from portal.state.auth_forms import AuthFormState

# Until the page is live (its state hydrated over the websocket) a click would be queued, not answered;
# the buttons wait, and so does a browser test's click.
_NOT_READY = AuthFormState.busy | ~rx.State.is_hydrated


def error_callout() -> rx.Component:
    return rx.cond(
        AuthFormState.error != "",
        rx.callout(
            AuthFormState.error, icon="triangle_alert", color_scheme="red", id="auth-error", width="100%"
        ),
    )


def field(label: str, name: str, kind: str = "text", **props: object) -> rx.Component:
    return rx.vstack(
        rx.text(label, as_="label", html_for=name, size="2", weight="medium"),
        rx.input(name=name, id=name, type=kind, required=True, size="3", width="100%", **props),
        spacing="1",
        width="100%",
    )


def oauth_buttons() -> rx.Component:
    return rx.cond(
        AuthFormState.oauth_providers.length() > 0,
        rx.vstack(
            rx.hstack(
                rx.separator(),
                rx.text("or", size="1", color_scheme="gray"),
                rx.separator(),
                align="center",
                width="100%",
            ),
            rx.foreach(
                AuthFormState.oauth_providers,
                lambda p: rx.button(
                    rx.link(
                        "Continue with ",
                        p["label"],
                        href="/api/v1/auth/oauth/" + p["name"] + "/login",
                        underline="none",
                    ),
                    as_child=True,
                    variant="outline",
                    size="3",
                    width="100%",
                ),
            ),
            width="100%",
        ),
    )


def card(title: str, subtitle: rx.Component, *children: rx.Component) -> rx.Component:
    return page_frame(
        rx.center(
            rx.card(
                rx.vstack(rx.heading(title, size="6"), subtitle, *children, spacing="4", width="100%"),
                size="4",
                width="100%",
                max_width="28rem",
            ),
            padding_y="2rem",
        )
    )


def login() -> rx.Component:
    return card(
        "Sign in",
        rx.text("No account yet? ", rx.link("Sign up", href="/signup"), size="2", color_scheme="gray"),
        error_callout(),
        rx.form(
            rx.vstack(
                field("Email", "email", "email", auto_complete="email", max_length=320),
                field("Password", "password", "password", auto_complete="current-password", max_length=200),
                rx.button(
                    rx.cond(AuthFormState.busy, rx.spinner(size="2"), rx.fragment()),
                    "Sign in",
                    type="submit",
                    size="3",
                    width="100%",
                    disabled=_NOT_READY,
                    id="submit-sign-in",
                ),
                spacing="3",
                width="100%",
            ),
            on_submit=AuthFormState.sign_in,
            width="100%",
        ),
        oauth_buttons(),
        rx.button(
            rx.icon("wallet", size=16),
            "Sign in with a Solana wallet",
            variant="outline",
            size="3",
            width="100%",
            on_click=AuthFormState.start_wallet,
            disabled=_NOT_READY,
            id="wallet-sign-in",
        ),
    )


def role_choice(value: str, label: str, description: str, checked: bool) -> rx.Component:
    return rx.text(
        rx.flex(
            rx.checkbox(name=value, default_checked=checked, id=f"role-{value}"),
            rx.vstack(
                rx.text(label, weight="medium", size="2"),
                rx.text(description, size="1", color_scheme="gray"),
                spacing="0",
            ),
            spacing="2",
        ),
        as_="label",
    )


def signup() -> rx.Component:
    return card(
        "Create your account",
        rx.text("Already have one? ", rx.link("Sign in", href="/login"), size="2", color_scheme="gray"),
        error_callout(),
        rx.form(
            rx.vstack(
                field("Email", "email", "email", auto_complete="email", max_length=320),
                field(
                    "Password (10 characters or more)",
                    "password",
                    "password",
                    auto_complete="new-password",
                    min_length=10,
                    max_length=200,
                ),
                field(
                    "Repeat the password", "confirm", "password", auto_complete="new-password", max_length=200
                ),
                rx.text("I want to", size="2", weight="medium"),
                role_choice("customer", "Rent GPUs", "Deploy Ray clusters on the network's GPUs.", True),
                role_choice("provider", "Provide GPUs", "Connect machines and earn.", False),
                rx.button(
                    rx.cond(AuthFormState.busy, rx.spinner(size="2"), rx.fragment()),
                    "Create account",
                    type="submit",
                    size="3",
                    width="100%",
                    disabled=_NOT_READY,
                    id="submit-sign-up",
                ),
                spacing="3",
                width="100%",
            ),
            on_submit=AuthFormState.sign_up,
            width="100%",
        ),
        oauth_buttons(),
    )


def unlock() -> rx.Component:
    return card(
        "Unlock your account",
        rx.text(
            "Many wrong passwords were tried on your account, so it was locked. Unlock it here; your "
            "password stays as it was.",
            size="2",
            color_scheme="gray",
        ),
        error_callout(),
        rx.cond(
            AuthFormState.notice != "",
            rx.callout(
                AuthFormState.notice, icon="check", color_scheme="green", id="auth-notice", width="100%"
            ),
        ),
        rx.button(
            rx.cond(AuthFormState.busy, rx.spinner(size="2"), rx.fragment()),
            "Unlock my account",
            size="3",
            width="100%",
            on_click=AuthFormState.unlock,
            disabled=_NOT_READY | (AuthFormState.notice != ""),
            id="submit-unlock",
        ),
        rx.link("Sign in", href="/login", size="2"),
    )


def register(app: rx.App) -> None:
    app.add_page(login, route="/login", title="Sign in · GPU Portal", on_load=AuthFormState.open_form)
    app.add_page(signup, route="/signup", title="Sign up · GPU Portal", on_load=AuthFormState.open_form)
    app.add_page(unlock, route="/unlock", title="Unlock · GPU Portal", on_load=AuthFormState.open_unlock)
