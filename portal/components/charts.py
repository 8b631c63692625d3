"""Per-GPU charts of utilization, memory, temperature and power, refreshed without reloading the page."""

from __future__ import annotations

import reflex as rx

from portal.state.charts import ChartsState

REFRESH_MS = 5000


def range_picker(ranges: rx.Var, value: rx.Var, on_change: object, **props: object) -> rx.Component:
    """How far back the charts go: 15m, 1h, 24h, 7d."""
    return rx.segmented_control.root(
        rx.foreach(ranges, lambda r: rx.segmented_control.item(r, value=r)),
        value=value,
        on_change=on_change,
        size="1",
        **props,
    )


def gpu_charts() -> rx.Component:
    return rx.card(
        rx.vstack(
            rx.hstack(
                rx.heading("GPUs", size="4"),
                rx.spacer(),
                range_picker(ChartsState.ranges, ChartsState.range, ChartsState.pick_range, id="chart-range"),
                width="100%",
                align="center",
            ),
            rx.cond(
                ChartsState.has_data,
                rx.grid(
                    rx.box(rx.plotly(data=ChartsState.util), id="chart-util"),
                    rx.box(rx.plotly(data=ChartsState.memory), id="chart-memory"),
                    rx.box(rx.plotly(data=ChartsState.temperature), id="chart-temperature"),
                    rx.box(rx.plotly(data=ChartsState.power), id="chart-power"),
                    columns=rx.breakpoints(initial="1", md="2"),
                    spacing="3",
                    width="100%",
                ),
                rx.cond(
                    ChartsState.loaded,
                    rx.text(
                        "No data yet: samples arrive with the agents' heartbeats.",
                        color_scheme="gray",
                        size="2",
                        id="charts-empty",
                    ),
                    rx.spinner(),
                ),
            ),
            rx.cond(
                ChartsState.has_uptime,
                rx.box(rx.plotly(data=ChartsState.uptime), id="chart-uptime", width="100%"),
            ),
            rx.text(ChartsState.points.to(str) + " points", size="1", color_scheme="gray", id="chart-points"),
            rx.moment(interval=REFRESH_MS, on_change=ChartsState.tick, display="none"),
            spacing="3",
            width="100%",
        ),
        width="100%",
    )
