"""One Ray node per agent: a head or a worker joining a head, with its own ports and temp dir so that
several agents can share one host, stopped through its own process group (never `ray stop`, which
would kill every Ray process on the machine)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

from gpu_pool.autoscaler_relay import SOCKET_NAME, AutoscalerRelay

logger = logging.getLogger("gpu_pool.ray_node")

START_TIMEOUT_S = 90
# Ray's own words when its raylet did not register within the 30 s it waits for it, and that wait.
RAYLET_TIMED_OUT = "The current node timed out during startup"
RAYLET_WAIT_S = 30
STOP_TIMEOUT_S = 5
HEAD_POLL_S = 0.1  # a worker started with its head asks this often whether the head's GCS answers
OBJECT_STORE_BYTES = 80 * 2**20
WORKER_PORTS = 60
HEAD_TYPE, WORKER_TYPE = "head", "gpu_worker"  # node types as Ray's autoscaler knows them
PROVIDER_FILE = "portal_node_provider"  # the node provider's module, as a container's head imports it
PORT_NAMES = (
    "gcs",
    "client",
    "dashboard",
    "dashboard_agent_listen",
    "dashboard_agent_grpc",
    "metrics_export",
    "runtime_env_agent",
    "node_manager",
    "object_manager",
)


# Every Ray node's environment: no usage reports; and its dashboard agent, slow to import on a busy machine,
# gets two minutes to report its ports before the raylet gives up on it (it aborted after 15 s under load).
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_agent_register_timeout_ms": "120000"}


class RayNodeError(Exception):
    pass


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Distinct free ports, held open together while chosen so none is handed out twice."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class NodeSpec:
    role: str  # "head" or "worker"
    num_gpus: int
    resources: dict[str, float]
    node_ip: str = "127.0.0.1"
    head_address: str | None = None  # workers: "ip:port" of the head's GCS
    gcs_port: int | None = None  # heads: the GCS port the portal allocated (workers are told it); None: any
    dashboard: bool = False
    num_cpus: int | None = None
    env: dict[str, str] = field(default_factory=dict)  # e.g. the autoscaler's instance id for this node
    autoscaling: dict | None = None  # an autoscaled cluster's head runs Ray's autoscaler with this config
    # The agent's portal and token, for the relay that serves the autoscaler (never handed to the node).
    portal_url: str | None = None
    autoscaler_token: str | None = field(default=None, repr=False)


@dataclass
class RayNode:
    spec: NodeSpec
    temp_dir: Path
    ports: dict[str, int]
    process: subprocess.Popen
    log_path: Path
    node_id: str | None = None
    started_at: float = field(default_factory=time.time)
    relay: AutoscalerRelay | None = None  # an autoscaled head's: its autoscaler's way to the portal

    @property
    def address(self) -> str:
        return f"{self.spec.node_ip}:{self.ports['gcs']}"

    @property
    def dashboard_url(self) -> str | None:
        return f"http://{self.spec.node_ip}:{self.ports['dashboard']}" if self.spec.dashboard else None

    def alive(self) -> bool:
        return self.process.poll() is None

    def status(self) -> dict:
        return {
            "state": "running" if self.alive() else "failed",
            "node_id": self.node_id,
            "address": self.address if self.spec.role == "head" else None,
            "client_address": f"ray://{self.spec.node_ip}:{self.ports['client']}"
            if self.spec.role == "head"
            else None,
            "dashboard_url": self.dashboard_url,
        }

    def stop(self) -> None:
        """SIGTERM to the node's processes, SIGKILL to any still there after the grace period.

        The node's processes are those of its process group and any other that names its temp dir (Ray
        starts some of them in sessions of their own)."""
        family = self._processes()
        for process in family:
            with contextlib.suppress(psutil.Error):
                process.terminate()
        _, alive = psutil.wait_procs(family, timeout=STOP_TIMEOUT_S)
        for process in [*alive, *self._processes()]:
            with contextlib.suppress(psutil.Error):
                process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def close_relay(self) -> None:
        if self.relay is not None:
            self.relay.close()
            self.relay = None

    def _processes(self) -> list[psutil.Process]:
        marker = str(self.temp_dir)
        found = {}
        for process in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                if (
                    process.info["pid"] == self.process.pid
                    or os.getpgid(process.info["pid"]) == self.process.pid
                    or (process.info["cmdline"] and marker in " ".join(process.info["cmdline"]))
                ):
                    found[process.info["pid"]] = process
        return list(found.values())


def _ray_executable() -> str:
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else "ray"


def wait_for_head(
    address: str,
    deadline: float,
    abandon: threading.Event | None = None,
    connects: Callable[[str, int], bool] | None = None,
) -> None:
    """Return once the head's GCS at ``address`` accepts a TCP connection: a worker may be started at the
    same time as its head. Raises RayNodeError past ``deadline`` (monotonic) or once ``abandon`` is set (a
    newer command replaced this start). ``connects`` tries a connection where the node will run (default:
    from here)."""
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise RayNodeError(f"the head's address {address[:80]!r} is not host:port")
    while True:
        if (connects or _connects)(host.strip("[]"), int(port)):
            return
        if abandon is not None and abandon.is_set():
            raise RayNodeError("abandoned for a newer command while waiting for the head")
        if time.monotonic() >= deadline:
            raise RayNodeError(f"the head's GCS at {address} did not answer within {START_TIMEOUT_S} s")
        if abandon is not None:
            abandon.wait(HEAD_POLL_S)
        else:
            time.sleep(HEAD_POLL_S)


def _connects(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def _ports(spec: NodeSpec) -> dict[str, int]:
    """The node's ports: free ones, but for a head the GCS port it was given, refused when busy."""
    held = None
    if spec.role == "head" and spec.gcs_port is not None:
        held = socket.socket()
        try:
            held.bind((spec.node_ip, spec.gcs_port))
        except OSError as error:
            held.close()
            raise RayNodeError(f"the GCS port {spec.gcs_port} on {spec.node_ip} is busy ({error})") from None
    try:
        # Chosen while the given port is held, so that none of the others is that one.
        ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES), spec.node_ip), strict=True))
    finally:
        if held is not None:
            held.close()
    if spec.role == "head" and spec.gcs_port is not None:
        ports["gcs"] = spec.gcs_port
    return ports


