"""ASGI apps served over real HTTP on loopback, by uvicorn in a thread, for tests."""

from __future__ import annotations

import socket
import threading

import uvicorn
from starlette.types import ASGIApp

from portal.api.app import create_api
from portal.api.front import in_front
from portal.parts import AppParts


def portal_app(parts: AppParts) -> ASGIApp:
    """The API over ``parts`` as ``portal run`` serves it to agents: behind the heartbeat lane."""
    return in_front(create_api(parts), parts)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerThread:
    """``with ServerThread(app) as url:`` serves ``app`` until the block ends; ``stop``/``start`` in between
    take the server down and bring it back on the same port (a portal restart, as agents see it)."""

    def __init__(self, app: object, port: int | None = None) -> None:
        self.app = app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        from tests.conftest import wait_until  # conftest imports this module

        server = self._server
        wait_until(lambda: server.started, timeout_s=10, every_s=0.02, what=f"a server on {self.url}")

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            # Forced: open long-polls would otherwise hold a graceful shutdown for their whole wait.
            self._server.should_exit = self._server.force_exit = True
            self._thread.join(timeout=10)

    def __enter__(self) -> str:
        self.start()
        return self.url

    def __exit__(self, *_: object) -> None:
        self.stop()
