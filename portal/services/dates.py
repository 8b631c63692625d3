"""The span of time the portal answers about, and months and moments people ask for, checked against it.

Python's dates end at 9999-12-31: arithmetic near either end (the month after 9999-12, a moment in year 1
moved to UTC) overflows. Nothing the portal holds lies outside this span, so asking outside it is refused.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

from portal.services.errors import InvalidInput

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
OUT_OF_RANGE = f"must lie between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} (UTC)"
_MONTH = re.compile(r"\d{4}-\d{2}")


def month_start(month: str, *, field: str = "month") -> date:
    """The first day of ``month`` given as YYYY-MM; InvalidInput when it is not one, or outside the span."""
    try:
        if not _MONTH.fullmatch(month):
            raise ValueError(month)
        first = date.fromisoformat(f"{month}-01")
    except ValueError:
        raise InvalidInput(
            f"{field} must be a month as YYYY-MM, e.g. 2026-11.", details={"field": field}
        ) from None
    if not EARLIEST.date() <= first < LATEST.date():
        raise InvalidInput(f"{field} {OUT_OF_RANGE}.", details={"field": field})
    return first


def day_of(text: str, *, field: str = "day") -> date | None:
    """A day typed as YYYY-MM-DD (a date field's value), None when left empty; InvalidInput when it is not
    a day, or outside the span."""
    if not text.strip():
        return None
    try:
        day = date.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(
            f"{field} is a day as YYYY-MM-DD, e.g. 2026-03-01.", details={"field": field}
        ) from None
    if not EARLIEST.date() <= day < LATEST.date():
        raise InvalidInput(f"{field} {OUT_OF_RANGE}.", details={"field": field})
    return day
