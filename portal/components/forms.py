"""Form controls shared by the pages."""

from __future__ import annotations

from typing import Any

import reflex as rx


def worded_select(options: rx.Var, **props: Any) -> rx.Component:
    """A select whose items read as words (``label``) while the form gets the value (``value``): people
    pick "Ultra high", the service receives ``ultra_high``."""
    return rx.select.root(
        rx.select.trigger(aria_label=props.pop("aria_label", None), width="100%"),
        rx.select.content(rx.foreach(options, lambda o: rx.select.item(o["label"], value=o["value"]))),
        **props,
    )
