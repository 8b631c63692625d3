"""Helpers for benches that start servers: a free loopback port, an app served in a thread of this process,
and waiting until a server process answers."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@functools.cache
def portal_port() -> int:
    """The one port every `portal run` of this bench process serves on, one at a time (BENCH_PORTAL_PORT, or a
    free one): the pages are built for a port, so each new port would build them again (a minute or more)."""
    return int(os.environ.get("BENCH_PORTAL_PORT") or free_port())


def wait_until_serving(url: str, process: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise SystemExit(f"{url} did not answer in {timeout_s} s")


@contextmanager
def serving_in_thread(app: object) -> Iterator[str]:
    """``with serving_in_thread(app) as url:`` serves the ASGI ``app`` on loopback (uvicorn in a thread,
    no lifespan) until the block ends."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise SystemExit(f"a server on port {port} did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        # Forced: open connections would otherwise hold a graceful shutdown.
        server.should_exit = server.force_exit = True
        thread.join(timeout=10)


class FailedRequests(RuntimeError):
    """A bench's requests were refused or failed: its figures would time the failures, so it fails."""
