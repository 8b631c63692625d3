"""The worker agent: registers the machine, proves its compute, heartbeats, and runs the portal's commands.

Two loops share the work: heartbeats (liveness, GPU samples, Ray status) and a long-poll for commands, so
a deploy reaches the agent in well under a second. Losing the portal is survived: both loops retry with
exponential backoff and jitter while the Ray node keeps running. A refused token ends the agent.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tenacity import Retrying, retry_if_exception_type, wait_exponential_jitter

from gpu_pool import __version__, autoscaler, compute, ray_node, rental_egress, rental_netns
from gpu_pool.client import PortalClient, PortalUnavailable, Rejected, TokenRefused
from gpu_pool.hardware import GpuInfo, GpuSample, NvmlGpus, OfferedGpus, SimulatedGpus, machine_facts
from gpu_pool.isolation import ContainerIsolation
from gpu_pool.mesh import Mesh, MeshError, tun_name
from gpu_pool.rental_netns import RentalNamespace

logger = logging.getLogger("gpu_pool.agent")
LONG_POLL_S = 25


class Agent:
    def __init__(
        self,
        client: PortalClient,
        gpus: NvmlGpus | SimulatedGpus | OfferedGpus | None,
        *,
        node_ip: str = "127.0.0.1",
        workdir: Path | None = None,
        metrics_url: str | None = None,
        device_label: str = "",
        mesh_dir: Path | None = None,
        mesh_tun: str | None = None,
        mesh_port: int = 0,
        isolation: ContainerIsolation | None = None,
        rental_internet: bool = True,
    ) -> None:
        self.client = client
        self.gpus = gpus
        self.node_ip = node_ip
        self.workdir = workdir
        self.metrics_url = metrics_url
        self.device_label = device_label
        # The overlay, when the portal runs one: Nebula's files under mesh_dir, per device (None: not asked).
        self.mesh_dir, self.mesh_tun, self.mesh_port = mesh_dir, mesh_tun, mesh_port
        self.mesh: Mesh | None = None
        # Customer code in a container per node (None: on the host, development only).
        self.isolation = isolation
        # On the overlay, whether rentals' containers reach the internet (and only it) through this host.
        self.rental_internet = rental_internet
        self.device_id: str | None = None
        self.state = "unknown"
        self.heartbeat_s = 5
        self.node: ray_node.RayNode | None = None
        self.node_cluster: str | None = None  # the cluster the node serves
        self.stopping = threading.Event()
        self.fatal: str | None = None
        self._handled: set[str] = set()
        self._lock = threading.Lock()  # guards the fields above; held only for moments
        # Starting and stopping the Ray node take seconds: they queue on a lock of their own, so that the
        # heartbeat (which reads the node's status) never waits for them.
        self._node_lock = threading.Lock()
        self._starting = False
        # Set by a command that arrives while a start waits for its head: that start gives up and yields.
        self._abandon_start = threading.Event()

    # --- what the machine is -----------------------------------------------------------------------

    @property
    def simulated(self) -> bool:
        return bool(self.gpus and self.gpus.simulated)

    def describe(self) -> list[GpuInfo]:
        return self.gpus.describe() if self.gpus else []

    def sample(self) -> list[GpuSample]:
        if not self.gpus:
            return []
        if self.gpus.simulated:  # simulated GPUs are busy only while a Ray node runs on them
            return self.gpus.sample(busy=self.ray_status()["state"] == "running")
        return self.gpus.sample()

    def report(self) -> dict[str, Any]:
        return {
            "agent_version": __version__,
            **machine_facts(),
            "gpus": [gpu.as_dict() for gpu in self.describe()],
            "simulated": self.simulated,
            "metrics_url": self.metrics_url,
            **(self.isolation.describe() if self.isolation else {"isolation": "none"}),
        }

    # --- the portal, with retries ------------------------------------------------------------------

    def _retrying(self, action: Callable[[], Any]) -> Any:
        """Retry while the portal is unreachable (backoff with jitter, up to 30 s apart); stop on a stop."""
        try:
            for attempt in Retrying(
                retry=retry_if_exception_type(PortalUnavailable),
                wait=wait_exponential_jitter(multiplier=0.5, max=30),
                sleep=self.stopping.wait,  # a stop ends the wait at once
                before_sleep=lambda state: logger.warning(
                    "portal unreachable (%s); retrying", state.outcome.exception() if state.outcome else "?"
                ),
            ):
                with attempt:
                    if self.stopping.is_set():
                        return None
                    return action()
        except Rejected as error:
            logger.error("the portal rejected a request: %s", error)
        return None

    def register(self) -> bool:
        reply = self._retrying(lambda: self.client.register(self.report()))
        if reply is None:
            return False
        self.device_id, self.state = reply["device_id"], reply["state"]
        if self.isolation:
            self.isolation.device_id = self.device_id
        self.heartbeat_s = reply["next_heartbeat_s"]
        logger.info("registered as device %s (%s)", self.device_id, self.state)
        return bool(reply["verify"])

    def verify(self) -> dict[str, Any]:
        """One proof-of-compute round: compute, commit, reveal; returns the portal's verdict."""
        challenge = self.client.challenge()
        product = compute.multiply(challenge["seed"], challenge["n"], use_gpu=not self.simulated)
        reply = self.client.answer_challenge(
            challenge["id"],
            {"row_hashes": product.commitment(), "elapsed_ms": product.elapsed_ms, "vram_mb": self.vram_mb()},
        )
        verdict = self.client.answer_challenge(challenge["id"], {"rows": product.reveal(reply["rows"])})
        logger.info(
            "proof of compute: %s (%s, %s)", verdict["reason"], product.backend, verdict.get("tflops")
        )
        return verdict

    def join_mesh(self) -> bool:
        """Join the portal's overlay if it runs one; Ray then binds to this device's overlay address."""
        if self.mesh_dir is None or self.device_id is None:
            return False
        # Rentals' containers join the overlay interface in a namespace of their own; without containers
        # (development) the interface stays here and Ray nodes bind it directly.
        namespace = None
        if self.isolation:
            try:
                rental_egress.remove_stale()  # rules of rentals' namespaces gone since (a crashed agent's)
            except rental_egress.EgressError as error:
                logger.warning("stale egress rules not removed: %s", error)
            name = rental_netns.name_for(self.device_id)
            namespace = RentalNamespace(name, egress=self.rental_internet)
        mesh = Mesh(
            self.client,
            self.mesh_dir / f"mesh-{self.device_id}",
            tun_device=self.mesh_tun or tun_name(self.device_id),
            listen_port=self.mesh_port,
            namespace=namespace,
        )
        try:
            joined = self._retrying(mesh.start)
        except MeshError as error:
            logger.error("not on the overlay: %s; Ray nodes listen on %s", error, self.node_ip)
            return False
        if not joined:
            logger.info("the portal runs without an overlay; Ray nodes listen on %s", self.node_ip)
            return False
        self.mesh = mesh
        if self.isolation:
            self.isolation.namespace = namespace
        return True

    @property
    def ray_ip(self) -> str:
        """Where this machine's Ray nodes listen: the overlay address when on the overlay."""
        overlay = self.mesh.overlay_ip if self.mesh else None
        return overlay or self.node_ip

    def vram_mb(self) -> int | None:
        """Memory the GPUs let the agent allocate, or None when it cannot tell (simulated, no torch)."""
        if self.simulated or not self.gpus:
            return None
        allocatable = [compute.vram_allocatable_mb(gpu.index, gpu.memory_mb) for gpu in self.describe()]
        return None if None in allocatable else sum(a for a in allocatable if a is not None)

    # --- commands ----------------------------------------------------------------------------------

    def ray_status(self) -> dict[str, Any]:
        with self._lock:
            if self.node:
                return self.node.status()
            return {"state": "starting" if self._starting else "none"}

    def _node_spec(self, role: str, payload: dict[str, Any]) -> ray_node.NodeSpec:
        gpus = self.describe()
        resources = {f"device_{self.device_id}": 1.0}
        if gpus:
            resources[f"gpu_model_{gpus[0].model}"] = float(len(gpus))
        env = {}
        if payload.get("node_id"):
            # Ray's autoscaler knows a node by the portal's node id, not by its IP (shared by local agents).
            node_type = ray_node.HEAD_TYPE if role == "head" else ray_node.WORKER_TYPE
            env = {"RAY_CLOUD_INSTANCE_ID": str(payload["node_id"]), "RAY_NODE_TYPE_NAME": node_type}
        autoscaling = payload.get("autoscaling") if role == "head" else None
        if autoscaling:
            env["RAY_enable_autoscaler_v2"] = "1"
        return ray_node.NodeSpec(
            role=role,
            num_gpus=len(gpus),
            resources=resources,
            node_ip=self.ray_ip,
            head_address=payload.get("head_address"),
            gcs_port=int(payload["gcs_port"]) if payload.get("gcs_port") is not None else None,
            dashboard=bool(payload.get("dashboard", False)),
            num_cpus=payload.get("num_cpus"),
            env=env,
            autoscaling=self._autoscaling(payload, autoscaling) if autoscaling else None,
            portal_url=self.client.portal_url if autoscaling else None,
            autoscaler_token=self.client.token if autoscaling else None,
        )

    def _autoscaling(self, payload: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
        """Ray's autoscaler config for the head of an autoscaled cluster; its provider asks this agent,
        which asks its portal for nodes with this device's token."""
        return autoscaler.config(
            cluster_id=str(payload["cluster_id"]),
            min_workers=int(wanted["min_workers"]),
            max_workers=int(wanted["max_workers"]),
            idle_timeout_s=float(wanted["idle_timeout_s"]),
            head_resources={k: float(v) for k, v in wanted["head_resources"].items()},
            worker_resources={k: float(v) for k, v in wanted["worker_resources"].items()},
        )

    def handle(self, command: dict[str, Any]) -> tuple[bool, str]:
        kind, payload = command["kind"], command.get("payload") or {}
        try:
            if kind in ("start_ray_head", "start_ray_worker"):
                return self.start_ray("head" if kind == "start_ray_head" else "worker", payload)
            if kind == "stop_ray":
                self.stop_ray()
                return True, "stopped"
            if kind == "verify":
                # Retried while the portal is away, as at start: an escaping error would end the loop
                # that took the command, and the agent would take no more commands by long-poll.
                verdict = self._retrying(self.verify) or {}
                return bool(verdict.get("passed")), verdict.get("reason", "stopped before the proof")
            return False, f"unknown command {kind}"
        except ray_node.RayNodeError as error:
            return False, str(error)
        except OSError as error:  # a port or an address not there: this command fails, the agent goes on
            logger.warning("command %s failed: %s", kind, error)
            return False, f"{type(error).__name__}: {error}"

    def start_ray(self, role: str, payload: dict[str, Any]) -> tuple[bool, str]:
        cluster = payload.get("cluster_id")
        self._abandon_waiting_start()
        with self._node_lock:
            with self._lock:
                self._abandon_start.clear()
                running = self.node if self.node and self.node.alive() else None
                same_head = running is not None and running.spec.head_address == payload.get("head_address")
                if running and cluster == self.node_cluster and same_head:
                    return True, json.dumps(running.status())  # already running: a redelivery
                self._starting = True
            try:
                if running:
                    self._stop_node()  # a node of an earlier cluster whose stop never arrived
                if self.mesh:
                    self.mesh.renew()  # the cluster's group, so that its other nodes get through
                node = self._start_node(role, payload, cluster)
            finally:
                with self._lock:
                    self._starting = False
            with self._lock:
                self.node, self.node_cluster = node, cluster
            return True, json.dumps(node.status())

    def _abandon_waiting_start(self) -> None:
        """A start still waiting for its head is given up for this newer command (a worker sent to a
        replaced head, a stop); it is answered as failed, which the portal ignores once it moved on."""
        with self._lock:
            if self._starting:
                self._abandon_start.set()

    def _start_node(self, role: str, payload: dict[str, Any], cluster: str | None) -> ray_node.RayNode:
        spec = self._node_spec(role, payload)
        if self.isolation is None:
            return ray_node.start(spec, self.workdir, self._abandon_start)
        if spec.head_address:
            deadline = time.monotonic() + ray_node.START_TIMEOUT_S
            connects = self.isolation.namespace.connects if self.isolation.namespace else None
            ray_node.wait_for_head(spec.head_address, deadline, self._abandon_start, connects)
        rented = [] if self.simulated else [gpu.index for gpu in self.describe()]
        return self.isolation.start(spec, cluster, rented, self.workdir)

    def stop_ray(self) -> None:
        self._abandon_waiting_start()
        with self._node_lock:
            self._stop_node()
            if self.mesh and not self.stopping.is_set():
                self.mesh.renew()  # without the cluster's group: its nodes no longer get through

    def _stop_node(self) -> None:
        """Stop the node; the caller holds ``_node_lock``."""
        with self._lock:
            node, self.node = self.node, None
        if node:
            node.stop()

    def run_command(self, command: dict[str, Any]) -> None:
        with self._lock:
            if command["id"] in self._handled:
                return  # delivered twice (heartbeat and long-poll): run once
            self._handled.add(command["id"])
        ok, detail = self.handle(command)
        logger.info("command %s %s: %s", command["kind"], "done" if ok else "failed", detail[:200])
        self._retrying(lambda: self.client.command_result(command["id"], ok, detail))

    # --- loops -------------------------------------------------------------------------------------

    def _guard(self, loop: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                loop()
            except TokenRefused as error:
                self.fatal = f"the portal refused this device's token: {error}"
                self.stopping.set()

        return run

    def heartbeat_loop(self) -> None:
        while not self.stopping.is_set():
            reply = self._retrying(self._beat)
            if reply:
                self.state, self.heartbeat_s = reply["state"], reply["next_heartbeat_s"]
                for command in reply["commands"]:
                    threading.Thread(
                        target=self._guard(lambda c=command: self.run_command(c)), daemon=True
                    ).start()
            self.stopping.wait(self.heartbeat_s)

    def _beat(self) -> dict[str, Any]:
        samples, ray = [s.as_dict() for s in self.sample()], self.ray_status()
        if self.mesh is None:
            return self.client.heartbeat(samples, ray)
        return self.client.heartbeat(samples, ray, self.mesh.status())

    def command_loop(self) -> None:
        while not self.stopping.is_set():
            for command in self._retrying(lambda: self.client.poll_commands(LONG_POLL_S)) or []:
                self.run_command(command)

    def run(self) -> None:
        """Register, verify when asked, then heartbeat and take commands until stopped."""
        try:
            verify = self.register()
            if self.isolation and not self.stopping.is_set():
                self.isolation.wipe_leftovers()  # no node runs yet: whatever a rental left is removed
            if not self.stopping.is_set():
                self.join_mesh()
            if verify and not self.stopping.is_set():
                self._retrying(self.verify)
            threads = [
                threading.Thread(target=self._guard(loop), daemon=True, name=loop.__name__)
                for loop in (self.heartbeat_loop, self.command_loop)
            ]
            for thread in threads:
                thread.start()
            self.stopping.wait()
        except TokenRefused as error:
            self.fatal = f"the portal refused this device's token: {error}"
        finally:
            try:
                self.stop_ray()
            except ray_node.RayNodeError as error:  # a wipe that left something: said, and the rest stops
                logger.error("stopping the Ray node: %s", error)
            if self.mesh:
                self.mesh.stop()

    def stop(self) -> None:
        self.stopping.set()
