"""The parts actors work with (settings, database, cache, wake-ups): from the settings by default, or the
ones a test or an embedding process hands over, so actors and the API it serves share one database."""

from __future__ import annotations

from portal.api.deps import AppParts

_parts: AppParts | None = None


def parts() -> AppParts:
    global _parts
    if _parts is None:
        _parts = AppParts.from_settings()
    return _parts


def use(chosen: AppParts | None) -> None:
    global _parts
    _parts = chosen
