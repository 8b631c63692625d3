"""The customer's clusters: the list, and each cluster's page (log, nodes, jobs, extend, terminate)."""

from __future__ import annotations

import reflex as rx

from portal.components.charts import gpu_charts
from portal.components.layout import link_button, page_frame
from portal.components.tables import confirm_button, data_table
from portal.components.times import DATE_TIME_SECONDS, TIME_SECONDS, local_time
from portal.state.charts import ChartsState
from portal.state.clusters import ClustersState

REFRESH_MS = 2000


def state_badge(row: rx.Var) -> rx.Component:
    return rx.badge(row["state"], color_scheme=row["color"], id="cluster-state")


def cluster_row(row: rx.Var) -> rx.Component:
    return rx.table.row(
        rx.table.cell(rx.link(row["name"], href="/cluster/" + row["id"].to(str))),
        rx.table.cell(state_badge(row)),
        rx.table.cell(row["gpus"]),
        rx.table.cell(local_time(row["created"])),
        rx.table.cell(local_time(row["expires"])),
        rx.table.cell(row["spent"]),
    )


def clusters_page() -> rx.Component:
    return page_frame(
        rx.vstack(
            rx.hstack(
                rx.heading("Your clusters", size="7"),
                rx.spacer(),
                link_button("rocket", "Deploy a cluster", "/deploy"),
                width="100%",
            ),
            rx.cond(
                ClustersState.rows.length() > 0,
                data_table(
                    ("Cluster", "State", "GPUs", "Created", "Ends", "Spent"),
                    ClustersState.rows,
                    cluster_row,
                    id="cluster-table",
                ),
                rx.cond(
                    ClustersState.loaded,
                    rx.callout("No clusters yet: deploy one in seconds.", icon="info", id="no-clusters"),
                    rx.cond(
                        ClustersState.forbidden,
                        rx.callout("Your account does not have the customer role.", icon="info"),
                        rx.spinner(),
                    ),
                ),
            ),
            rx.cond(
                ClustersState.loaded,
                rx.moment(interval=REFRESH_MS, on_change=ClustersState.tick, display="none"),
            ),
            spacing="4",
            width="100%",
        )
    )


def node_row(node: rx.Var) -> rx.Component:
    return rx.table.row(
        rx.table.cell(
            rx.hstack(
                rx.text(node["device"]),
                rx.cond(node["simulated"], rx.badge("simulated", color_scheme="amber", variant="soft")),
                spacing="2",
            )
        ),
        rx.table.cell(node["role"]),
        rx.table.cell(rx.badge(node["state"], variant="soft")),
        rx.table.cell(node["gpus"]),
        rx.table.cell(node["rate"]),
        rx.table.cell(rx.text(node["reason"], size="1", color_scheme="gray")),
    )


def event_line(event: rx.Var) -> rx.Component:
    return rx.hstack(
        rx.code(local_time(event["at"], TIME_SECONDS), size="1"),
        rx.badge(event["kind"], variant="surface", size="1"),
        rx.text(event["message"], size="2"),
        spacing="2",
        align="start",
    )


def job_row(job: rx.Var) -> rx.Component:
    return rx.table.row(
        rx.table.cell(rx.code(job["entrypoint"], size="1")),
        rx.table.cell(rx.badge(job["status"], color_scheme=job["color"], class_name="job-status")),
        rx.table.cell(local_time(job["created"], DATE_TIME_SECONDS)),
        rx.table.cell(
            rx.button("Logs", size="1", variant="soft", on_click=ClustersState.show_logs(job["id"]))
        ),
    )


def jobs_card() -> rx.Component:
    return rx.card(
        rx.vstack(
            rx.heading("Jobs", size="4"),
            rx.cond(
                ClustersState.detail["running"],
                rx.form(
                    rx.vstack(
                        rx.text_area(
                            name="entrypoint",
                            placeholder="python train.py --epochs 3",
                            required=True,
                            id="job-entrypoint",
                            width="100%",
                        ),
                        rx.input(
                            name="runtime_env",
                            placeholder='Runtime env JSON (optional), e.g. {"pip": ["torch"]}',
                            width="100%",
                        ),
                        rx.button(rx.icon("play", size=14), "Submit job", type="submit", id="submit-job"),
                        width="100%",
                        spacing="2",
                    ),
                    on_submit=ClustersState.submit_job,
                    reset_on_submit=True,
                    width="100%",
                ),
                rx.text(
                    rx.cond(
                        ClustersState.detail["active"],
                        "Jobs run once the cluster is running.",
                        "This cluster has ended: it runs no more jobs.",
                    ),
                    size="2",
                    color_scheme="gray",
                ),
            ),
            rx.cond(
                ClustersState.jobs.length() > 0,
                data_table(
                    ("Entrypoint", "Status", "Submitted", ""), ClustersState.jobs, job_row, id="jobs-table"
                ),
            ),
            rx.cond(
                ClustersState.job_id != "",
                rx.vstack(
                    rx.text("Output", weight="medium", size="2"),
                    rx.code_block(
                        ClustersState.job_logs,
                        language="log",
                        width="100%",
                        id="job-logs",
                        wrap_long_lines=True,
                    ),
                    width="100%",
                ),
            ),
            spacing="3",
            width="100%",
        ),
        width="100%",
    )


