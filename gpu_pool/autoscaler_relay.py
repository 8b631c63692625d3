"""The agent's side of an autoscaled head: a small HTTP server on a Unix socket that Ray's autoscaler
(``gpu_pool.node_provider``) asks, and that asks the portal in turn with the device's token.

The token stays in the agent: a head in a container reaches this socket through a folder mounted into it,
never the token. What the socket lets through is what the autoscaler needs and nothing else: list the
cluster's nodes, ask for ``count`` more, release one node; the portal checks that this device hosts the
head of an autoscaled cluster and keeps every request within that cluster's bounds and credit. The
customer's code on the head can reach the socket too, with no more power than their own autoscaler.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx

logger = logging.getLogger("gpu_pool.autoscaler_relay")
SOCKET_NAME = "autoscaler.sock"
MAX_BODY_BYTES = 1024
MAX_COUNT = 1000
PORTAL_TIMEOUT_S = 15
_NODE_PATH = re.compile(r"^/autoscaler/nodes/([0-9a-fA-F-]{36})$")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    portal: httpx.Client


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("autoscaler relay: " + format, *args)

    def address_string(self) -> str:  # a Unix socket's peer has no address
        return "autoscaler"

    def __getattr__(self, name: str) -> object:
        # Any other method (PUT, PATCH, made-up ones) is refused as such, not as http.server's 501.
        if name.startswith("do_"):
            return lambda: self._answer(405, "only GET, POST and DELETE are served here")
        raise AttributeError(name)

    def do_GET(self) -> None:
        if self.path == "/autoscaler/nodes":
            self._forward("GET", "/nodes")
        else:
            self._answer(404, "no such path")

    def do_POST(self) -> None:
        if self.path != "/autoscaler/nodes":
            return self._answer(404, "no such path")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return self._answer(400, "a bad Content-Length")
        if not 0 < length <= MAX_BODY_BYTES:
            return self._answer(400, f"the body must be 1 to {MAX_BODY_BYTES} bytes")
        try:
            count = json.loads(self.rfile.read(length))["count"]
        except (ValueError, KeyError, TypeError):
            return self._answer(400, 'the body must be {"count": n}')
        if type(count) is not int or not 1 <= count <= MAX_COUNT:
            return self._answer(400, f"count must be a whole number from 1 to {MAX_COUNT}")
        self._forward("POST", "/nodes", {"count": count})

    def do_DELETE(self) -> None:
        matched = _NODE_PATH.match(self.path)
        if matched is None:
            return self._answer(404, "no such path")
        self._forward("DELETE", f"/nodes/{matched.group(1)}")

    def _forward(self, method: str, path: str, body: dict | None = None) -> None:
        try:
            reply = self.server.portal.request(method, path, json=body)
        except httpx.HTTPError as error:
            return self._answer(502, f"the portal cannot be reached: {type(error).__name__}")
        self._send(reply.status_code, reply.content)

    def _answer(self, status: int, message: str) -> None:
        self._send(status, json.dumps({"error": {"message": message}}).encode())

    def _send(self, status: int, content: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)


class AutoscalerRelay:
    """Serves ``directory / SOCKET_NAME`` until ``close``; the socket is open to any user who can reach
    the folder (a container's user), so the folder's own place must keep others out on the host."""

    def __init__(self, directory: Path, portal_url: str, token: str) -> None:
        self.socket_path = directory / SOCKET_NAME
        self.socket_path.unlink(missing_ok=True)
        self._server = _Server(str(self.socket_path), _Handler)
        os.chmod(self.socket_path, 0o666)
        self._server.portal = httpx.Client(
            base_url=portal_url.rstrip("/") + "/api/v1/worker/autoscaler",
            headers={"Authorization": f"Bearer {token}"},
            timeout=PORTAL_TIMEOUT_S,
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="autoscaler-relay", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._server.portal.close()
        self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self.socket_path.unlink()
