"""The public explorer: GPUs online, hired share and utilization over time, by GPU model or country."""

from __future__ import annotations

import reflex as rx

from portal.components.charts import chart, range_picker
from portal.components.layout import page_frame, stat_card
from portal.components.tables import data_table
from portal.state.explorer import ExplorerState
from portal.state.session import SessionState

REFRESH_MS = 30_000


def explorer_page() -> rx.Component:
    return page_frame(
        rx.vstack(
            rx.hstack(
                rx.heading("Network explorer", size="7"),
                rx.spacer(),
                rx.segmented_control.root(
                    rx.segmented_control.item("By model", value="gpu_model"),
                    rx.segmented_control.item("By country", value="country"),
                    value=ExplorerState.by,
                    on_change=ExplorerState.pick_grouping,
                    size="1",
                ),
                range_picker(ExplorerState.ranges, ExplorerState.range, ExplorerState.pick_range),
                width="100%",
                align="center",
                wrap="wrap",
            ),
            rx.text(
                "A picture of the network every minute: GPUs online and hired, and how busy they are.",
                color_scheme="gray",
            ),
            rx.cond(
                ExplorerState.summary.contains("gpus_online"),
                rx.grid(
                    stat_card("GPUs online", ExplorerState.summary["gpus_online"], "cpu", "stat-gpus-online"),
                    stat_card(
                        "Hired now", ExplorerState.summary["hired_share"], "activity", "stat-hired-share"
                    ),
                    stat_card(
                        "Utilization", ExplorerState.summary["utilization"], "gauge", "stat-utilization"
                    ),
                    stat_card(
                        "GPU-hours served", ExplorerState.summary["compute_hours"], "clock", "stat-hours"
                    ),
                    stat_card("Paid to providers", ExplorerState.summary["paid"], "coins", "stat-paid"),
                    columns=rx.breakpoints(initial="2", md="5"),
                    spacing="3",
                    width="100%",
                ),
            ),
            rx.text(ExplorerState.summary["simulated"], size="1", color_scheme="amber"),
            rx.cond(
                ExplorerState.error != "",
                rx.callout(ExplorerState.error, icon="triangle_alert", color_scheme="red"),
            ),
            rx.cond(
                ExplorerState.points > 0,
                rx.grid(
                    chart(ExplorerState.online, "explorer-online"),
                    chart(ExplorerState.hired, "explorer-hired"),
                    chart(ExplorerState.util, "explorer-util"),
                    columns=rx.breakpoints(initial="1", md="2"),
                    spacing="3",
                    width="100%",
                ),
                rx.cond(
                    ExplorerState.loaded,
                    rx.text(
                        "No history yet: the first picture is taken within a minute.",
                        color_scheme="gray",
                        id="explorer-empty",
                    ),
                    rx.spinner(),
                ),
            ),
            rx.heading("Online by country", size="4"),
            data_table(
                ("Country", "Devices", "GPUs", "Hired"),
                ExplorerState.summary["countries"].to(list[dict]),
                lambda c: rx.table.row(
                    rx.table.cell(c["country"]),
                    rx.table.cell(c["devices"]),
                    rx.table.cell(c["gpus"]),
                    rx.table.cell(c["hired"]),
                ),
                id="explorer-countries",
            ),
            rx.text(
                "The same figures as JSON: ",
                rx.link(rx.code("GET /api/v1/stats/network"), href="/api/v1/stats/network"),
                ", or through GraphQL: ",
                rx.code("POST /api/v1/graphql"),
                ".",
                size="1",
                color_scheme="gray",
            ),
            rx.moment(interval=REFRESH_MS, on_change=ExplorerState.tick, display="none"),
            spacing="4",
            width="100%",
        )
    )


def register(app: rx.App) -> None:
    app.add_page(
        explorer_page,
        route="/explorer",
        title="Network explorer · GPU Portal",
        on_load=[SessionState.load_session, ExplorerState.refresh],
    )
