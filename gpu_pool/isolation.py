"""Customer code in a container: every Ray node of a rental runs in an OCI container of its own, made by the
machine's Podman or Docker, and the rental is wiped when the node stops.

Each container is unprivileged (user 1000, every capability dropped, no new privileges), has a read-only
root filesystem and one writable scratch volume (Ray's temp dir and the jobs' files, ``/scratch``), limits
on memory, CPUs and processes, the rented GPUs only (CDI for Podman, ``--gpus`` for Docker; simulated GPUs:
none) and nothing of the host mounted. Its label names the device and the cluster, so that an agent
restarted after a crash finds and removes what its rentals left.

Network: never the host's. Each cluster has a bridge network of its own on this machine
(``gpu-pool-<cluster>``, made on demand, isolated from the other clusters' bridges). Ray binds some of its
servers (the client server, the dashboard agent) to its node address, so that address must be the
container's own: Ray runs at the container's address on the bridge, where the cluster's other nodes on this
machine reach it directly (a worker joins its head's container address). A head's three ports that the
portal and the customer call (GCS, client server, dashboard) are published on the node's cluster address
only (loopback in development, the overlay address with the mesh), and that is the address the agent
reports; nothing else is published. From inside, the host's loopback services (the portal's Redis on
127.0.0.1, …) are out of reach: the container's 127.0.0.1 is its own. The host's services listening on
every address are reachable at the bridge's gateway as from any machine on the network (firewall them).

On the overlay (``namespace`` set once the agent joined it) there is no bridge: the container joins the
device's rentals' namespace, which holds the overlay interface (``gpu_pool.rental_netns``), Ray binds the
overlay address itself and nothing is published; the cluster's nodes on other machines reach it there.
With the namespace's way out to the internet (``gpu_pool.rental_egress``) the container is given public
name servers: the host's own are often its router or a loopback resolver, which the namespace cannot reach.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path

from gpu_pool import ray_node, rental_egress
from gpu_pool.ray_node import NodeSpec, RayNode, RayNodeError
from gpu_pool.rental_netns import RentalNamespace

logger = logging.getLogger("gpu_pool.isolation")

ENGINES = ("podman", "docker")
LABEL_DEVICE = "org.gpu-portal.device"
LABEL_CLUSTER = "org.gpu-portal.cluster"
LABEL_ROLE = "org.gpu-portal.role"
LABEL_RAY = "org.gpu-portal.ray-version"
SCRATCH = "/scratch"
AUTOSCALER_MOUNT = Path("/run/gpu-pool")  # an autoscaled head's way to its agent (ray_node.serve_autoscaler)
USER = "1000:1000"
# Inside its own network namespace a node's ports never collide with another's: Ray's own defaults (the
# GCS listens on the port published for it, so that its address has one port inside and out).
CLIENT_PORT, DASHBOARD_PORT = 10001, 8265
STOP_GRACE_S = 5
GPU_RELEASE_S = 10  # how long the driver gets to free a wiped rental's GPU memory
ENGINE_TIMEOUT_S = 60


class IsolationError(RayNodeError):
    """The container could not be made, checked or wiped; the message says what to fix."""


@dataclass(frozen=True)
class Limits:
    """What one node's container may use: bytes of memory (swap included), CPUs, processes."""

    memory_bytes: int = 8 * 2**30
    cpus: float = 2.0
    pids: int = 4096


@dataclass
class Wipe:
    """What the last wipe removed and how long it took; ``leftovers`` names anything that survived it."""

    container: str
    seconds: float
    leftovers: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.leftovers


def find_engine(preferred: str | None = None) -> str:
    """The container engine to use: ``preferred``, else the first of Podman and Docker that answers."""
    candidates = [preferred] if preferred else list(ENGINES)
    for name in candidates:
        path = shutil.which(name)
        if path is None:
            continue
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            if subprocess.run([path, "info"], capture_output=True, timeout=30).returncode == 0:
                return name
    wanted = preferred or "podman or docker"
    raise IsolationError(
        f"no container engine answers ({wanted}): install Podman (apt-get install podman runc) or start "
        "Docker, or run with --isolation none for development with simulated GPUs"
    )


