"""The marketplace (anyone) and the deploy wizard (customers)."""

from __future__ import annotations

from typing import Any

import reflex as rx

from portal.components.forms import worded_select
from portal.components.layout import page_frame
from portal.components.tables import data_table
from portal.state.market import DeployState, MarketState
from portal.state.session import SessionState

REFRESH_MS = 5000


def deploy_link(offer: rx.Var) -> rx.Component:
    return rx.button(
        rx.link(
            "Deploy",
            href="/deploy?gpu_model=" + offer["gpu_model"].to(str) + "&country=" + offer["country"].to(str),
            underline="none",
        ),
        as_child=True,
        size="1",
        variant="soft",
    )


def model_name(offer: rx.Var) -> rx.Component:
    return rx.hstack(
        rx.text(offer["gpu_model"], weight="medium", white_space="nowrap"),
        rx.cond(offer["simulated"], rx.badge("simulated", color_scheme="amber", variant="soft")),
        spacing="2",
        wrap="wrap",
    )


def offer_row(offer: rx.Var) -> rx.Component:
    return rx.table.row(
        rx.table.cell(model_name(offer)),
        rx.table.cell(offer["vram"]),
        rx.table.cell(offer["country"]),
        rx.table.cell(offer["tier"]),
        rx.table.cell(offer["available"]),
        rx.table.cell(offer["price"], white_space="nowrap"),
        rx.table.cell(offer["reliability"]),
        rx.table.cell(deploy_link(offer)),
    )


def offer_card(offer: rx.Var) -> rx.Component:
    """One offer on a phone: the table's columns would not fit, so each offer is a card."""
    return rx.card(
        rx.vstack(
            rx.hstack(model_name(offer), rx.spacer(), rx.text(offer["price"], weight="bold"), width="100%"),
            rx.text(
                offer["vram"].to(str)
                + " · "
                + offer["country"].to(str)
                + " · "
                + offer["tier"].to(str)
                + " connectivity",
                size="2",
                color_scheme="gray",
            ),
            rx.hstack(
                rx.text(
                    offer["available"].to(str) + " · reliability " + offer["reliability"].to(str),
                    size="2",
                ),
                rx.spacer(),
                deploy_link(offer),
                width="100%",
                align="center",
            ),
            spacing="2",
            width="100%",
        ),
        width="100%",
    )


def filter_field(label: str, control: rx.Component) -> rx.Component:
    return rx.vstack(rx.text(label, size="1", weight="medium", color_scheme="gray"), control, spacing="1")


def filter_bar() -> rx.Component:
    return rx.grid(
        filter_field(
            "GPU model",
            rx.select(
                MarketState.models,
                value=MarketState.gpu_model,
                on_change=lambda v: MarketState.set_filter("gpu_model", v),
                id="filter-model",
                aria_label="GPU model",
                width="100%",
            ),
        ),
        filter_field(
            "Country",
            rx.input(
                placeholder="any, e.g. DE",
                max_length=2,
                on_blur=lambda v: MarketState.set_filter("country", v),
                id="filter-country",
                aria_label="Country",
            ),
        ),
        filter_field(
            "Connectivity at least",
            worded_select(
                MarketState.tiers,
                value=MarketState.tier,
                on_change=lambda v: MarketState.set_filter("tier", v),
                aria_label="Connectivity at least",
            ),
        ),
        filter_field(
            "Min GPUs",
            rx.input(
                placeholder="any",
                on_blur=lambda v: MarketState.set_filter("min_gpus", v),
                aria_label="Min GPUs",
            ),
        ),
        filter_field(
            "Min GiB per GPU",
            rx.input(
                placeholder="any",
                on_blur=lambda v: MarketState.set_filter("min_vram", v),
                aria_label="Min GiB per GPU",
            ),
        ),
        filter_field(
            "Max USD per GPU-hour",
            rx.input(
                placeholder="any",
                on_blur=lambda v: MarketState.set_filter("max_price", v),
                aria_label="Max USD per GPU-hour",
            ),
        ),
        filter_field(
            "Min reliability %",
            rx.input(
                placeholder="any",
                on_blur=lambda v: MarketState.set_filter("min_reliability", v),
                aria_label="Min reliability %",
            ),
        ),
        columns=rx.breakpoints(initial="2", sm="4", lg="7"),
        spacing="2",
        width="100%",
    )


def sort_bar() -> rx.Component:
    """How many offers there are, and the order they come in (kept in the URL: a link keeps it)."""
    return rx.flex(
        rx.text(
            MarketState.offers.length().to(str)
            + rx.cond(MarketState.offers.length() == 1, " offer", " offers"),
            size="2",
            color_scheme="gray",
            id="offer-count",
        ),
        rx.spacer(),
        rx.vstack(
            rx.text("Sort by", size="1", weight="medium", color_scheme="gray"),
            worded_select(
                MarketState.sorts,
                value=MarketState.sort,
                on_change=MarketState.set_sort,
                aria_label="Sort by",
            ),
            spacing="1",
            id="market-sort",
            width=rx.breakpoints(initial="100%", sm="18rem"),
        ),
        direction=rx.breakpoints(initial="column-reverse", sm="row"),
        align=rx.breakpoints(initial="start", sm="end"),
        gap="2",
        width="100%",
    )


