"""Entry pages of the customer, provider and admin areas."""

from __future__ import annotations

import reflex as rx

from portal.components.layout import link_button, page_frame
from portal.state.session import SessionState


def area_page(
    title: str,
    summary: str,
    features: list[tuple[str, str]],
    test_id: str,
    action: rx.Component,
    allowed: rx.Var,
    role: str,
) -> rx.Component:
    """An area's entry page; its actions only for those ``allowed`` in, others told which role it needs."""
    return page_frame(
        rx.vstack(
            rx.heading(title, size="7", id=test_id),
            rx.text(summary, size="3", color_scheme="gray", max_width="44rem"),
            rx.cond(SessionState.signed_in & allowed, action),
            rx.cond(
                SessionState.signed_in & ~allowed,
                rx.callout(
                    f"This area is for accounts with the {role} role; yours does not have it.",
                    icon="info",
                    color_scheme="gray",
                    id="area-not-allowed",
                ),
            ),
            rx.cond(
                SessionState.signed_in & allowed,
                # A callout's text is a paragraph already: a <p> inside it breaks hydration (React #418).
                rx.callout(
                    rx.fragment(
                        "Signed in as ",
                        rx.text.strong(SessionState.email),
                        ". Your ",
                        rx.link("account and API keys", href="/account"),
                        " are ready.",
                    ),
                    icon="circle_check",
                    color_scheme="green",
                ),
            ),
            rx.cond(
                ~SessionState.signed_in,
                rx.callout(
                    rx.fragment(
                        rx.link("Sign in", href="/login"),
                        " or ",
                        rx.link("create an account", href="/signup"),
                        " to use this area.",
                    ),
                    icon="lock",
                    color_scheme="gray",
                ),
            ),
            rx.grid(
                *(
                    rx.card(
                        rx.vstack(rx.heading(name, size="3"), rx.text(body, size="2", color_scheme="gray"))
                    )
                    for name, body in features
                ),
                columns=rx.breakpoints(initial="1", md="3"),
                spacing="4",
                width="100%",
            ),
            spacing="5",
            width="100%",
            padding_y="1.5rem",
        )
    )


def customer() -> rx.Component:
    return area_page(
        "Rent GPUs",
        "Deploy a Ray cluster on the network's GPUs, run jobs on it and pay only for what ran.",
        [
            ("Clusters", "Deploy, watch, extend and terminate Ray clusters."),
            ("Jobs", "Submit entrypoints through the Ray Jobs API and stream their logs."),
            ("Billing", "Credits, escrow, per-second usage lines and invoices."),
        ],
        "area-customer",
        rx.flex(
            link_button("rocket", "Deploy a cluster", "/deploy"),
            link_button("layers", "Your clusters", "/clusters", soft=True),
            link_button("wallet", "Billing", "/billing", soft=True),
            spacing="2",
            wrap="wrap",
        ),
        SessionState.shows_customer_area,
        "customer",
    )


def provider() -> rx.Component:
    return area_page(
        "Provide GPUs",
        "Connect machines with the worker agent; they earn whenever a cluster runs on them.",
        [
            ("Devices", "Add a device, get its token and launch command, see its verification."),
            ("Earnings", "Accrued, pending and paid amounts per device and per cluster."),
            ("Payouts", "Solana payouts to your linked wallet, each with its transaction."),
        ],
        "area-provider",
        rx.flex(
            link_button("server", "Your devices", "/devices"),
            link_button("coins", "Earnings", "/earnings", soft=True),
            spacing="2",
            wrap="wrap",
        ),
        SessionState.shows_provider_area,
        "provider",
    )


def admin() -> rx.Component:
    return area_page(
        "Admin",
        "Operate the network: people and their credits, clusters, devices and faults, payouts, analytics and "
        "the audit log.",
        [
            ("People", "Find accounts, set their roles, lock them, grant credits."),
            ("Clusters", "See any cluster by state and terminate it with a reason."),
            ("Devices and faults", "Block and unblock devices, review fault events."),
            ("Payouts", "Providers' payouts by state, provider and date; retry a failed one."),
            ("Analytics", "Revenue, fees, earnings, GPU-hours and active people per day, and CSV exports."),
        ],
        "area-admin",
        rx.flex(
            link_button("users", "People", "/admin/users"),
            link_button("layers", "Clusters", "/admin/clusters", soft=True),
            link_button("server", "Devices and faults", "/admin/devices", soft=True),
            link_button("coins", "Payouts", "/admin/payouts", soft=True),
            link_button("chart-line", "Analytics", "/admin/analytics", soft=True),
            link_button("scroll_text", "Audit log", "/admin/audit", soft=True),
            spacing="2",
            wrap="wrap",
        ),
        SessionState.is_admin,
        "admin",
    )


def register(app: rx.App) -> None:
    app.add_page(
        customer, route="/customer", title="Rent GPUs · GPU Portal", on_load=SessionState.load_session
    )
    app.add_page(
        provider, route="/provider", title="Provide GPUs · GPU Portal", on_load=SessionState.load_session
    )
    app.add_page(admin, route="/admin", title="Admin · GPU Portal", on_load=SessionState.load_session)
