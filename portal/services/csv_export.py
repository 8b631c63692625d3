"""CSV files people download and open in a spreadsheet: every export of the portal is written here.

A spreadsheet runs a cell that begins with ``=``, ``+``, ``-`` or ``@`` as a formula (tab and carriage
return lead to the same), so a device named ``=HYPERLINK("http://evil.example/x","Open")`` would become a
live link in its customers' invoices. Such text cells get a leading ``'`` (OWASP's advice), which the
spreadsheet shows as text and does not run.

Numbers are left as numbers: a cell that is an ``int``, ``float`` or ``Decimal`` (or a NumPy number) is
written as is, so ``-1.500000`` in a money column stays a value to sum. Only a number the code itself
formats can reach such a cell, never text someone typed; money formatted as text must be handed over as a
``Decimal`` to stay a number.
"""

from __future__ import annotations

import csv
import io
import numbers
from collections.abc import Iterable
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """The value as a CSV cell no spreadsheet runs: numbers and empty cells as they are, text that would
    start a formula prefixed with ``'``."""
    if value is None or isinstance(value, numbers.Number):
        return value
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_text(header: Iterable[Any], rows: Iterable[Iterable[Any]]) -> str:
    """A CSV file: the header line, then one line per row, each cell made safe."""
    out = io.StringIO()
    # RFC 4180's CRLF: the writer quotes a cell holding any character of the line end, so a carriage
    # return inside a cell cannot start a new line either.
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([safe_cell(name) for name in header])
    writer.writerows([safe_cell(value) for value in row] for row in rows)
    return out.getvalue()
