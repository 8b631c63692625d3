"""Per-GPU charts of utilization, memory, temperature and power, refreshed without reloading the page."""

from __future__ import annotations

from typing import Any

import reflex as rx
from plotly.graph_objs.layout import Template

from portal.state.charts import ChartsState

REFRESH_MS = 5000
# Plotly sizes a figure once, from its layout, unless told to follow its container: these make every chart
# as wide as its card, and redraw it when the card changes width (a phone turned, a window resized).
CHART_CONFIG = {"responsive": True, "displaylogo": False, "displayModeBar": False}


def themed(light: dict[str, Any], dark: dict[str, Any]) -> rx.Var:
    """Plotly's light and dark templates, as the page's theme picks them (what ``rx.plotly`` does by
    default), with trace defaults of a chart's own for each: a colour scale that reads on white is a glare
    on the dark theme. A figure's traces leave out what their template gives them."""
    from plotly.io import templates

    def template(name: str, data: dict[str, Any]) -> dict[str, Any]:
        base = templates[name].to_plotly_json()
        return {**base, "data": {**base.get("data", {}), **data}}

    chosen = rx.color_mode_cond(
        light=rx.Var.create(template("plotly", light)), dark=rx.Var.create(template("plotly_dark", dark))
    )
    return chosen.to(Template)  # type: ignore[union-attr]


def chart(figure: rx.Var, element_id: str, template: rx.Var | None = None) -> rx.Component:
    """A Plotly figure as wide as the box it is in, never wider (in the page's theme, or ``themed``)."""
    themed_props = {} if template is None else {"template": template}
    return rx.box(
        rx.plotly(
            data=figure,
            config=CHART_CONFIG,
            use_resize_handler=True,
            style={"width": "100%"},
            **themed_props,
        ),
        id=element_id,
        width="100%",
        # A grid cell may otherwise grow to the chart's first drawn width and push the page wider.
        min_width="0",
        class_name="portal-chart",
    )


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
                    chart(ChartsState.util, "chart-util"),
                    chart(ChartsState.memory, "chart-memory"),
                    chart(ChartsState.temperature, "chart-temperature"),
                    chart(ChartsState.power, "chart-power"),
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
                chart(ChartsState.uptime, "chart-uptime"),
            ),
            rx.text(ChartsState.points.to(str) + " points", size="1", color_scheme="gray", id="chart-points"),
            rx.moment(interval=REFRESH_MS, on_change=ChartsState.tick, display="none"),
            spacing="3",
            width="100%",
        ),
        width="100%",
        # The GPU charts' times are drawn in the browser's zone, which only the browser knows.
        on_mount=ChartsState.ask_time_zone,
    )
