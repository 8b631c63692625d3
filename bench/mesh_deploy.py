"""Deploy to running across two home NATs, on the overlay: ``python -m bench.mesh_deploy``.

The product on the small internet of namespaces (``tests/mesh_world.py``: the portal and its overlay node,
a lighthouse, providers behind home NATs; real Nebula, real Ray, simulated GPUs). Figures (seconds):

- sequential floor: a head then a worker joining it, started by hand with ``gpu_pool.ray_node`` in the two
  providers' namespaces on overlay addresses, over Nebula run with the agents' own config
  (``gpu_pool.mesh.config``) and a certificate from the portal's CA, its tunnel up before the clock starts;
- parallel floor: both at once, the head on a GCS port given up front;
- portal: a 2-GPU deploy asked from the customer's namespace, from the cluster's creation to ``running``
  by the portal's own clock (the cluster's events), which includes what only the overlay costs: each
  device's certificate renewed with the cluster's group, its Nebula restarted and its tunnels made anew.

Against the same run's floors and with the deploy's steps; the loopback figure is ``bench.deploy``'s, in
the same ``make bench``. Target (issue 18): at most 0.7x the sequential floor. Needs root, ``ip``,
``iptables``, ``nebula`` and /dev/net/tun.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from sqlmodel import Session

from bench.deploy import GCS_PORTS, GPU_MODEL, RUNS, print_ratios, print_steps, seconds_line, wait_for
from bench.deploy import milestones as deploy_milestones
from gpu_pool import mesh as agent_mesh
from portal.models import Cluster, ClusterState, DeviceState, Role
from portal.services.mesh import ca, keys

PROVIDERS = ("provider-a", "provider-b")  # two home NATs
# The floor's overlay addresses: out of the portal's way (it allocates devices from the bottom, customers
# from the last quarter).
FLOOR_IPS = {"provider-a": "100.100.0.1", "provider-b": "100.100.0.2"}
FLOOR_GROUP = f"cluster-{uuid.UUID(int=0)}"
UP_S = 240
DEPLOY_TIMEOUT_S = 240

# Run in a provider's namespace: ready once imported; on "go", start the node, print when (wall clock);
# stop it when stdin closes.
_FLOOR_NODE = """
import json, shutil, sys, time, uuid
from gpu_pool import ray_node
role, ip, head, port, model = sys.argv[1:6]
spec = ray_node.NodeSpec(
    role=role, num_gpus=1, resources={f"device_{uuid.uuid4()}": 1.0, f"gpu_model_{model}": 1.0}, node_ip=ip,
    head_address=head or None, gcs_port=int(port) if port else None, dashboard=role == "head",
)
print("ready", flush=True)
sys.stdin.readline()
go = time.time()
node = ray_node.start(spec)
print(json.dumps({"go": go, "up": time.time(), "address": node.address}), flush=True)
sys.stdin.read()
node.stop()
shutil.rmtree(node.temp_dir, ignore_errors=True)
"""


def missing_prerequisites() -> list[str]:
    missing = [
        program for program in ("ip", "iptables", "nebula", "nebula-cert") if shutil.which(program) is None
    ]
    if os.geteuid() != 0:
        missing.append("root")
    if not Path("/dev/net/tun").exists():
        missing.append("/dev/net/tun")
    return missing


# --- the floor: the two Ray nodes by hand on the overlay ---------------------------------------------


def start_floor_overlay(world: Any) -> None:
    """Nebula in each provider's namespace as an agent runs it, with a certificate carrying one group."""
    settings = world.parts.settings
    authority = ca.authority(settings)
    for role in PROVIDERS:
        home = world.net.workdir / f"floor-{role}"
        key, public_key = agent_mesh.keygen(home)
        ip = FLOOR_IPS[role]
        signed = ca.sign(
            authority,
            public_key_pem=keys.public_key_pem(keys.parse_public_key(public_key)),
            name=f"floor-{role}",
            ip_cidr=f"{ip}/{settings.overlay_network.prefixlen}",
            groups=[FLOOR_GROUP],
            hours=1,
        )
        certificate = agent_mesh.Certificate.from_answer(
            {
                "certificate": signed,
                "ca": authority.cert_pem,
                "lighthouses": [lighthouse.model_dump(mode="json") for lighthouse in settings.lighthouses],
                "overlay_ip": ip,
                "overlay_cidr": str(settings.overlay_network),
                "portal_overlay_ip": str(settings.portal_overlay_ip),
                "groups": [FLOOR_GROUP],
                "expires_at": "2100-01-01T00:00:00+00:00",
            }
        )
        (home / "ca.crt").write_text(authority.cert_pem)
        (home / "host.crt").write_text(signed)
        config = agent_mesh.config(
            certificate,
            ca_path=home / "ca.crt",
            cert_path=home / "host.crt",
            key_path=key,
            tun_device="floor0",
        )
        (home / "nebula.yml").write_text(yaml.safe_dump(config))
        world.start(role, ["nebula", "-config", str(home / "nebula.yml")], f"floor-nebula-{role}")
    probe = "import socket,sys\ntry: socket.create_connection((sys.argv[1], 9), timeout=1)\n"
    probe += "except ConnectionRefusedError: pass\nexcept OSError: sys.exit(1)"
    tunnel_up = wait_for(
        lambda: (
            world.net["provider-a"]
            .run(sys.executable, "-c", probe, FLOOR_IPS["provider-b"], check=False)
            .returncode
            == 0
        ),
        60,
    )
    if not tunnel_up:
        raise RuntimeError("the floor's tunnel between the two providers did not come up within 60 s")