def start(spec: NodeSpec, workdir: Path | None = None, abandon: threading.Event | None = None) -> RayNode:
    """Start the node and wait until it runs; raises RayNodeError with the node's last log lines if not.

    A worker first waits for its head's GCS (within the same timeout); ``abandon`` cuts that wait short."""
    deadline = time.monotonic() + START_TIMEOUT_S
    if spec.role != "head":
        if not spec.head_address:
            raise RayNodeError("a worker node needs the head's address")
        wait_for_head(spec.head_address, deadline, abandon)
    while True:
        node = _launch(spec, workdir)
        try:
            return _running(node, deadline)
        except _StartupTimedOut as error:
            # Ray waits a hard-coded 30 s for its own raylet to register (ray/_private/node.py); a loaded
            # machine can miss that while everything else is fine: start afresh while time is left.
            node.stop()
            if time.monotonic() + RAYLET_WAIT_S >= deadline:
                raise RayNodeError(str(error)) from None
            logger.warning("the Ray node's raylet missed Ray's own 30 s wait; starting it again")


class _StartupTimedOut(RayNodeError):
    pass


def _launch(spec: NodeSpec, workdir: Path | None) -> RayNode:
    """``ray start`` for the node, on ports of its own (a head's GCS port as given)."""
    ports = _ports(spec)
    # Ray's socket paths must stay short (Unix sockets allow ~107 bytes), so the temp dir lives in /tmp.
    temp_dir = Path(tempfile.mkdtemp(prefix="gp-", dir=workdir or "/tmp"))
    worker_ports = free_ports(1)[0]
    while any(worker_ports <= port <= worker_ports + WORKER_PORTS for port in ports.values()):
        worker_ports = free_ports(1)[0]
    args = [
        _ray_executable(),
        "start",
        "--block",
        "--disable-usage-stats",
        f"--node-ip-address={spec.node_ip}",
        f"--temp-dir={temp_dir}",
        f"--num-gpus={spec.num_gpus}",
        f"--resources={json.dumps(spec.resources)}",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        f"--node-manager-port={ports['node_manager']}",
        f"--object-manager-port={ports['object_manager']}",
        f"--dashboard-agent-listen-port={ports['dashboard_agent_listen']}",
        f"--dashboard-agent-grpc-port={ports['dashboard_agent_grpc']}",
        f"--metrics-export-port={ports['metrics_export']}",
        f"--runtime-env-agent-port={ports['runtime_env_agent']}",
        # A narrow worker range of its own: Ray's default 10002-19999 collides across nodes on one host.
        f"--min-worker-port={worker_ports}",
        f"--max-worker-port={worker_ports + WORKER_PORTS}",
    ]
    if spec.num_cpus is not None:
        args.append(f"--num-cpus={spec.num_cpus}")
    if spec.role == "head":
        args += [
            "--head",
            f"--port={ports['gcs']}",
            f"--ray-client-server-port={ports['client']}",
            f"--include-dashboard={'true' if spec.dashboard else 'false'}",
            f"--dashboard-host={spec.node_ip}",
            f"--dashboard-port={ports['dashboard']}",
        ]
    else:
        args.append(f"--address={spec.head_address}")
    relay = None
    if spec.role == "head" and spec.autoscaling is not None:
        relay, config_path = serve_autoscaler(spec, temp_dir)
        args.append(f"--autoscaling-config={config_path}")
    log_path = temp_dir / "agent-ray.log"
    # Jobs' `python` is the agent's own (its virtual environment holds Ray), whatever PATH it was given.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, **RAY_ENV, "PATH": path, **spec.env}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return RayNode(spec, temp_dir, ports, process, log_path, relay=relay)


