"""Tables and confirmations shared by the pages."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import reflex as rx


def data_table(
    headers: Sequence[str], rows: rx.Var, render_row: Callable[[rx.Var], rx.Component], **props: Any
) -> rx.Component:
    """A full-width table: one header cell per name, one rendered row per item of ``rows``."""
    return rx.table.root(
        rx.table.header(rx.table.row(*(rx.table.column_header_cell(header) for header in headers))),
        rx.table.body(rx.foreach(rows, render_row)),
        width="100%",
        **props,
    )


def confirm_button(
    label: str,
    *,
    title: str,
    description: str,
    confirm: str,
    keep: str,
    on_confirm: Any,
    **trigger_props: Any,
) -> rx.Component:
    """A red button that asks before it acts: nothing irreversible happens on one click."""
    return rx.alert_dialog.root(
        rx.alert_dialog.trigger(rx.button(label, color_scheme="red", variant="soft", **trigger_props)),
        rx.alert_dialog.content(
            rx.alert_dialog.title(title),
            rx.alert_dialog.description(description),
            rx.hstack(
                rx.alert_dialog.cancel(rx.button(keep, variant="soft", color_scheme="gray")),
                rx.alert_dialog.action(rx.button(confirm, color_scheme="red", on_click=on_confirm)),
                justify="end",
                spacing="3",
            ),
        ),
    )


def pager(shown: rx.Var, has_newer: rx.Var, has_older: rx.Var, page: Any, **props: Any) -> rx.Component:
    """Newer and Older around "26-50 of 120" under a table newest first; ``page`` is the state's handler
    that moves by a step (-1 newer, 1 older), and each button is disabled at its end of the list."""
    return rx.hstack(
        rx.button("Newer", size="1", variant="soft", disabled=~has_newer, on_click=page(-1)),
        rx.text(shown, size="1", color_scheme="gray"),
        rx.button("Older", size="1", variant="soft", disabled=~has_older, on_click=page(1)),
        align="center",
        spacing="3",
        **props,
    )


def reason_dialog(
    state: Any,
    *,
    title: str,
    description: str,
    placeholder: str,
    keep: str,
    confirm: str,
    on_confirm: Any,
    name: str,
    color_scheme: str | None = "red",
) -> rx.Component:
    """The dialog of an admin action that needs a reason (``state`` uses ``state.reasoned.ReasonedAction``):
    open while a row is chosen, titled ``title`` and the row's label; the refusal shows inside it. Its reason
    input, confirm button and refusal have the ids ``<name>-reason``, ``confirm-<name>`` and
    ``<name>-error``; ``color_scheme`` None gives the confirm button the theme's accent."""
    return rx.alert_dialog.root(
        rx.alert_dialog.content(
            rx.alert_dialog.title(title + " " + state.acting_label),
            rx.alert_dialog.description(description, size="2"),
            rx.input(
                placeholder=placeholder,
                value=state.reason,
                on_change=state.set_reason,
                max_length=state.REASON_MAX,
                id=f"{name}-reason",
                margin_y="1rem",
            ),
            rx.cond(
                state.error != "",
                rx.callout(
                    state.error,
                    icon="triangle_alert",
                    color_scheme="red",
                    margin_bottom="1rem",
                    id=f"{name}-error",
                ),
            ),
            rx.hstack(
                rx.button(keep, variant="soft", color_scheme="gray", on_click=state.cancel),
                rx.button(
                    confirm,
                    on_click=on_confirm,
                    id=f"confirm-{name}",
                    **({"color_scheme": color_scheme} if color_scheme else {}),
                ),
                justify="end",
                spacing="3",
            ),
        ),
        open=state.acting_id != "",
        on_open_change=lambda _open: state.cancel(),
    )