def portal_ray_version() -> str:
    """The Ray the portal's clusters run: the agent's own, pinned to the portal's release."""
    return metadata.version("ray")


def default_image() -> str:
    """The worker image's tag as gpu_pool/Containerfile's build instructions make it."""
    return f"gpu-pool-worker:ray-{portal_ray_version()}"


def diagnose(engine: str | None, image: str | None, gpu_indices: list[int]) -> list[tuple[bool, str, str]]:
    """``gpu-pool doctor``'s checks for containers: (ok, what was found, how to fix it)."""
    try:
        name = find_engine(engine)
    except IsolationError as error:
        return [(False, f"Container engine: {error}", "apt-get install podman runc, or Docker")]
    checks = [(True, f"Container engine: {name}", "")]
    isolation = ContainerIsolation(name, image or default_image())
    try:
        version = isolation.check_image()
    except IsolationError as error:
        fix = f"podman build -f gpu_pool/Containerfile -t {isolation.image} . (from the portal's repository)"
        return [*checks, (False, f"Worker image: {error}", fix)]
    checks.append((True, f"Worker image {isolation.image}: Ray {version}", ""))
    started = time.monotonic()
    done = isolation.probe(["python", "-c", "import ray"], [])
    checks.append(
        (
            done.returncode == 0,
            f"A rental's container (unprivileged, read-only, limited) starts and imports Ray: "
            f"{'in %.1f s' % (time.monotonic() - started) if done.returncode == 0 else done.stderr[-300:]}",
            "check the engine's runtime (runc) and cgroup settings",
        )
    )
    if not gpu_indices:
        return [*checks, (True, "GPUs in a container: no NVIDIA GPU here, not checked", "")]
    done = isolation.probe(["nvidia-smi", "-L"], gpu_indices)
    seen = done.stdout.count("GPU ")
    checks.append(
        (
            done.returncode == 0 and seen == len(gpu_indices),
            f"GPUs in a container: {seen} of {len(gpu_indices)} seen",
            "install the NVIDIA Container Toolkit and generate its CDI spec (nvidia-ctk cdi generate)"
            if name == "podman"
            else "install the NVIDIA Container Toolkit and restart Docker",
        )
    )
    return checks


@dataclass
class ContainerNode(RayNode):
    """A Ray node in a container: ``process`` is the engine's attached client (alive while the container
    runs), ``temp_dir`` the agent's own folder for its log."""

    isolation: ContainerIsolation | None = None
    container: str = ""
    volume: str = ""
    network: str = ""
    gpu_indices: list[int] = field(default_factory=list)  # the GPUs it rented, as NVML numbers them
    last_wipe: Wipe | None = None

    def stop(self) -> None:
        """Wipe the rental: container and scratch volume removed, no process of it left (checked).

        Raises IsolationError naming what survived, after removing everything it could."""
        assert self.isolation is not None
        self.close_relay()
        self.last_wipe = self.isolation.wipe(self.container, self.volume, self.network, self.gpu_indices)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        if not self.last_wipe.clean:
            raise IsolationError(f"the wipe left {', '.join(self.last_wipe.leftovers)}")

    def _processes(self) -> list:  # the container's processes are the engine's to end
        return []


