"""The admin's analytics: revenue, platform fees, provider earnings, GPU-hours by GPU model and active
customers and providers per day over a chosen period, sign-up cohorts, and the analytics tables as CSV."""

from __future__ import annotations

import reflex as rx
from plotly.colors import make_colorscale, sequential

from portal.components.charts import chart, range_picker, themed
from portal.components.layout import page_frame, stat_card
from portal.state.admin_analytics import AdminAnalyticsState


def period_form() -> rx.Component:
    return rx.form(
        rx.flex(
            rx.vstack(
                rx.text("From", size="1", color_scheme="gray"),
                rx.input(
                    type="date", name="since", default_value=AdminAnalyticsState.since, id="analytics-since"
                ),
                spacing="1",
            ),
            rx.vstack(
                rx.text("To", size="1", color_scheme="gray"),
                rx.input(
                    type="date", name="until", default_value=AdminAnalyticsState.until, id="analytics-until"
                ),
                spacing="1",
            ),
            rx.button("Show", type="submit", variant="soft", id="analytics-show"),
            spacing="3",
            wrap="wrap",
            align="end",
        ),
        on_submit=AdminAnalyticsState.show_days,
        reset_on_submit=False,
        # A new period drawn from a preset refills the fields: the key makes React take the new defaults.
        key=AdminAnalyticsState.since + AdminAnalyticsState.until,
    )


def totals() -> rx.Component:
    return rx.grid(
        stat_card("Revenue", AdminAnalyticsState.totals["revenue"], "receipt", "stat-revenue"),
        stat_card("Platform fees", AdminAnalyticsState.totals["fees"], "landmark", "stat-fees"),
        stat_card("Provider earnings", AdminAnalyticsState.totals["earnings"], "coins", "stat-earnings"),
        stat_card("GPU-hours", AdminAnalyticsState.totals["gpu_hours"], "clock", "stat-gpu-hours"),
        stat_card("Active customers", AdminAnalyticsState.totals["customers"], "users", "stat-customers"),
        stat_card("Active providers", AdminAnalyticsState.totals["providers"], "server", "stat-providers"),
        columns=rx.breakpoints(initial="2", md="3", lg="6"),
        spacing="3",
        width="100%",
    )


# The cohorts' shares from none to all: white to navy on the light theme; on the dark one, from the card's
# own near-black to bright blue, so empty cells do not glare.
COHORT_COLORS = themed(
    # ColorBrewer's Blues as plotly.py names it; plotly.js's own "Blues" runs dark to grey.
    light={"heatmap": [{"colorscale": make_colorscale(sequential.Blues)}]},
    dark={"heatmap": [{"colorscale": [[0, "#1b2130"], [0.5, "#2456a6"], [1, "#7db9ff"]]}]},
)


def choice(items: dict[str, str], value: rx.Var, on_change: object, element_id: str) -> rx.Component:
    return rx.segmented_control.root(
        *(rx.segmented_control.item(label, value=key) for key, label in items.items()),
        value=value,
        on_change=on_change,
        size="1",
        id=element_id,
    )


def cohorts() -> rx.Component:
    return rx.card(
        rx.vstack(
            rx.flex(
                rx.heading("Sign-up cohorts", size="4"),
                rx.spacer(),
                choice(
                    {"customers": "Customers", "providers": "Providers"},
                    AdminAnalyticsState.cohort_who,
                    AdminAnalyticsState.pick_cohort_who,
                    "cohorts-who",
                ),
                choice(
                    {"month": "By month", "week": "By week"},
                    AdminAnalyticsState.cohort_by,
                    AdminAnalyticsState.pick_cohort_by,
                    "cohorts-by",
                ),
                width="100%",
                align="center",
                wrap="wrap",
                gap="2",
            ),
            rx.text(
                "Each row: the people who signed up in a ",
                AdminAnalyticsState.cohort_by,
                " (UTC; how many in brackets). Each cell: the percent of them active that many ",
                AdminAnalyticsState.cohort_by,
                "s later: customers who ran a cluster, providers who earned.",
                size="1",
                color_scheme="gray",
            ),
            rx.cond(
                AdminAnalyticsState.has_cohorts,
                chart(AdminAnalyticsState.cohorts, "chart-cohorts", COHORT_COLORS),
                rx.cond(
                    AdminAnalyticsState.cohorts_loaded,
                    rx.callout(
                        AdminAnalyticsState.cohorts_empty,
                        icon="info",
                        color_scheme="gray",
                        id="cohorts-empty",
                    ),
                    rx.spinner(),
                ),
            ),
            spacing="3",
            width="100%",
        ),
        width="100%",
    )


