"""How the pages say amounts, rates and states to people: one formatter each, so every page agrees.

Money is integer micro-USD (1 USD = 1,000,000 micro) and is never turned into a float here: the digits come
from integer division, rounded half up.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import Enum

MICRO_PER_USD = 1_000_000
MICRO_PER_CENT = 10_000
RATE_DIGITS = 6  # every digit a micro-USD rate has
# Terminal escape sequences (colours, cursor moves) as programs print them: CSI ... final byte, and OSC.
ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[@-Z\\-_]")


def _dollars(micro: int, digits: int) -> str:
    """``abs(micro)`` in dollars with ``digits`` decimals (half up) and thousands separators."""
    step = 10 ** (6 - digits)
    units = (abs(micro) + step // 2) // step
    whole, fraction = divmod(units, 10**digits)
    return f"{whole:,}" + (f".{fraction:0{digits}d}" if digits else "")


def usd(micro: int, *, signed: bool = False) -> str:
    """An amount or balance to the cent, its sign before the symbol: ``$1,234.50``, ``-$0.01``; with
    ``signed`` a credit shows ``+``. A non-zero amount under half a cent reads ``<$0.01``, never ``$0.00``."""
    sign = "-" if micro < 0 else ("+" if signed and micro > 0 else "")
    if 0 < abs(micro) < MICRO_PER_CENT // 2:
        return f"{sign}<$0.01"
    return f"{sign}${_dollars(micro, 2)}"


def usd_rate(micro: int, unit: str = "/h") -> str:
    """A price with its unit: ``$1.20/h``; more than two decimals only where the rate has them
    (``$0.004444/h``)."""
    text = _dollars(micro, RATE_DIGITS)
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0").ljust(2, "0")
    return f"{'-' if micro < 0 else ''}${whole}.{fraction}{unit}"


def words(value: str | Enum | None) -> str:
    """An enum value as people say it: ``ultra_high`` -> ``Ultra high``, ``node_joined`` -> ``Node
    joined``."""
    if value is None:
        return ""
    text = str(value.value if isinstance(value, Enum) else value).replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def count(number: int, noun: str, plural: str | None = None) -> str:
    """A number with its noun in the right form: ``1 node``, ``2 nodes``, ``0 GPUs``."""
    return f"{number:,} {noun if number == 1 else (plural or noun + 's')}"


def sentence(text: str) -> str:
    """A reason recorded in lower case (``the cluster did not come up within 600 s``) as a sentence."""
    text = text.strip()
    if not text:
        return ""
    text = text[:1].upper() + text[1:]
    return text if text[-1] in ".!?…" else text + "."


def reliability(score: float, *, new: bool) -> str:
    """A reliability score as a percentage; ``new`` for a device without the history to judge it."""
    return "new" if new else f"{score * 100:.1f}%"


def customer_code(isolation: str, engine: str, image: str) -> str:
    """Where a device runs its renters' code, as its provider and the admins read it."""
    if isolation == "container":
        where = f"In a {engine} container per rental" if engine else "In a container per rental"
        return f"{where} ({image})" if image else where
    return "On the host as the agent's user: not isolated (development only, never hired in production)"


def overlay(address: str | None, state: str, relayed: bool | None) -> str:
    """A device's node on the overlay: its address, its state, and whether its tunnels are direct (a hole
    punched through its NAT) or go through a relay."""
    if not address:
        return "Not on the overlay"
    path = {None: "", True: ", through the relay", False: ", direct (hole punched)"}[relayed]
    return f"{address}, {words(state).lower()}{path}"


def plain_text(output: str) -> str:
    """A program's output without its terminal escapes (a page would show them as ``[32m`` noise)."""
    return ANSI_ESCAPE.sub("", output)


def utc_iso(moment: datetime | None) -> str:
    """A moment as fixed-width ISO 8601 UTC text, "2026-12-03T01:20:05Z", for components.times.local_time
    (which shows it in the browser's zone and slices its UTC title from it); "" for none."""
    if moment is None:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # the portal keeps UTC; a naive value is UTC too
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
