"""The page for an address that leads nowhere, inside the site's frame, with ways back."""

from __future__ import annotations

import reflex as rx

from portal.components.layout import link_button, page_frame
from portal.state.session import SessionState


def not_found() -> rx.Component:
    return page_frame(
        rx.vstack(
            rx.text("404", size="2", color_scheme="gray", weight="medium"),
            rx.heading("This page does not exist", size="7", id="not-found"),
            rx.text(
                "The address may be mistyped, or the page has moved. These lead somewhere:",
                color_scheme="gray",
            ),
            rx.flex(
                link_button("house", "Start page", "/"),
                link_button("store", "Marketplace", "/market", soft=True),
                link_button("chart-line", "Explorer", "/explorer", soft=True),
                spacing="3",
                wrap="wrap",
            ),
            spacing="4",
            padding_y="3rem",
        )
    )


def register(app: rx.App) -> None:
    # Reflex's catch-all: every unknown path is served this page (with status 404).
    app.add_page(
        not_found, route="404", title="Page not found · GPU Portal", on_load=SessionState.load_session
    )