@dataclass
class ContainerIsolation:
    """Starts Ray nodes in containers and wipes them; one per agent."""

    engine: str
    image: str
    limits: Limits = field(default_factory=Limits)
    device_id: str | None = None  # known once the agent registered
    # On the overlay: the namespace holding this device's overlay interface, which its containers join.
    namespace: RentalNamespace | None = None
    # NVML's (GPU index, pid) of the processes holding these GPUs (hardware.NvmlGpus.compute_processes);
    # None for simulated GPUs.
    gpu_processes: Callable[[list[int]], list[tuple[int, int]]] | None = None
    _checked_image: str | None = field(default=None, repr=False)

    def describe(self) -> dict[str, str]:
        """What the agent tells the portal at registration (the device page shows it)."""
        return {"isolation": "container", "container_engine": self.engine, "worker_image": self.image[:255]}

    # --- the engine ---------------------------------------------------------------------------------

    def _run(self, *args: str, check: bool = True, timeout: float = ENGINE_TIMEOUT_S) -> str:
        try:
            done = subprocess.run(
                [self.engine, *args], capture_output=True, text=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise IsolationError(f"{self.engine} {args[0]}: {error}") from None
        if check and done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise IsolationError(f"{self.engine} {' '.join(args[:2])} failed: {detail[0]}")
        return done.stdout.strip()

    def check_image(self) -> str:
        """The image's Ray version, which must be the portal's; the image must be there (no pulls)."""
        image_id = self._run("image", "inspect", "--format", "{{.Id}}", self.image, check=False)
        if not image_id:
            raise IsolationError(
                f"the worker image {self.image} is not on this machine: build it from gpu_pool/Containerfile "
                "(or gpu_pool/image/build-test-image.sh for development)"
            )
        labels = json.loads(self._run("image", "inspect", "--format", "{{json .Config.Labels}}", self.image))
        found, wanted = (labels or {}).get(LABEL_RAY), portal_ray_version()
        if found != wanted:
            raise IsolationError(
                f"the worker image {self.image} has Ray {found or 'of unknown version'} but the portal runs "
                f"Ray {wanted}: rebuild it from gpu_pool/Containerfile with RAY_VERSION={wanted}"
            )
        self._checked_image = image_id
        return found

    def _labels(self, cluster: str, role: str | None = None) -> list[str]:
        labels = [f"{LABEL_DEVICE}={self.device_id or 'unregistered'}", f"{LABEL_CLUSTER}={cluster}"]
        if role:
            labels.append(f"{LABEL_ROLE}={role}")
        return [arg for label in labels for arg in ("--label", label)]

    def security_args(self) -> list[str]:
        """The flags every container of a rental gets (and the hostile tests check)."""
        return [
            f"--user={USER}",
            "--cap-drop=ALL",
            "--security-opt=no-new-privileges",
            "--read-only",
            f"--memory={self.limits.memory_bytes}",
            f"--memory-swap={self.limits.memory_bytes}",  # no swap beyond the memory limit
            f"--cpus={self.limits.cpus}",
            f"--pids-limit={self.limits.pids}",
            # Ray's object store is shared memory: room for it, counted in the memory limit.
            f"--shm-size={ray_node.OBJECT_STORE_BYTES + 64 * 2**20}",
            # Podman mounts a tmpfs on /tmp under --read-only, Docker does not: say it for both (in memory,
            # counted in the limit, gone with the container).
            "--tmpfs=/tmp:rw,nosuid,nodev,size=256m",
        ]

    @staticmethod
    def gpu_args(engine: str, gpu_indices: list[int]) -> list[str]:
        """The rented GPUs only, by the engine's own way; none for simulated GPUs."""
        if not gpu_indices:
            return []
        if engine == "podman":
            return [f"--device=nvidia.com/gpu={index}" for index in gpu_indices]  # CDI
        return ["--gpus", f'"device={",".join(str(i) for i in gpu_indices)}"']

    def network_for(self, cluster: str) -> str:
        """The cluster's bridge on this machine, made on first use (another agent may make it first)."""
        name = network_name(cluster)
        if not self._exists("network", name):
            self._run(
                "network",
                "create",
                *self._labels(cluster),
                *self.network_args(self.engine),
                name,
                check=False,
            )
            if not self._exists("network", name):
                raise IsolationError(f"could not make the container network {name}")
        return name

    @staticmethod
    def dns_args(egress: bool) -> list[str]:
        """Name servers the rental's namespace reaches: public ones, with its way out; none without."""
        return [f"--dns={server}" for server in rental_egress.host_resolvers()] if egress else []

    @staticmethod
    def network_args(engine: str) -> list[str]:
        """A cluster's bridge reaches no other bridge of the machine (another cluster's nodes): Podman's
        ``isolate`` option; Docker's bridges are isolated from each other already."""
        return ["--opt", "isolate=true"] if engine == "podman" else []

    def _exists(self, kind: str, name: str) -> bool:
        """Whether the engine has this container, volume or network (``inspect`` answers for all three)."""
        command = (
            [self.engine, kind, "inspect", name] if kind != "container" else [self.engine, "inspect", name]
        )
        return subprocess.run(command, capture_output=True, timeout=ENGINE_TIMEOUT_S).returncode == 0

    def probe(self, command: list[str], gpu_indices: list[int]) -> subprocess.CompletedProcess:
        """Run ``command`` once in a container made as a rental's is (no network, no volume); remove it."""
        args = [self.engine, "run", "--rm", "--network=none", *self.security_args()]
        args += [*self.gpu_args(self.engine, gpu_indices), self.image, *command]
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=ENGINE_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as error:
            return subprocess.CompletedProcess(args, 1, "", str(error))

    # --- nodes --------------------------------------------------------------------------------------

    def start(
        self,
        spec: NodeSpec,
        cluster: str | None,
        gpu_indices: list[int] | None = None,
        workdir: Path | None = None,
    ) -> ContainerNode:
        """Start the node in a container of its own and wait until Ray runs; raises IsolationError (with
        the node's last log lines) after wiping what was made if not."""
        if self._checked_image is None:
            self.check_image()
        cluster = re.sub(r"[^a-zA-Z0-9_.-]", "", cluster or "none") or "none"
        # Short and unique: the cluster's and the device's first characters, and the moment.
        name = f"gpu-pool-{cluster[:8]}-{(self.device_id or 'x')[:8]}-{int(time.time() * 1000) % 10**8}"
        started = time.monotonic()
        self._run("volume", "create", *self._labels(cluster), name)
        temp_dir = Path(tempfile.mkdtemp(prefix="gp-", dir=workdir or "/tmp"))
        log_path = temp_dir / "agent-ray.log"
        if self.namespace is not None:
            # The overlay's namespace: Ray binds the overlay address itself, nothing is published.
            network, ports, published = "", self._overlay_ports(spec), []
            network_arg, naming = f"ns:{self.namespace.path}", self.dns_args(self.namespace.egress)
            # The engine puts no line for the container's own name in /etc/hosts here: Ray's lookups of it
            # would go to the name servers (and wait on them); it is the overlay address.
            naming += [f"--hostname={name}", f"--add-host={name}:{spec.node_ip}"]
        else:
            naming = []  # the engine's own resolver and hosts file on the bridge
            network = network_arg = self.network_for(cluster)
            ports, published = self._ports(spec)
            if spec.role != "head":
                spec = replace(spec, head_address=self._head_address(cluster, spec.head_address))
        env = {
            **ray_node.RAY_ENV,
            # Drivers of any Python 3.11 may join (the image's patch release is Debian's).
            "RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL": "minor",
            "HOME": SCRATCH,
            **spec.env,
        }
        relay, autoscaling, mounts = None, None, []
        if spec.role == "head" and spec.autoscaling is not None:
            # The autoscaler asks this agent through a socket in a folder mounted read-only; the device's
            # token stays here (ray_node.serve_autoscaler).
            folder = temp_dir / "autoscaler"
            folder.mkdir()
            folder.chmod(0o755)  # the container's user reaches the socket; temp_dir keeps the host's out
            relay, autoscaling = ray_node.serve_autoscaler(spec, folder, seen_as=AUTOSCALER_MOUNT)
            mounts = [f"--volume={folder}:{AUTOSCALER_MOUNT}:ro"]
            env["PYTHONPATH"] = str(AUTOSCALER_MOUNT)  # the node provider's module
        args = [
            "run",
            f"--name={name}",
            *self._labels(cluster, spec.role),
            f"--network={network_arg}",
            *published,
            *naming,
            *self.security_args(),
            *self.gpu_args(self.engine, gpu_indices or []),
            f"--volume={name}:{SCRATCH}",
            *mounts,
            f"--workdir={SCRATCH}",
            *[f"--env={key}={value}" for key, value in env.items()],
            self.image,
            *self._ray_args(spec, ports["gcs"], autoscaling),
        ]
        try:
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    [self.engine, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
        except OSError:
            if relay is not None:
                relay.close()
            raise
        node = ContainerNode(
            spec,
            temp_dir,
            ports,
            process,
            log_path,
            relay=relay,
            isolation=self,
            container=name,
            volume=name,
            network=network,
            gpu_indices=list(gpu_indices or []),
        )
        deadline = time.monotonic() + ray_node.START_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise IsolationError(
                        f"the node's container exited with {process.returncode}: {_tail(log_path)}"
                    )
                if "Ray runtime started" in log_path.read_text(errors="replace"):
                    address = self._address(name, network) if network else spec.node_ip
                    node.node_id = self._node_id(name)
                    node.started_at = time.time()
                    logger.info(
                        "node container %s started in %.1f s at %s on %s",
                        name,
                        time.monotonic() - started,
                        address,
                        network,
                    )
                    return node
                time.sleep(0.2)
            raise IsolationError(
                f"the Ray node did not start within {ray_node.START_TIMEOUT_S} s: {_tail(log_path)}"
            )
        except BaseException:
            with contextlib.suppress(IsolationError):
                node.stop()
            raise

    @staticmethod
    def _ports(spec: NodeSpec) -> tuple[dict[str, int], list[str]]:
        """A head's ports on the node's address and the engine's flags that publish them there: the GCS
        (the portal's allocated port, else a free one), the client server and the dashboard, which the
        portal and the customer call. Nothing else is published: the cluster's own traffic stays on its
        bridge. A worker publishes nothing."""
        if spec.role != "head":
            return {"gcs": 0, "client": 0, "dashboard": 0}, []
        host = spec.node_ip
        gcs, client, dashboard = ray_node.free_ports(3, host)
        gcs = getattr(spec, "gcs_port", None) or gcs
        bracketed = f"[{host}]" if ":" in host else host
        published = [f"--publish={bracketed}:{gcs}:{gcs}", f"--publish={bracketed}:{client}:{CLIENT_PORT}"]
        if spec.dashboard:
            published.append(f"--publish={bracketed}:{dashboard}:{DASHBOARD_PORT}")
        return {"gcs": gcs, "client": client, "dashboard": dashboard}, published

    @staticmethod
    def _overlay_ports(spec: NodeSpec) -> dict[str, int]:
        """In the device's own namespace no other node's port is in the way: Ray's defaults, and the GCS
        port the portal allocated for a head."""
        if spec.role != "head":
            return {"gcs": 0, "client": 0, "dashboard": 0}
        return {"gcs": spec.gcs_port or 6379, "client": CLIENT_PORT, "dashboard": DASHBOARD_PORT}

    def _head_address(self, cluster: str, given: str | None) -> str:
        """Where a worker's container reaches its head: the head's container address when the head runs
        on this machine (the node's address may be loopback, the container's own), else as given."""
        if not given:
            raise IsolationError("a worker node needs the head's address")
        _, _, port = given.rpartition(":")
        heads = self._run(
            "ps",
            "--format",
            "{{.Names}}",
            "--filter",
            f"label={LABEL_CLUSTER}={cluster}",
            "--filter",
            f"label={LABEL_ROLE}=head",
            check=False,
        ).split()
        if heads:
            return f"{self._address(heads[0], network_name(cluster))}:{port}"
        return given

    def _ray_args(self, spec: NodeSpec, gcs_port: int, autoscaling: Path | None = None) -> list[str]:
        args = [
            "ray",
            "start",
            "--block",
            "--disable-usage-stats",
            # On a bridge Ray finds the container's own address there; on the overlay it is the device's.
            *([f"--node-ip-address={spec.node_ip}"] if self.namespace is not None else []),
            f"--temp-dir={SCRATCH}/ray",
            f"--num-gpus={spec.num_gpus}",
            f"--resources={json.dumps(spec.resources)}",
            f"--object-store-memory={ray_node.OBJECT_STORE_BYTES}",
        ]
        if spec.num_cpus is not None:
            args.append(f"--num-cpus={spec.num_cpus}")
        if spec.role == "head":
            return [
                *args,
                "--head",
                f"--port={gcs_port}",
                f"--ray-client-server-port={CLIENT_PORT}",
                f"--include-dashboard={'true' if spec.dashboard else 'false'}",
                "--dashboard-host=0.0.0.0",  # every address of the container's own namespace, no more
                f"--dashboard-port={DASHBOARD_PORT}",
                *([f"--autoscaling-config={autoscaling}"] if autoscaling else []),
            ]
        if not spec.head_address:
            raise IsolationError("a worker node needs the head's address")
        return [*args, f"--address={spec.head_address}"]

    def _address(self, container: str, network: str) -> str:
        networks = json.loads(
            self._run("inspect", "--format", "{{json .NetworkSettings.Networks}}", container) or "{}"
        )
        address = (networks.get(network) or {}).get("IPAddress")
        if not address:
            raise IsolationError(f"the container {container} has no address on {network}")
        return address

    def _node_id(self, container: str) -> str | None:
        # Ray names some per-node files after the node id, e.g. session_latest/metrics_export_port_<id>.
        listing = self._run("exec", container, "ls", f"{SCRATCH}/ray/session_latest", check=False)
        for entry in listing.split():
            if entry.startswith("metrics_export_port_"):
                return entry.rsplit("_", 1)[-1]
        return None

    # --- wiping -------------------------------------------------------------------------------------

    def wipe(
        self, container: str, volume: str, network: str | None = None, gpu_indices: Sequence[int] = ()
    ) -> Wipe:
        """Remove the container (SIGTERM, SIGKILL after the grace period) and its scratch volume, then check
        that neither is there, that no process runs in the container's cgroup, and that no process holds
        memory on the GPUs it rented (NVML; the driver frees it as the processes end)."""
        started = time.monotonic()
        full_id = self._run("inspect", "--format", "{{.Id}}", container, check=False)
        self._run(
            "rm", "--force", f"--time={STOP_GRACE_S}", container, check=False, timeout=STOP_GRACE_S + 60
        )
        self._run("volume", "rm", "--force", volume, check=False)
        if network:
            self._run("network", "rm", network, check=False)  # refused while another node of it runs here
        leftovers = []
        if self._exists("container", container):
            leftovers.append(f"container {container}")
        if self._exists("volume", volume):
            leftovers.append(f"volume {volume}")
        leftovers += [f"process {pid}" for pid in processes_of(full_id)] if full_id else []
        leftovers += [f"GPU {index} held by process {pid}" for index, pid in self._gpus_held(gpu_indices)]
        wipe = Wipe(container, time.monotonic() - started, leftovers)
        logger.info(
            "wiped %s in %.2f s%s", container, wipe.seconds, "" if wipe.clean else f": left {leftovers}"
        )
        return wipe

    def _gpus_held(self, gpu_indices: Sequence[int]) -> list[tuple[int, int]]:
        """What still holds the rented GPUs once the driver had GPU_RELEASE_S to free them."""
        if self.gpu_processes is None or not gpu_indices:
            return []
        deadline = time.monotonic() + GPU_RELEASE_S
        while held := self.gpu_processes(list(gpu_indices)):
            if time.monotonic() >= deadline:
                return held
            time.sleep(0.5)
        return []

    def leftovers(self) -> list[str]:
        """Containers this device's rentals left (all of them, when the agent runs no node)."""
        if not self.device_id:
            return []
        return self._run(
            "ps",
            "--all",
            "--format",
            "{{.Names}}",
            "--filter",
            f"label={LABEL_DEVICE}={self.device_id}",
            check=False,
        ).split()

    def wipe_leftovers(self) -> list[Wipe]:
        """At the agent's start: remove every container and volume of this device's ended rentals."""
        wipes = []
        for container in self.leftovers():
            network = self._run(
                "inspect",
                "--format",
                "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
                container,
                check=False,
            ).split()
            wipes.append(self.wipe(container, container, network[0] if network else None))
        for volume in self._run(
            "volume", "ls", "--quiet", "--filter", f"label={LABEL_DEVICE}={self.device_id}", check=False
        ).split():
            self._run("volume", "rm", "--force", volume, check=False)
        if wipes:
            logger.info(
                "removed %d container(s) of ended rentals: %s", len(wipes), [w.container for w in wipes]
            )
        return wipes


def network_name(cluster: str) -> str:
    return f"gpu-pool-{cluster}"[:60]


def processes_of(container_id: str) -> list[int]:
    """PIDs on this machine whose cgroup names the container (its processes, wherever the engine put it)."""
    found = []
    for cgroup in Path("/proc").glob("[0-9]*/cgroup"):
        with contextlib.suppress(OSError):
            if container_id in cgroup.read_text():
                found.append(int(cgroup.parent.name))
    return found


def _tail(path: Path, lines: int = 12) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