def _running(node: RayNode, deadline: float) -> RayNode:
    """The node once Ray says it runs; RayNodeError (with its last log lines) when it exits or the
    deadline passes, _StartupTimedOut when Ray gave up waiting for its own raylet."""
    while time.monotonic() < deadline:
        if node.process.poll() is not None:
            log = node.log_path.read_text(errors="replace")
            failed = _StartupTimedOut if RAYLET_TIMED_OUT in log else RayNodeError
            raise failed(f"ray start exited with {node.process.returncode}: {_tail(node.log_path)}")
        if "Ray runtime started" in node.log_path.read_text(errors="replace"):
            node.node_id = _node_id(node.temp_dir)
            return node
        time.sleep(0.2)
    last_lines = _tail(node.log_path)  # before stop() removes the node's temp dir, log included
    node.stop()
    raise RayNodeError(f"the Ray node did not start within {START_TIMEOUT_S} s: {last_lines}")


def serve_autoscaler(
    spec: NodeSpec, directory: Path, seen_as: Path | None = None
) -> tuple[AutoscalerRelay, Path]:
    """The relay for this autoscaled head's autoscaler, serving in ``directory``, and the autoscaler's
    config beside it; the config's path as the node sees it. ``seen_as`` is where a container sees
    ``directory``: the provider's module is copied there too, as the container's image holds Ray alone.
    Ray logs the config: it holds no secret."""
    assert spec.autoscaling is not None and spec.portal_url and spec.autoscaler_token
    relay = AutoscalerRelay(directory, spec.portal_url, spec.autoscaler_token)
    module = "gpu_pool.node_provider"
    if seen_as is not None:
        shutil.copyfile(Path(__file__).with_name("node_provider.py"), directory / f"{PROVIDER_FILE}.py")
        module = PROVIDER_FILE
    inside = seen_as or directory
    provider = {
        **spec.autoscaling["provider"],
        "module": f"{module}.PortalNodeProvider",
        "socket": str(inside / SOCKET_NAME),
    }
    (directory / "autoscaling.yaml").write_text(yaml.safe_dump({**spec.autoscaling, "provider": provider}))
    return relay, inside / "autoscaling.yaml"


def _node_id(temp_dir: Path) -> str | None:
    # Ray names some per-node files after the node id, e.g. session_latest/metrics_export_port_<id>.
    for path in (temp_dir / "session_latest").glob("metrics_export_port_*"):
        return path.name.rsplit("_", 1)[-1]
    return None


def _tail(path: Path, lines: int = 12) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
