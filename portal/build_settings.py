"""What ``rxconfig.py`` adds to Reflex's page build: a lighter Vite build, and none of the two lines Reflex
prints that would send a newcomer the wrong way (a Node.js upgrade the build does not need, and `reflex run`
where `make run` / `portal run` is the way)."""

from __future__ import annotations

import logging
from typing import Any

import reflex as rx

VITE_CONFIG = "vite.config.js"
# Where Reflex's vite.config.js template opens the build options (Reflex 0.10).
BUILD_OPTIONS = "  build: {\n"
# Vite gzips every chunk once more only to print its compressed size: a second of CPU on these 2 cores for a
# table nobody reads (Reflex hides it unless debugging). Serving uses the .gz files Reflex writes itself.
LIGHTER_BUILD = "    reportCompressedSize: false,\n"


def lighter_vite_build(config: str) -> str:
    """Reflex's vite.config.js without the compressed-size report; as it is if the template changed (the
    build then only takes longer)."""
    if LIGHTER_BUILD in config or BUILD_OPTIONS not in config:
        return config
    return config.replace(BUILD_OPTIONS, BUILD_OPTIONS + LIGHTER_BUILD, 1)


class LighterViteBuild(rx.plugins.Plugin):
    """Applies ``lighter_vite_build`` to the vite.config.js each compile writes."""

    def pre_compile(self, **context: Any) -> None:
        context["add_modify_task"](VITE_CONFIG, lighter_vite_build)


class _NodeUpgradeNotNeeded(logging.Filter):
    """Drops Reflex's "Your version (20.x) of Node.js is out of date" warning when Reflex builds with bun:
    it then runs the page build under bun (``bun --bun run export``), not under Node, so Node 20 builds the
    pages as well as a newer one would. With npm (no bun, or REFLEX_USE_NPM) the warning stays: Node itself
    would run the build."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "of Node.js is out of date" not in record.getMessage():
            return True
        from reflex.utils import js_runtimes, path_ops

        return path_ops.get_bun_path() is None or js_runtimes.prefer_npm_over_bun()


class _NotTheWayHere(logging.Filter):
    """Drops Reflex's "Initialized portal. Run `uv run reflex run` to start the app." (printed when a build
    first makes .web): this project starts with `make run` or `portal run`, which already run."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Initialized ") and "reflex run" in message)


def quiet_misleading_reflex_lines() -> None:
    """Adds the filters above to Reflex's loggers, once however often rxconfig.py is read."""
    filters: tuple[tuple[str, type[logging.Filter]], ...] = (
        ("reflex.utils.js_runtimes", _NodeUpgradeNotNeeded),
        ("reflex.reflex", _NotTheWayHere),
    )
    for name, kind in filters:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, kind) for existing in logger.filters):
            logger.addFilter(kind())