def stop_floor_overlay(world: Any) -> None:
    for role in PROVIDERS:
        world.processes.pop(f"floor-nebula-{role}").stop()


class FloorNode:
    """A Ray node started by hand in a provider's namespace, on its overlay address."""

    def __init__(self, world: Any, role: str, head: str = "", port: int | None = None) -> None:
        command = [sys.executable, "-c", _FLOOR_NODE, "head" if not head else "worker", FLOOR_IPS[role], head]
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", world.net[role].name, *command, str(port or ""), GPU_MODEL],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **world.env},
        )
        if self.read() != "ready":
            raise RuntimeError(f"the floor's Ray node in {role} did not load")

    def read(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def started(self) -> dict[str, Any]:
        line = self.read()
        if not line:
            raise RuntimeError("a floor Ray node did not start (ray_node.start failed)")
        return json.loads(line)

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def floor_once(world: Any, parallel: bool) -> float:
    port = GCS_PORTS.start + uuid.uuid4().int % len(GCS_PORTS)
    head = FloorNode(world, "provider-a", port=port)
    nodes = [head]
    try:
        if parallel:
            nodes.append(FloorNode(world, "provider-b", head=f"{FLOOR_IPS['provider-a']}:{port}"))
            for node in nodes:
                node.go()
            times = [node.started() for node in nodes]
        else:
            head.go()
            first = head.started()
            nodes.append(FloorNode(world, "provider-b", head=first["address"]))
            nodes[1].go()
            times = [first, nodes[1].started()]
        return max(t["up"] for t in times) - min(t["go"] for t in times)
    finally:
        for node in reversed(nodes):
            node.stop()


def measure_floor(world: Any, runs: int, parallel: bool) -> list[float]:
    samples = []
    for _ in range(runs):
        try:
            samples.append(floor_once(world, parallel))
        except RuntimeError as error:
            print(f"  floor run failed: {error}")
    return samples


# --- the portal ---------------------------------------------------------------------------------------


def devices_ready(world: Any) -> bool:
    return all(world.device(role).state == DeviceState.READY for role in PROVIDERS)


def deploy_once(world: Any, token: str) -> tuple[float | None, dict[str, float]]:
    status, answer = world.call(
        "POST",
        "/api/v1/clusters",
        token,
        {"name": "bench", "gpu_model": GPU_MODEL, "gpu_count": 2, "duration_hours": 1},
    )
    if status != 202:
        print(f"  deploy refused: {status} {str(answer)[:300]}")
        return None, {}
    cluster_id = uuid.UUID(answer["id"])

    def state() -> ClusterState:
        with Session(world.engine) as session:
            return session.get_one(Cluster, cluster_id).state

    try:
        wait_for(lambda: state() not in (ClusterState.PENDING, ClusterState.PROVISIONING), DEPLOY_TIMEOUT_S)
        cluster = world.call("GET", f"/api/v1/clusters/{cluster_id}", token)[1]
        created = datetime.fromisoformat(cluster["created_at"])
        steps = deploy_milestones(created, cluster.get("events", []))
        if cluster["state"] != "running":
            print(f"  cluster {cluster_id} is {cluster['state']}:")
            for event in cluster.get("events", []):
                print(f"    {event['at']}  {event['kind']:<14} {event['message'][:160]}")
            return None, steps
        return steps["running"], steps
    finally:
        world.call("DELETE", f"/api/v1/clusters/{cluster_id}", token)


def measure_portal(world: Any, runs: int) -> tuple[list[float], list[dict[str, float]]]:
    from portal.infra.db import session_scope
    from portal.services.money import ledger
    from tests.factories import access_token_for, make_user

    with session_scope(world.engine) as session:
        customer = make_user(session, Role.CUSTOMER)
        ledger.grant_credits(
            session, user_id=customer.id, amount_micro=10**9, reason="bench", idempotency_key="bench-mesh"
        )
        token = access_token_for(session, customer)
    for role in PROVIDERS:
        world.start_agent(role)
    if not wait_for(lambda: devices_ready(world), UP_S, every_s=1):
        print(f"  the providers' devices were not ready within {UP_S} s")
        return [], []
    times, steps = [], []
    for _ in range(runs):
        elapsed, found = deploy_once(world, token)
        if elapsed is not None:
            times.append(elapsed)
            steps.append(found)
        if not wait_for(lambda: devices_ready(world), 120, every_s=0.5):
            print("  the devices did not come back to ready within 120 s; stopping here")
            break
    return times, steps


def bench_mesh_deploy(runs: int = RUNS) -> None:
    print(f"Deploy to running on the overlay: 2-device cluster across two home NATs ({runs} runs)")
    missing = missing_prerequisites()
    if missing:
        print(f"  not measured: needs {', '.join(missing)}")
        return
    from tests.mesh_world import mesh_world

    work = Path(tempfile.mkdtemp(prefix="portal-bench-mesh-deploy-"))
    try:
        with mesh_world(work) as world:
            start_floor_overlay(world)
            try:
                floor = measure_floor(world, runs, parallel=False)
                parallel = measure_floor(world, runs, parallel=True)
            finally:
                stop_floor_overlay(world)
            seconds_line("baseline: head then worker by hand (sequential floor)", floor)
            seconds_line("baseline: both at once by hand (parallel floor)", parallel)
            portal, steps = measure_portal(world, runs)
            seconds_line("portal: cluster created to running", portal)
            print_steps(steps)
            print_ratios(portal, floor, parallel)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    started = time.monotonic()
    bench_mesh_deploy()
    print(f"  ({time.monotonic() - started:.0f} s)")