def market_page() -> rx.Component:
    return page_frame(
        rx.vstack(
            rx.heading("Marketplace", size="7"),
            rx.text(
                "GPUs you can rent now, grouped by model, country and connectivity. Prices are per GPU-hour, "
                "metered per second.",
                color_scheme="gray",
            ),
            filter_bar(),
            sort_bar(),
            rx.cond(
                MarketState.error != "",
                rx.callout(MarketState.error, icon="triangle_alert", color_scheme="red"),
            ),
            rx.cond(
                MarketState.offers.length() > 0,
                rx.fragment(
                    rx.box(
                        data_table(
                            (
                                "GPU",
                                "Memory",
                                "Country",
                                "Connectivity",
                                "Available",
                                "Price per GPU",
                                "Reliability",
                                "",
                            ),
                            MarketState.offers,
                            offer_row,
                            id="offers-table",
                        ),
                        width="100%",
                        display=rx.breakpoints(initial="none", md="block"),
                    ),
                    rx.vstack(
                        rx.foreach(MarketState.offers, offer_card),
                        width="100%",
                        spacing="2",
                        display=rx.breakpoints(initial="flex", md="none"),
                        id="offer-cards",
                    ),
                ),
                rx.cond(
                    MarketState.loaded,
                    rx.callout(
                        "No GPUs match right now. Loosen the filters, or check back: "
                        "devices join all the time.",
                        icon="info",
                        id="no-offers",
                    ),
                    rx.spinner(),
                ),
            ),
            rx.moment(interval=REFRESH_MS, on_change=MarketState.tick, display="none"),
            spacing="4",
            width="100%",
        )
    )


def labelled(label: str, control: rx.Component, **props: Any) -> rx.Component:
    # min_width 0: a grid cell otherwise grows to its widest control and overlaps its neighbour.
    return rx.vstack(
        rx.text(label, size="2", weight="medium"), control, spacing="1", width="100%", min_width="0", **props
    )


def number_field(label: str, field: str, least: int, most: int, element_id: str) -> rx.Component:
    """A labelled number input for one of the wizard's fields."""
    return labelled(
        label,
        rx.input(
            value=getattr(DeployState, field),
            type="number",
            min=least,
            max=most,
            on_change=lambda v: DeployState.set_field(field, v),
            id=element_id,
        ),
    )


def quote_card() -> rx.Component:
    quote = DeployState.quote
    return rx.card(
        rx.vstack(
            rx.heading("Quote", size="4"),
            rx.cond(
                quote.contains("available"),
                rx.cond(
                    quote["available"],
                    rx.vstack(
                        rx.foreach(
                            quote["lines"].to(list[dict]),
                            lambda line: rx.hstack(
                                rx.text(line["what"], size="2"),
                                rx.spacer(),
                                rx.text(line["rate"], size="2", color_scheme="gray"),
                                rx.text(line["subtotal"], size="2", weight="medium"),
                                width="100%",
                                spacing="3",
                            ),
                        ),
                        rx.cond(
                            quote["spread"].to(str) != "",
                            rx.callout(quote["spread"], icon="globe", size="1", id="quote-spread"),
                        ),
                        rx.separator(),
                        rx.hstack(
                            rx.text("Per hour"),
                            rx.spacer(),
                            rx.text(quote["per_hour"], id="quote-per-hour"),
                            width="100%",
                        ),
                        rx.hstack(
                            rx.text("Held in escrow now", weight="bold"),
                            rx.spacer(),
                            rx.text(quote["total"], weight="bold", id="quote-total"),
                            width="100%",
                        ),
                        rx.text(
                            "Charged per second of verified uptime; downtime is never charged and unused "
                            "escrow is returned. Of it, ",
                            quote["fee"],
                            " at most is the platform's fee.",
                            size="1",
                            color_scheme="gray",
                        ),
                        width="100%",
                        spacing="2",
                    ),
                    rx.callout(
                        quote["reason"], icon="circle_alert", color_scheme="amber", id="quote-unavailable"
                    ),
                ),
                # No quote for input the service refused: the form says why; a spinner would wait forever.
                rx.cond(
                    DeployState.error != "",
                    rx.text(
                        "A quote follows once the fields are right.", color_scheme="gray", id="quote-waiting"
                    ),
                    rx.spinner(),
                ),
            ),
            width="100%",
            spacing="3",
        ),
        width="100%",
        id="quote",
    )


