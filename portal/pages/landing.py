"""The public landing page: what the portal is, with live counts of the network."""

from __future__ import annotations

import reflex as rx

from portal.components.layout import page_frame, stat_card
from portal.components.tables import data_table
from portal.state.network import REFRESH_MS, NetworkState
from portal.state.session import SessionState


def hero() -> rx.Component:
    return rx.vstack(
        rx.badge("Open source · self-hostable", variant="soft", size="2"),
        rx.heading("Rent GPUs as Ray clusters in seconds.", size="8", weight="bold"),
        rx.text(
            "Connect your GPUs and earn, or rent the network's GPUs as a Ray cluster. "
            "Pay per second of verified uptime; providers are paid out on Solana.",
            size="4",
            color_scheme="gray",
            max_width="44rem",
        ),
        rx.flex(
            rx.button(
                rx.link(rx.icon("rocket", size=16), "Rent GPUs", href="/customer", underline="none"),
                as_child=True,
                size="3",
            ),
            rx.button(
                rx.link(
                    rx.icon("server", size=16), "Earn with your GPUs", href="/provider", underline="none"
                ),
                as_child=True,
                size="3",
                variant="outline",
            ),
            spacing="3",
            wrap="wrap",
        ),
        spacing="4",
        padding_y="2.5rem",
    )


def model_row(row: rx.Var) -> rx.Component:
    return rx.table.row(
        rx.table.cell(
            rx.hstack(
                rx.text(row["model"], weight="medium"),
                rx.cond(row["simulated"], rx.badge("simulated", color_scheme="amber", variant="soft")),
                spacing="2",
            )
        ),
        rx.table.cell(row["available"]),
        rx.table.cell(row["hired"]),
    )


def gpus_by_model() -> rx.Component:
    return rx.cond(
        NetworkState.by_model.length() > 0,
        data_table(
            ("GPU model", "Available", "Hired"),
            NetworkState.by_model,
            model_row,
            variant="surface",
            id="gpus-by-model",
        ),
        rx.callout(
            "No GPUs are online yet. Providers connect a machine with `gpu-pool worker` and it appears here.",
            icon="info",
            id="network-empty",
        ),
    )


def live_counts() -> rx.Component:
    return rx.vstack(
        rx.hstack(
            rx.heading("The network right now", size="5"),
            rx.cond(
                NetworkState.simulated_gpus_online > 0,
                rx.badge(
                    "includes ",
                    NetworkState.simulated_gpus_online,
                    " simulated GPUs",
                    color_scheme="amber",
                    id="simulated-badge",
                ),
            ),
            rx.spacer(),
            rx.cond(
                NetworkState.loaded,
                rx.text("live", size="1", color_scheme="green"),
                rx.hstack(rx.spinner(size="1"), rx.text("loading", size="1"), spacing="1"),
            ),
            align="center",
            width="100%",
        ),
        rx.cond(
            NetworkState.error != "",
            rx.callout(NetworkState.error, icon="triangle_alert", color_scheme="red"),
        ),
        rx.grid(
            stat_card("GPUs available", NetworkState.gpus_available, "cpu", "stat-gpus-available"),
            stat_card("GPUs hired", NetworkState.gpus_hired, "activity", "stat-gpus-hired"),
            stat_card("Devices online", NetworkState.devices_online, "server", "stat-devices-online"),
            stat_card("Clusters running", NetworkState.clusters_running, "network", "stat-clusters-running"),
            columns=rx.breakpoints(initial="1", sm="2", md="4"),
            spacing="4",
            width="100%",
        ),
        gpus_by_model(),
        # A hidden timer that refreshes the counts while the page is open; no page reload.
        rx.moment(interval=REFRESH_MS, on_change=NetworkState.tick, display="none"),
        spacing="4",
        width="100%",
    )


def how_it_works() -> rx.Component:
    steps = (
        (
            "1",
            "Providers connect GPUs",
            "The worker agent reads the GPUs, proves them with a compute challenge and heartbeats.",
        ),
        (
            "2",
            "Customers deploy a Ray cluster",
            "Pick GPU model, count and duration, see the quote, deploy; escrow holds the funds.",
        ),
        (
            "3",
            "Usage is metered honestly",
            "Per-second metering of verified uptime; downtime is never charged; payouts on Solana.",
        ),
    )
    return rx.grid(
        *(
            rx.card(
                rx.vstack(
                    rx.badge(n, radius="full"),
                    rx.heading(title, size="3"),
                    rx.text(body, size="2", color_scheme="gray"),
                )
            )
            for n, title, body in steps
        ),
        columns=rx.breakpoints(initial="1", md="3"),
        spacing="4",
        width="100%",
    )


def landing() -> rx.Component:
    return page_frame(
        rx.vstack(hero(), live_counts(), rx.divider(), how_it_works(), spacing="6", width="100%")
    )


def register(app: rx.App) -> None:
    app.add_page(
        landing,
        route="/",
        title="GPU Portal · rent GPUs as Ray clusters",
        description="An open GPU marketplace: rent GPUs as Ray clusters in seconds, or earn with yours.",
        on_load=[SessionState.load_session, NetworkState.refresh],
    )
