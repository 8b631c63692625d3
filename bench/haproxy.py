"""Debian's HAProxy in front of portal processes on loopback, as `tests/test_multi_process.py` and the
heartbeat bench (bench/heartbeats.py) run it: the API, the agents and the pages round robin across the
processes, health-checked on ``/healthz``, a request whose connection failed retried on another; a page's
event websocket (``/_event``) stays with one process while it lives (``balance source``).

Here rather than in tests/ because ``python -m bench`` needs nothing from tests/ (importing tests.conftest
would clear the process's PORTAL_ variables)."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.serving import free_port


def haproxy_config(port: int, stats_port: int, portals: dict[str, int]) -> str:
    servers = "\n".join(f"    server {name} 127.0.0.1:{p} check" for name, p in portals.items())
    return f"""global
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    option forwardfor
    # A request whose connection failed, or that got nothing back from a process that died, goes to the
    # other process.
    retries 3
    retry-on conn-failure empty-response
    option redispatch 1
    default-server inter 500ms fall 2 rise 2

frontend portal
    bind 127.0.0.1:{port}
    use_backend events if {{ path_beg /_event }}
    default_backend portals

# The API, the agents and the pages: any process answers any request.
backend portals
    balance roundrobin
    option httpchk GET /healthz
{servers}

# A page's event websocket stays on one process while it lives; Reflex keeps the page's state in Redis,
# so when that process dies the page reconnects to another and carries on.
backend events
    balance source
    hash-type consistent
    option httpchk GET /healthz
{servers}

listen stats
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /
"""


@dataclass
class Balancer:
    url: str
    stats_url: str
    process: subprocess.Popen
    home: Path
    servers: tuple[str, ...]

    @property
    def port(self) -> int:
        """The port it balances on."""
        return int(self.url.rsplit(":", 1)[1])

    def stats(self) -> dict[tuple[str, str], dict[str, str]]:
        """HAProxy's CSV statistics by (backend, server)."""
        text = httpx.get(self.stats_url + "/;csv", timeout=5).text.lstrip("# ")
        return {(row["pxname"], row["svname"]): row for row in csv.DictReader(io.StringIO(text))}

    def served(self, backend: str = "portals") -> dict[str, int]:
        """Requests each portal process was sent so far."""
        stats = self.stats()
        return {name: int(stats[(backend, name)]["stot"]) for name in self.servers}

    def status(self, name: str) -> str:
        return self.stats()[("portals", name)]["status"]

    def holding_websockets(self) -> list[str]:
        stats = self.stats()
        return [name for name in self.servers if int(stats[("events", name)]["scur"] or 0) > 0]


def haproxy_program() -> str | None:
    """Debian's haproxy (in /usr/sbin, which a user's PATH may lack), or None (make haproxy installs it)."""
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")


def start_haproxy(haproxy: str, port: int, portals: dict[str, int], timeout_s: float = 30) -> Balancer:
    """HAProxy on 127.0.0.1:``port`` in front of ``portals`` (name: port), once it sees every one up."""
    home = Path(tempfile.mkdtemp(prefix="haproxy-"))
    stats_port = free_port()
    config = home / "haproxy.cfg"
    config.write_text(haproxy_config(port, stats_port, portals))
    checked = subprocess.run([haproxy, "-c", "-q", "-f", str(config)], capture_output=True, text=True)
    if checked.returncode != 0:
        raise RuntimeError(f"haproxy refused its configuration: {checked.stdout}{checked.stderr}")
    log = home / "haproxy.log"
    process = subprocess.Popen(
        [haproxy, "-db", "-f", str(config)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    balancer = Balancer(
        f"http://127.0.0.1:{port}", f"http://127.0.0.1:{stats_port}", process, home, tuple(portals)
    )
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"haproxy exited: {log.read_text()[-2000:]}")
        try:
            if all(balancer.status(name) == "UP" for name in portals):
                return balancer
        except (httpx.HTTPError, KeyError):
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"HAProxy did not see {', '.join(portals)} up within {timeout_s} s")
        time.sleep(0.1)