def exports() -> rx.Component:
    return rx.card(
        rx.vstack(
            rx.heading("Exports (CSV)", size="4"),
            rx.flex(
                rx.button(
                    rx.icon("download", size=14),
                    "These days",
                    variant="soft",
                    on_click=AdminAnalyticsState.download_days,
                    id="export-days",
                ),
                rx.button(
                    rx.icon("download", size=14),
                    "Revenue, last 30 days",
                    variant="soft",
                    on_click=AdminAnalyticsState.download_table("revenue"),
                    id="export-revenue",
                ),
                rx.button(
                    rx.icon("download", size=14),
                    "Customer cohorts",
                    variant="soft",
                    on_click=AdminAnalyticsState.download_table("cohorts"),
                    id="export-cohorts",
                ),
                rx.button(
                    rx.icon("download", size=14),
                    "Sign-up cohorts",
                    variant="soft",
                    on_click=AdminAnalyticsState.download_table("signups"),
                    id="export-signups",
                ),
                spacing="2",
                wrap="wrap",
            ),
            rx.text(
                "Money in micro-USD (1 USD = 1,000,000). The same over the API: ",
                rx.code("GET /api/v1/admin/analytics/daily.csv?since=&until="),
                ", ",
                rx.code("revenue.csv"),
                ", ",
                rx.code("cohorts.csv"),
                " and ",
                rx.code("signups.csv"),
                ".",
                size="1",
                color_scheme="gray",
            ),
            spacing="3",
        ),
        width="100%",
    )


def admin_analytics() -> rx.Component:
    return page_frame(
        rx.vstack(
            rx.flex(
                rx.heading("Analytics", size="7"),
                rx.spacer(),
                range_picker(
                    AdminAnalyticsState.periods,
                    AdminAnalyticsState.period,
                    AdminAnalyticsState.pick_period,
                    id="analytics-period",
                ),
                width="100%",
                align="center",
                wrap="wrap",
                gap="3",
            ),
            rx.text(
                "What the network earned and served per day (UTC), from metered usage.",
                color_scheme="gray",
            ),
            period_form(),
            rx.cond(
                AdminAnalyticsState.error != "",
                rx.callout(
                    AdminAnalyticsState.error,
                    icon="triangle_alert",
                    color_scheme="amber",
                    id="analytics-error",
                ),
            ),
            rx.cond(
                AdminAnalyticsState.loaded,
                rx.vstack(
                    rx.text(AdminAnalyticsState.totals["period"], size="2", id="analytics-period-label"),
                    totals(),
                    rx.cond(
                        AdminAnalyticsState.has_usage,
                        rx.vstack(
                            rx.card(chart(AdminAnalyticsState.money, "chart-money"), width="100%"),
                            rx.grid(
                                rx.card(
                                    chart(AdminAnalyticsState.gpu_hours, "chart-gpu-hours"), min_width="0"
                                ),
                                rx.card(chart(AdminAnalyticsState.active, "chart-active"), min_width="0"),
                                columns=rx.breakpoints(initial="1", md="2"),
                                spacing="3",
                                width="100%",
                            ),
                            spacing="4",
                            width="100%",
                        ),
                        rx.callout(
                            "No metered usage in this period, so nothing to chart: pick a longer one.",
                            icon="info",
                            color_scheme="gray",
                            id="analytics-empty",
                        ),
                    ),
                    spacing="4",
                    width="100%",
                ),
                rx.spinner(),
            ),
            cohorts(),
            exports(),
            spacing="4",
            width="100%",
        ),
        role="admin",
    )


def register(app: rx.App) -> None:
    app.add_page(
        admin_analytics,
        route="/admin/analytics",
        title="Analytics · GPU Portal",
        on_load=AdminAnalyticsState.load,
    )
