"""The product on the small internet of ``tests/netns.py`` (issue 18): what ``tests/test_mesh_cluster.py``
and ``bench/mesh_deploy.py`` share. The portal (``tests/mesh_portal.py``: its API, task worker and scheduler)
and its overlay node (``portal mesh-node``) on the public segment, a lighthouse and relay (``portal mesh``),
and three provider devices whose agents (``gpu-pool worker``, simulated GPUs, real Ray) start behind home
NATs when asked, provider-c behind a symmetric NAT that only a relay gets through. Nothing listens on the
machine's own network: the portal and the Ray nodes are reached only through the namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session, select

from portal.infra import migrations
from portal.infra.cache import MemoryCache
from portal.infra.db import build_engine
from portal.models import ClusterEvent, Device
from portal.parts import AppParts, in_use
from tests.conftest import PROJECT_ROOT, settings_for, wait_until
from tests.factories import add_device
from tests.netns import LIGHTHOUSE_ADDRESS, PORTAL_ADDRESS, Internet, Process, small_internet

VENV_BIN = Path(sys.executable).parent
PORT = 8000
PORTAL_URL = f"http://{PORTAL_ADDRESS}:{PORT}"
LIGHTHOUSE = {"overlay_ip": "100.64.0.2", "public_address": f"{LIGHTHOUSE_ADDRESS}:4242"}
PROVIDERS = ("provider-a", "provider-b", "provider-c")  # provider-c: behind the symmetric NAT
# Run in the customer's namespace: one API call, its status and body as JSON on stdout.
_CALL = """
import json, sys, httpx
method, url, token, body = sys.argv[1:5]
headers = {"Authorization": f"Bearer {token}"} if token else {}
reply = httpx.request(method, url, headers=headers, json=json.loads(body) if body else None, timeout=45)
print(json.dumps({"status": reply.status_code, "body": reply.text}))
"""


@dataclass
class World:
    net: Internet
    engine: object
    parts: AppParts
    env: dict[str, str]
    devices: dict[str, uuid.UUID]  # namespace role -> device
    tokens: dict[str, str]  # namespace role -> device token
    processes: dict[str, Process]

    def call(self, method: str, path: str, token: str | None, body: dict | None = None) -> tuple[int, dict]:
        """An API call from the customer's namespace."""
        args = [method, PORTAL_URL + path, token or "", json.dumps(body) if body is not None else ""]
        done = self.net["customer"].run(sys.executable, "-c", _CALL, *args, check=False, timeout_s=60)
        if done.returncode != 0:
            return 0, {"unreachable": done.stderr.strip().splitlines()[-1:]}
        answer = json.loads(done.stdout)
        try:
            return answer["status"], json.loads(answer["body"])
        except ValueError:
            return answer["status"], {"text": answer["body"]}

    def deploy(self, token: str, name: str) -> uuid.UUID:
        """A 2-GPU cluster asked for from the customer's namespace, once it runs."""
        status, cluster = self.call(
            "POST",
            "/api/v1/clusters",
            token,
            {"name": name, "gpu_model": "H100-80GB", "gpu_count": 2, "duration_hours": 1},
        )
        assert status == 202, cluster
        path = f"/api/v1/clusters/{cluster['id']}"
        wait_until(
            lambda: self.call("GET", path, token)[1]["state"] == "running",
            timeout_s=240,
            what=f"the cluster {name} running across two NATs",
        )
        return uuid.UUID(cluster["id"])

    def start(self, role: str, command: list[str], name: str, host_mounts: bool = False) -> Process:
        environment = ["env", *(f"{k}={v}" for k, v in self.env.items())]
        process = self.net.start(role, [*environment, *command], name, host_mounts)
        self.processes[name] = process
        return process

    def start_agent(self, role: str, *options: str) -> None:
        self.start(
            role,
            [
                str(VENV_BIN / "gpu-pool"), "worker",
                "--portal", PORTAL_URL,
                "--token", self.tokens[role],
                "--simulate", "1xH100-80GB",
                "--state-dir", str(self.net.workdir / f"agent-{role}"),
                *options,
            ],
            f"agent-{role}",
            host_mounts="container" in options,  # Podman needs the machine's cgroups
        )  # fmt: skip

    def device(self, role: str) -> Device:
        with Session(self.engine) as session:
            return session.get_one(Device, self.devices[role])

    def logs(self) -> str:
        """Every process's last lines, and every cluster's events: what a failure needs to be understood."""
        with Session(self.engine) as session:
            events = session.exec(select(ClusterEvent).order_by(ClusterEvent.at)).all()
        lines = [f"{e.at:%H:%M:%S.%f} {e.cluster_id.hex[:8]} {e.kind:<14} {e.message[:200]}" for e in events]
        tails = [f"--- {name}\n{p.output()[-2500:]}" for name, p in self.processes.items()]
        return "\n".join([*tails, "--- cluster events", *lines])


@contextlib.contextmanager
def mesh_world(workdir: Path) -> Iterator[World]:
    """The small internet with the portal, its overlay node and a lighthouse serving; provider devices added
    (their agents not started yet). Every process's last lines are printed if the block fails."""
    data_dir = workdir / "data"
    data_dir.mkdir()
    values = {
        "data_dir": str(data_dir),
        "mesh": "nebula",
        "lighthouses": json.dumps([LIGHTHOUSE]),
        "public_url": PORTAL_URL,
        "heartbeat_interval_s": "2",  # placement wants a beat within 3 intervals: 3 s is short under load
        "node_start_timeout_s": "180",
        "rate_limit_per_minute": "100000",
        "log_format": "json",
    }
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")},
        **{f"PORTAL_{name.upper()}": value for name, value in values.items()},
        "PYTHONPATH": str(PROJECT_ROOT),
        "XDG_CONFIG_HOME": str(workdir / "config"),
        "HOME": str(workdir),
    }
    settings = settings_for(**{**values, "lighthouses": [LIGHTHOUSE]})
    url = f"sqlite:///{data_dir / 'portal.db'}"
    migrations.upgrade(url)
    engine = build_engine(url)
    parts = AppParts(settings, engine, MemoryCache())
    with in_use(parts), small_internet(workdir) as net:
        tokens, devices = {}, {}
        for role in PROVIDERS:
            devices[role], tokens[role] = add_device(engine, name=role, payout_wallet=True)
        world = World(net, engine, parts, env, devices, tokens, {})
        world.start("public", [str(VENV_BIN / "portal"), "mesh", "--host", LIGHTHOUSE_ADDRESS], "lighthouse")
        world.start("portal", [str(VENV_BIN / "portal"), "mesh-node"], "portal-node")
        world.start(
            "portal", [sys.executable, "-m", "tests.mesh_portal", PORTAL_ADDRESS, str(PORT)], "portal"
        )
        try:
            wait_until(
                lambda: (
                    "overlay node" in world.processes["portal-node"].output()
                    and world.call("GET", "/healthz", None)[0] == 200
                ),
                timeout_s=60,
                what="the portal and its overlay node",
            )
            yield world
        except BaseException:
            print(world.logs())
            raise
        finally:
            engine.dispose()
