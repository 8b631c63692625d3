"""How many connections one `portal run` process holds at once.

Reflex starts Granian without a backlog or a backpressure (Granian's defaults: a listen backlog of 1,024 and
backlog / workers requests in flight per web worker). A long-poll is a request in flight for up to 25 s and
every agent holds one, so with those defaults one process served about 1,000 of them and a new connection
past that waited until one ended, however idle the CPU (bench.deploys, README "Capacity plan").
``allow_connections`` raises both for the Granian server Reflex makes next in this process, and the open-file
limit that many sockets need.
"""

from __future__ import annotations

import logging
import resource
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SOMAXCONN = Path("/proc/sys/net/core/somaxconn")
SPARE_FILES = 1024  # beside the sockets: the database's, Redis', logs, the pages


def listen_backlog(limit: int) -> int:
    """The listen backlog to ask for: the kernel caps it at net.core.somaxconn anyway."""
    try:
        return min(limit, int(SOMAXCONN.read_text()))
    except (OSError, ValueError):
        return min(limit, 4096)


def raise_open_files(needed: int) -> int:
    """Raise this process's soft limit on open files towards ``needed`` (never past the hard limit, which
    only root may raise); the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    if soft < needed:
        logger.warning(
            "open files are limited to %d (hard limit), fewer than the %d that %s connections need: raise "
            "the hard limit (ulimit -Hn, LimitNOFILE= in systemd, --ulimit nofile= in Docker)",
            soft,
            needed,
            needed - SPARE_FILES,
        )
    return soft


def allow_connections(limit: int) -> None:
    """Let the Granian server made next in this process (by Reflex) hold ``limit`` connections in flight,
    shared among its web workers, with the open files for them."""
    import granian.server

    raise_open_files(limit + SPARE_FILES)
    base: Any = granian.server.Server
    if getattr(base, "portal_connection_limit", None) is not None:
        base = base.__bases__[0]

    class Server(base):  # type: ignore[misc, valid-type]
        portal_connection_limit = limit

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            workers = max(int(kwargs.get("workers") or 1), 1)
            kwargs.setdefault("backlog", listen_backlog(limit))
            kwargs.setdefault("backpressure", max(limit // workers, 1))
            super().__init__(*args, **kwargs)

    granian.server.Server = Server