def controls() -> rx.Component:
    return rx.hstack(
        rx.form(
            rx.hstack(
                rx.input(
                    name="hours",
                    type="number",
                    min=1,
                    max=720,
                    placeholder="Hours",
                    width="7rem",
                    id="extend-hours",
                ),
                rx.button("Extend", type="submit", variant="soft", id="extend-button"),
                spacing="2",
            ),
            on_submit=ClustersState.extend,
            reset_on_submit=True,
        ),
        rx.spacer(),
        confirm_button(
            "Terminate",
            title="Terminate this cluster?",
            description="Its Ray nodes stop and running jobs end. Unused escrow is returned to your credit.",
            confirm="Terminate",
            keep="Keep it running",
            on_confirm=ClustersState.terminate,
            id="terminate-button",
        ),
        width="100%",
    )


def info() -> rx.Component:
    detail = ClustersState.detail
    return rx.data_list.root(
        rx.data_list.item(rx.data_list.label("GPUs"), rx.data_list.value(detail["gpus"])),
        rx.data_list.item(
            rx.data_list.label("Autoscaling"),
            rx.data_list.value(detail["autoscaling"], id="cluster-autoscaling"),
        ),
        # Addresses and the planned end mean something only while the cluster lives.
        rx.cond(
            detail["active"],
            rx.fragment(
                rx.data_list.item(
                    rx.data_list.label("Ray client address"),
                    rx.data_list.value(rx.code(detail["client_address"], id="client-address")),
                ),
                rx.data_list.item(
                    rx.data_list.label("Ray address (inside the cluster)"),
                    rx.data_list.value(rx.code(detail["ray_address"])),
                ),
                rx.data_list.item(
                    rx.data_list.label("Ray dashboard"),
                    rx.data_list.value(
                        rx.cond(
                            detail["dashboard_url"] != "",
                            rx.link(
                                detail["dashboard_url"],
                                href=detail["dashboard_url"].to(str),
                                is_external=True,
                            ),
                            rx.text("—"),
                        )
                    ),
                ),
                rx.data_list.item(
                    rx.data_list.label("Ends"), rx.data_list.value(local_time(detail["expires"]))
                ),
            ),
        ),
        rx.data_list.item(
            rx.data_list.label("Spent so far"), rx.data_list.value(detail["spent"], id="cluster-spent")
        ),
        rx.data_list.item(rx.data_list.label("In escrow"), rx.data_list.value(detail["escrow"])),
    )


def cluster_page() -> rx.Component:
    detail = ClustersState.detail
    return page_frame(
        rx.cond(
            ClustersState.detail_error != "",
            rx.callout(ClustersState.detail_error, icon="triangle_alert", color_scheme="red"),
            rx.cond(
                detail.contains("id"),
                rx.vstack(
                    rx.link("← All clusters", href="/clusters", size="2"),
                    rx.hstack(
                        rx.heading(detail["name"], size="7"),
                        state_badge(detail),
                        rx.cond(detail["simulated"], rx.badge("simulated GPUs", color_scheme="amber")),
                        align="center",
                    ),
                    rx.text(detail["reason"], color_scheme="gray"),
                    rx.cond(
                        ClustersState.action_error != "",
                        rx.callout(
                            ClustersState.action_error,
                            icon="triangle_alert",
                            color_scheme="red",
                            id="cluster-error",
                        ),
                    ),
                    rx.grid(
                        rx.card(info(), width="100%"),
                        rx.card(
                            rx.vstack(
                                rx.heading("Log", size="4"),
                                rx.scroll_area(
                                    rx.vstack(
                                        rx.foreach(detail["events"].to(list[dict]), event_line), spacing="1"
                                    ),
                                    max_height="18rem",
                                    id="cluster-log",
                                ),
                                width="100%",
                            ),
                            width="100%",
                        ),
                        columns=rx.breakpoints(initial="1", md="2"),
                        spacing="4",
                        width="100%",
                    ),
                    data_table(
                        ("Device", "Role", "State", "GPUs", "Rate", ""),
                        detail["nodes"].to(list[dict]),
                        node_row,
                        id="nodes-table",
                    ),
                    gpu_charts(),
                    rx.cond(detail["active"], controls()),
                    jobs_card(),
                    rx.moment(interval=REFRESH_MS, on_change=ClustersState.tick_detail, display="none"),
                    spacing="4",
                    width="100%",
                ),
                rx.center(rx.spinner(size="3"), padding="4rem"),
            ),
        ),
        role="customer",
    )


def register(app: rx.App) -> None:
    app.add_page(
        clusters_page, route="/clusters", title="Your clusters · GPU Portal", on_load=ClustersState.load
    )
    app.add_page(
        cluster_page,
        route="/cluster/[cluster_id]",
        title="Cluster · GPU Portal",
        on_load=[ClustersState.load_detail, ChartsState.refresh],
    )
