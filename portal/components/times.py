"""Moments shown in the visitor's own time zone, with the UTC time on hover.

The state sends each moment as ``display.utc_iso`` text; the browser formats it (react-moment, rendered on
the client only, so the pages' server-rendered text never disagrees with the browser's) and the element's
title carries the UTC time, e.g. "2026-12-03 01:20 UTC".
"""

from __future__ import annotations

from typing import Any

import reflex as rx

DATE_TIME = "YYYY-MM-DD HH:mm"
DATE_TIME_SECONDS = "YYYY-MM-DD HH:mm:ss"
TIME_SECONDS = "HH:mm:ss"
DATE = "YYYY-MM-DD"


def utc_title(iso: rx.Var, *, seconds: bool = False) -> rx.Var:
    """ "2026-12-03T01:20:05Z" as "2026-12-03 01:20 UTC" (with ":05" when ``seconds``)."""
    text = iso.to(str)
    return text[0:10] + " " + text[11 : 19 if seconds else 16] + " UTC"


def relative_time(text: rx.Var, iso: rx.Var, **props: Any) -> rx.Component:
    """A time told relative to now ("12 s ago", worded by the state) with its UTC moment as the title
    (``iso`` is ``display.utc_iso`` text; no title when it is empty: "never")."""
    return rx.el.span(
        text,
        title=rx.cond(iso.to(str) != "", utc_title(iso, seconds=True), ""),
        class_name="relative-time",
        **props,
    )


def local_time(iso: rx.Var | str, fmt: str = DATE_TIME, *, empty: str = "—", **props: Any) -> rx.Component:
    """``iso`` (``display.utc_iso`` text) in the browser's zone as ``fmt`` (moment.js tokens), its UTC time
    as the title; ``empty`` when there is no moment."""
    value = iso if isinstance(iso, rx.Var) else rx.Var.create(iso)
    return rx.cond(
        value.to(str) != "",
        rx.el.span(
            rx.moment(date=value, format=fmt, local=True),
            title=utc_title(value, seconds="ss" in fmt),
            class_name="local-time",
            **props,
        ),
        rx.el.span(empty, **props),
    )