def deploy_form() -> rx.Component:
    return rx.card(
        rx.vstack(
            rx.grid(
                labelled(
                    "Name",
                    rx.input(
                        value=DeployState.name,
                        on_change=lambda v: DeployState.set_field("name", v),
                        id="deploy-name",
                        max_length=80,
                    ),
                ),
                labelled(
                    "Cluster type",
                    rx.select(["ray"], default_value="ray", disabled=True),
                ),
                labelled(
                    "Purpose",
                    rx.segmented_control.root(
                        rx.segmented_control.item("General", value="general"),
                        rx.segmented_control.item("Train", value="train"),
                        rx.segmented_control.item("Inference", value="inference"),
                        value=DeployState.purpose,
                        on_change=lambda v: DeployState.set_field("purpose", v),
                        width="100%",
                        id="deploy-purpose",
                    ),
                    # Its three choices need more than half the form's width: a row of its own.
                    grid_column="1 / -1",
                ),
                labelled(
                    "GPU model",
                    rx.select(
                        DeployState.models,
                        value=DeployState.gpu_model,
                        on_change=lambda v: DeployState.set_field("gpu_model", v),
                        id="deploy-model",
                    ),
                ),
                number_field("GPUs", "gpu_count", 1, 64, "deploy-gpus"),
                number_field("Hours", "hours", 1, 720, "deploy-hours"),
                labelled(
                    "Countries (optional)",
                    rx.input(
                        value=DeployState.countries,
                        placeholder="DE NL",
                        on_change=lambda v: DeployState.set_field("countries", v),
                        id="deploy-countries",
                    ),
                ),
                labelled(
                    "Slowest connectivity accepted",
                    worded_select(
                        DeployState.tiers,
                        value=DeployState.tier,
                        on_change=lambda v: DeployState.set_field("tier", v),
                    ),
                ),
                columns=rx.breakpoints(initial="1", sm="2"),
                spacing="4",
                width="100%",
            ),
            autoscaling_fields(),
            rx.cond(
                DeployState.error != "",
                rx.callout(
                    rx.vstack(
                        rx.text(DeployState.error),
                        rx.cond(
                            DeployState.alternatives.length() > 0,
                            rx.vstack(
                                rx.text("Available instead:", size="2", weight="medium"),
                                rx.foreach(DeployState.alternatives, lambda a: rx.text("• ", a, size="2")),
                                spacing="1",
                            ),
                        ),
                    ),
                    icon="triangle_alert",
                    color_scheme="red",
                    id="deploy-error",
                ),
            ),
            rx.button(
                rx.cond(DeployState.deploying, rx.spinner(size="2"), rx.icon("rocket", size=16)),
                "Deploy",
                size="3",
                on_click=DeployState.deploy,
                disabled=~DeployState.can_deploy,
                id="deploy-button",
            ),
            spacing="4",
            width="100%",
        ),
        width="100%",
    )


def autoscaling_fields() -> rx.Component:
    return rx.vstack(
        rx.hstack(
            rx.switch(
                checked=DeployState.autoscale, on_change=DeployState.set_autoscale, id="deploy-autoscale"
            ),
            rx.text("Grow and shrink with the Ray load", size="2", weight="medium"),
            align="center",
        ),
        rx.cond(
            DeployState.autoscale,
            rx.vstack(
                rx.grid(
                    number_field("Fewest workers", "min_workers", 0, 64, "deploy-min-workers"),
                    number_field("Most workers", "max_workers", 0, 64, "deploy-max-workers"),
                    columns="2",
                    spacing="4",
                    width="100%",
                ),
                rx.text(
                    "Ray's autoscaler adds one-GPU workers of this model when tasks wait for GPUs, and "
                    "releases them once idle. Each added worker is charged per second at no more than the "
                    "quoted rate; escrow for its remaining time is held when it is added.",
                    size="1",
                    color_scheme="gray",
                ),
                width="100%",
            ),
        ),
        width="100%",
        spacing="2",
    )


def deploy_page() -> rx.Component:
    return page_frame(
        rx.vstack(
            rx.heading("Deploy a Ray cluster", size="7"),
            rx.text(
                "Pick the GPUs and for how long; the quote follows your choices. "
                "The cluster is ready in seconds.",
                color_scheme="gray",
            ),
            rx.cond(
                DeployState.forbidden,
                rx.callout("Deploying needs the customer role on your account.", icon="info"),
            ),
            rx.grid(
                deploy_form(),
                quote_card(),
                columns=rx.breakpoints(initial="1", md="2"),
                spacing="4",
                width="100%",
            ),
            spacing="4",
            width="100%",
        )
    )


def register(app: rx.App) -> None:
    app.add_page(
        market_page,
        route="/market",
        title="Marketplace · GPU Portal",
        on_load=[SessionState.load_session, MarketState.refresh],
    )
    app.add_page(deploy_page, route="/deploy", title="Deploy · GPU Portal", on_load=DeployState.open)
