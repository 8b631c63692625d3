"""The page frame: navigation for the four areas, colour-mode switch, footer."""

from __future__ import annotations

import reflex as rx

from portal import __version__
from portal.state.session import SessionState

AREAS = (
    ("Network", "/", "globe"),
    ("Marketplace", "/market", "store"),
    ("Explorer", "/explorer", "chart-line"),
    ("Rent GPUs", "/customer", "rocket"),
    ("Provide GPUs", "/provider", "server"),
    ("Admin", "/admin", "shield"),
)


def nav_link(label: str, href: str, icon: str) -> rx.Component:
    return rx.link(
        rx.hstack(
            rx.icon(icon, size=16), rx.text(label, size="2", weight="medium"), spacing="2", align="center"
        ),
        href=href,
        underline="none",
        color_scheme="gray",
        high_contrast=True,
        padding_x="0.6em",
        padding_y="0.35em",
        border_radius="var(--radius-2)",
        _hover={"background": "var(--gray-a3)"},
    )


def account_menu() -> rx.Component:
    return rx.cond(
        SessionState.signed_in,
        rx.menu.root(
            rx.menu.trigger(
                rx.button(
                    rx.icon("circle_user", size=16),
                    SessionState.display_name,
                    variant="soft",
                    size="2",
                    id="account-menu",
                )
            ),
            rx.menu.content(
                rx.menu.item("Account and API keys", on_click=rx.redirect("/account")),
                rx.cond(
                    SessionState.is_admin, rx.menu.item("Audit log", on_click=rx.redirect("/admin/audit"))
                ),
                rx.cond(
                    SessionState.is_admin,
                    rx.menu.item("Devices and faults", on_click=rx.redirect("/admin/devices")),
                ),
                rx.menu.separator(),
                rx.menu.item("Sign out", color="red", on_click=SessionState.sign_out),
            ),
        ),
        rx.hstack(
            rx.button(
                rx.link("Sign in", href="/login", underline="none"), as_child=True, variant="soft", size="2"
            ),
            rx.button(rx.link("Sign up", href="/signup", underline="none"), as_child=True, size="2"),
            spacing="2",
        ),
    )


def navbar() -> rx.Component:
    return rx.box(
        rx.hstack(
            rx.link(
                rx.hstack(
                    rx.icon("cpu", size=22, color=rx.color("accent", 10)),
                    rx.heading("GPU Portal", size="4", weight="bold"),
                    spacing="2",
                    align="center",
                ),
                href="/",
                underline="none",
                color_scheme="gray",
                high_contrast=True,
            ),
            rx.el.nav(rx.hstack(*(nav_link(*area) for area in AREAS), spacing="1"), aria_label="Areas"),
            rx.spacer(),
            rx.link(rx.text("API", size="2"), href="/api/docs", color_scheme="gray"),
            account_menu(),
            rx.color_mode.button(
                size="2",
                variant="ghost",
                aria_label="Switch light or dark theme",
                disabled=~rx.State.is_hydrated,  # a click before the page is live would be lost
            ),
            align="center",
            spacing="4",
            max_width="72rem",
            margin_x="auto",
            padding_x="1.25rem",
            padding_y="0.75rem",
        ),
        border_bottom=f"1px solid {rx.color('gray', 5)}",
        background=rx.color("gray", 1),
        position="sticky",
        top="0",
        z_index="10",
        width="100%",
    )


def footer() -> rx.Component:
    return rx.hstack(
        rx.text(f"GPU Portal {__version__} · open source, self-hostable", size="1", color_scheme="gray"),
        rx.spacer(),
        # /metrics is for Prometheus (behind its token in production); the API is what people read.
        rx.link("API", href="/api/docs", size="1", color_scheme="gray"),
        rx.link("Health", href="/readyz", size="1", color_scheme="gray"),
        max_width="72rem",
        margin_x="auto",
        padding="1.25rem",
        width="100%",
    )


def page_frame(*children: rx.Component) -> rx.Component:
    return rx.box(
        navbar(),
        rx.el.main(*children, max_width="72rem", margin_x="auto", padding="1.25rem", width="100%"),
        footer(),
        min_height="100vh",
        background=rx.color("gray", 1),
    )


def stat_card(label: str, value: rx.Var | int | str, icon: str, test_id: str) -> rx.Component:
    return rx.card(
        rx.hstack(
            rx.box(rx.icon(icon, size=20, color=rx.color("accent", 10))),
            rx.vstack(
                rx.text(label, size="2", color_scheme="gray"),
                rx.heading(value, size="7", id=test_id),
                spacing="1",
            ),
            spacing="3",
            align="start",
        ),
        width="100%",
    )


def link_button(icon: str, label: str, href: str, *, soft: bool = False) -> rx.Component:
    """A large button that navigates; ``soft`` for the secondary ones beside the main action."""
    return rx.button(
        rx.link(rx.icon(icon, size=16), label, href=href, underline="none"),
        as_child=True,
        size="3",
        variant="soft" if soft else "solid",
    )
