"""The page frame: navigation for the four areas, colour-mode switch, footer."""

from __future__ import annotations

import reflex as rx

from portal import __version__
from portal.state.session import SessionState, refusal

# The areas in the navigation, and who is shown each: everyone, the signed out and the role's holders
# (a page nobody can use is not offered), or admins only.
AREAS = (
    ("Network", "/", "globe", "everyone"),
    ("Marketplace", "/market", "store", "everyone"),
    ("Explorer", "/explorer", "chart-line", "everyone"),
    ("Rent GPUs", "/customer", "rocket", "customer"),
    ("Provide GPUs", "/provider", "server", "provider"),
    ("Admin", "/admin", "shield", "admin"),
)
ADMIN_PAGES = (
    ("People", "/admin/users"),
    ("Clusters", "/admin/clusters"),
    ("Devices and faults", "/admin/devices"),
    ("Payouts", "/admin/payouts"),
    ("Analytics", "/admin/analytics"),
    ("Audit log", "/admin/audit"),
)
# Widths (Reflex's breakpoints: xs 480 px, sm 768, md 992, lg 1280): below md the areas fold into a menu
# (phone_menu); below lg the bar's links drop their icons and the account button its name, so the whole
# bar fits a small laptop.


def _shown_to(who: str) -> rx.Var | bool:
    return {
        "everyone": True,
        "customer": SessionState.shows_customer_area,
        "provider": SessionState.shows_provider_area,
        "admin": SessionState.is_admin,
    }[who]


def for_whom(who: str, component: rx.Component) -> rx.Component:
    shown = _shown_to(who)
    return component if shown is True else rx.cond(shown, component)


def nav_link(label: str, href: str, icon: str) -> rx.Component:
    return rx.link(
        rx.hstack(
            rx.icon(icon, size=16, display=rx.breakpoints(initial="none", lg="block")),
            rx.text(label, size="2", weight="medium", white_space="nowrap"),
            spacing="2",
            align="center",
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
                    rx.text(SessionState.display_name, display=rx.breakpoints(initial="none", lg="inline")),
                    variant="soft",
                    size="2",
                    id="account-menu",
                    aria_label="Account",
                )
            ),
            rx.menu.content(
                rx.menu.item("Account and API keys", on_click=rx.redirect("/account")),
                *(
                    rx.cond(SessionState.is_admin, rx.menu.item(label, on_click=rx.redirect(href)))
                    for label, href in ADMIN_PAGES
                ),
                rx.menu.separator(),
                rx.menu.item("Sign out", color="red", on_click=SessionState.sign_out),
            ),
        ),
        rx.hstack(
            rx.button(
                rx.link("Sign in", href="/login", underline="none", white_space="nowrap"),
                as_child=True,
                variant="soft",
                size="2",
            ),
            rx.button(
                rx.link("Sign up", href="/signup", underline="none", white_space="nowrap"),
                as_child=True,
                size="2",
                # On a phone, Sign up waits in the menu: the bar has room for one button.
                display=rx.breakpoints(initial="none", xs="inline-flex"),
            ),
            spacing="2",
        ),
    )


def menu_link(label: str, href: str) -> rx.Component:
    # A redirect, as the account menu's items: a link slotted into the item breaks Radix's Slot.
    return rx.menu.item(label, on_click=rx.redirect(href))


def phone_menu() -> rx.Component:
    """The areas as a menu, for screens too narrow for the bar."""
    return rx.box(
        rx.menu.root(
            rx.menu.trigger(
                rx.icon_button(
                    rx.icon("menu", size=18), variant="soft", size="2", aria_label="Menu", id="nav-menu"
                )
            ),
            rx.menu.content(
                *(for_whom(who, menu_link(label, href)) for label, href, _, who in AREAS),
                rx.menu.separator(),
                rx.cond(~SessionState.signed_in, menu_link("Sign up", "/signup")),
                menu_link("API", "/api/docs"),
                align="end",
            ),
        ),
        display=rx.breakpoints(initial="block", md="none"),
    )


def navbar() -> rx.Component:
    return rx.box(
        rx.hstack(
            rx.link(
                rx.hstack(
                    rx.icon("cpu", size=22, color=rx.color("accent", 10)),
                    rx.heading("GPU Portal", size="4", weight="bold", white_space="nowrap"),
                    spacing="2",
                    align="center",
                ),
                href="/",
                underline="none",
                color_scheme="gray",
                high_contrast=True,
            ),
            rx.el.nav(
                rx.hstack(
                    *(for_whom(who, nav_link(label, href, icon)) for label, href, icon, who in AREAS),
                    spacing="1",
                ),
                aria_label="Areas",
                display=rx.breakpoints(initial="none", md="block"),
            ),
            rx.spacer(),
            rx.link(
                rx.text("API", size="2"),
                href="/api/docs",
                color_scheme="gray",
                display=rx.breakpoints(initial="none", lg="inline"),
            ),
            account_menu(),
            rx.color_mode.button(
                size="2",
                variant="ghost",
                aria_label="Switch light or dark theme",
                disabled=~rx.State.is_hydrated,  # a click before the page is live would be lost
            ),
            phone_menu(),
            align="center",
            spacing=rx.breakpoints(initial="2", sm="4"),
            max_width="72rem",
            margin_x="auto",
            padding_x=rx.breakpoints(initial="0.75rem", sm="1.25rem"),
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
    return rx.flex(
        rx.text(f"GPU Portal {__version__} · open source, self-hostable", size="1", color_scheme="gray"),
        rx.spacer(),
        # /metrics is for Prometheus (behind its token in production); the API is what people read.
        rx.hstack(
            rx.link("API", href="/api/docs", size="1", color_scheme="gray"),
            rx.link("Health", href="/readyz", size="1", color_scheme="gray"),
            spacing="3",
        ),
        spacing="3",
        wrap="wrap",
        align="center",
        max_width="72rem",
        margin_x="auto",
        padding="1.25rem",
        width="100%",
    )


def role_gate(role: str, *children: rx.Component) -> rx.Component:
    """The page for holders of ``role``; anyone else signed in is told, in the page, which role it needs
    (its on-load handler, declared ``page_says``, refuses them without a notice of its own)."""
    told: rx.Component = rx.callout(
        refusal([role]), icon="lock", color_scheme="gray", id="role-needed", margin_y="1.5rem"
    )
    if role == "provider":  # anyone may take this role themselves: say where
        told = rx.vstack(
            told,
            rx.link("Become a provider on your account page", href="/account", id="become-provider-link"),
            spacing="2",
        )
    return rx.cond(
        SessionState.signed_in & ~SessionState.roles.contains(role),
        told,
        rx.fragment(*children),
    )


def page_frame(*children: rx.Component, role: str | None = None) -> rx.Component:
    """Every page's frame; with ``role``, its content only for that role's holders (``role_gate``)."""
    content = (role_gate(role, *children),) if role else children
    return rx.box(
        navbar(),
        rx.el.main(
            *content,
            max_width="72rem",
            margin_x="auto",
            padding=rx.breakpoints(initial="0.75rem", sm="1.25rem"),
            width="100%",
        ),
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
