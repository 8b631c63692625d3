"""Rentals in containers across machines (issue 19 on issue 18's overlay), on the small internet of
``tests/netns.py``: two providers behind home NATs run `gpu-pool worker --isolation container`, so each
Ray node of the customer's cluster runs in a Podman container that joins the device's rentals' namespace,
where Nebula's overlay interface was moved (``gpu_pool/rental_netns.py``), with its way out to the internet
(``gpu_pool/rental_egress.py``, ``--rental-egress internet``, the default). Nothing is published on the
provider's machine.

One journey: the cluster runs across the two NATs and a job moves a 4 MB object from one node's container
to the other's over the overlay; a hostile job on every node, as user 1000, reaches a web server on the
internet (and the portal's public address, as anyone on the internet does) but no service of its
provider's machine (on its loopback, its home address or the veth's host end), nor its router's LAN side,
and writes only its scratch; after terminate no container or volume of either device is left and the
rentals' namespace holds its loopback, the overlay interface and the veth out, with the device's rules
there once. The namespace and its way out live as long as the agent is on the overlay (the TUN lives
there); an agent stopped takes them with it: namespace, veth and rules gone.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator

import pytest

from gpu_pool import rental_egress, rental_netns
from gpu_pool.isolation import LABEL_DEVICE
from portal.infra.db import session_scope
from portal.models import DeviceState, Role
from portal.services.money import ledger
from tests.conftest import require_program, wait_until
from tests.containers import NOTHING, of_label
from tests.factories import access_token_for, make_user
from tests.mesh_world import PROVIDERS, World, mesh_world
from tests.netns import NATTED, PORTAL_ADDRESS
from tests.test_mesh_cluster import UP_S, run_job

pytestmark = pytest.mark.slow

PROVIDER_SERVICE_PORT = 7070  # a provider's own service, on every address of its machine
ROUTER_SERVICE_PORT = 7071  # a service of the provider's home router, on its LAN side
WEB = ("203.0.113.80", 8080)  # a server on the internet (the public segment), neither portal nor lighthouse
# test_mesh_cluster's job without numpy (the test image has Ray and its own dependencies only).
_JOB = """
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On
ray.init()
first, second = (n["NodeID"] for n in ray.nodes() if n["Alive"])
make = ray.remote(num_gpus=1)(lambda: b"\\x01" * 4_000_000)
@ray.remote(num_gpus=1)
def read(data):
    return ray.get_runtime_context().get_node_id(), sum(data)
made = make.options(scheduling_strategy=On(first, soft=False)).remote()
where, total = ray.get(read.options(scheduling_strategy=On(second, soft=False)).remote(made))
print("gpus", int(ray.cluster_resources()["GPU"]), "moved", total, "from", first, "to", where)
"""
# Run on every node of the cluster, as the customer's code: what it can reach and write.
_HOSTILE = """
import json, os, socket, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On
ray.init()
TARGETS = json.loads(%r)
@ray.remote(num_gpus=1)
def attack():
    reached = []
    for host, port in TARGETS:
        try:
            socket.create_connection((host, port), timeout=2).close()
            reached.append(f"{host}:{port}")
        except OSError:
            pass
    written = []
    for path in ("/etc/owned", "/usr/owned", "/scratch/mine"):
        try:
            open(path, "w").write("x")
            written.append(path)
        except OSError:
            pass
    return {"uid": os.getuid(), "reached": reached, "written": written}
nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
found = [ray.get(attack.options(scheduling_strategy=On(n, soft=False)).remote()) for n in nodes]
print("ATTACK", json.dumps(found))
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, podman: str, worker_image: str) -> Iterator[World]:
    require_program("nebula", "nebula")
    with mesh_world(tmp_path_factory.mktemp("isolation-mesh")) as world:
        world.env["WORKER_IMAGE"] = worker_image
        try:
            yield world
        finally:  # an agent killed at teardown mid-wipe leaves its rental: removed here
            for device in world.devices.values():
                for container in of_label(f"{LABEL_DEVICE}={device}")["containers"]:
                    subprocess.run(["podman", "rm", "--force", container], capture_output=True, timeout=60)
                for volume in of_label(f"{LABEL_DEVICE}={device}")["volumes"]:
                    subprocess.run(
                        ["podman", "volume", "rm", "--force", volume], capture_output=True, timeout=60
                    )
                subprocess.run(
                    ["ip", "netns", "delete", rental_netns.name_for(str(device))], capture_output=True
                )


def test_containers_across_nats_run_the_cluster_and_keep_the_providers_machines_out_of_reach(world):
    try:
        journey(world)
    except BaseException:
        print(world.logs())
        raise


def journey(world: World) -> None:
    with session_scope(world.engine) as session:
        customer = make_user(session, Role.CUSTOMER)
        ledger.grant_credits(
            session, user_id=customer.id, amount_micro=100_000_000, reason="test", idempotency_key="iso-mesh"
        )
        token = access_token_for(session, customer)
    world.net["public"].run("ip", "addr", "add", f"{WEB[0]}/24", "dev", "br0")
    world.net.listen_tcp("public", *WEB)
    # The portal's public HTTP address is on the internet: a rental with internet reaches it as anyone
    # does (its API wants a token, which the rental does not hold), so it is reached, not refused.
    reachable = [WEB, (PORTAL_ADDRESS, 8000)]
    targets = [*reachable, ("127.0.0.1", PROVIDER_SERVICE_PORT)]
    for role in PROVIDERS[:2]:
        router, _, router_lan, home = NATTED[role]
        world.net.listen_tcp(role, "0.0.0.0", PROVIDER_SERVICE_PORT)
        world.net.listen_tcp(router, router_lan, ROUTER_SERVICE_PORT)
        targets += [(home, PROVIDER_SERVICE_PORT), (router_lan, ROUTER_SERVICE_PORT)]
        world.start_agent(
            role, "--isolation", "container", "--engine", "podman", "--image", world.env["WORKER_IMAGE"]
        )
    # The targets are reachable from the providers' machines themselves: only the containers are shut out.
    assert world.net["provider-a"].connects("127.0.0.1", PROVIDER_SERVICE_PORT)
    assert world.net["provider-a"].connects(NATTED["provider-a"][2], ROUTER_SERVICE_PORT)
    assert world.net["provider-a"].connects(NATTED["provider-b"][3], PROVIDER_SERVICE_PORT) is False  # NATs
    wait_until(
        lambda: all(world.device(role).state == DeviceState.READY for role in PROVIDERS[:2]),
        timeout_s=UP_S,
        what="both providers proven and on the market",
    )
    assert {world.device(role).isolation for role in PROVIDERS[:2]} == {"container"}
    cluster_id = world.deploy(token, "boxed")
    path = f"/api/v1/clusters/{cluster_id}"
    for role in PROVIDERS[:2]:
        device = world.device(role)
        containers = of_label(f"{LABEL_DEVICE}={device.id}")["containers"]
        assert len(containers) == 1, containers
        # The container's network is the rentals' namespace, where the overlay address lives.
        inspected = json.loads(_podman("inspect", containers[0]))[0]
        namespace = rental_netns.name_for(str(device.id))
        assert inspected["HostConfig"]["NetworkMode"] == f"ns:/run/netns/{namespace}", inspected["HostConfig"]
        assert device.overlay_ip in world.net[role].run("ip", "-n", namespace, "-4", "addr").stdout
        assert not inspected["HostConfig"].get("PortBindings")  # nothing published on the machine
        # Its way out: the host's end of the veth, itself refused like every address of the host.
        routes = world.net[role].run("ip", "-n", namespace, "-4", "route").stdout
        targets.append((routes.split("default via ", 1)[1].split()[0], PROVIDER_SERVICE_PORT))

    logs = run_job(world, cluster_id, token, _JOB)
    assert "gpus 2 moved 4000000 from" in logs, logs

    logs = run_job(world, cluster_id, token, _HOSTILE % json.dumps(targets))
    attacks = json.loads(logs.split("ATTACK ", 1)[1].splitlines()[0])
    assert [attack["uid"] for attack in attacks] == [1000, 1000], attacks
    assert [attack["reached"] for attack in attacks] == [[f"{h}:{p}" for h, p in reachable]] * 2, attacks
    assert [attack["written"] for attack in attacks] == [["/scratch/mine"]] * 2, attacks

    assert world.call("DELETE", path, token)[0] in (200, 202)
    devices = [world.device(role) for role in PROVIDERS[:2]]
    wait_until(
        lambda: all(of_label(f"{LABEL_DEVICE}={device.id}") == NOTHING for device in devices),
        timeout_s=120,
        what="both rentals wiped",
    )
    for role, device in zip(PROVIDERS[:2], devices, strict=True):
        namespace, tun = rental_netns.name_for(str(device.id)), f"gp{str(device.id).replace('-', '')[:12]}"

        def links(role: str = role, namespace: str = namespace) -> list[str]:
            listed = world.net[role].run("ip", "-n", namespace, "-o", "link").stdout
            return sorted(line.split(":")[1].strip().split("@")[0] for line in listed.splitlines())

        # Leaving the cluster restarts Nebula (its group changes): the new interface is moved in again, and
        # the way out made again, its rules still there once.
        wait_until(
            links,
            lambda found, tun=tun: found == sorted(["lo", tun, rental_egress.INSIDE]),
            timeout_s=60,
            what=f"only lo, {tun} and the way out in {namespace}",
        )
        assert _rules(world, role).count(f"-j {namespace}-") == 4

    # An agent stopped takes its rentals' namespace with it, and the way out: veth and rules.
    role, device = PROVIDERS[0], devices[0]
    namespace = rental_netns.name_for(str(device.id))
    agent = world.processes[f"agent-{role}"]
    agent.signal(signal.SIGTERM)
    wait_until(lambda: not agent.alive(), timeout_s=60, what=f"the agent of {role} stopped")
    assert namespace not in world.net[role].run("ip", "netns", "list").stdout
    assert rental_egress.host_link_for(namespace) not in world.net[role].run("ip", "-o", "link").stdout
    assert namespace not in _rules(world, role)


def _rules(world: World, role: str) -> str:
    """The iptables rules of a provider's machine, both tables."""
    run = world.net[role].run
    return "".join(run("iptables", "-w", "5", "-t", table, "-S").stdout for table in ("filter", "nat"))


def _podman(*args: str) -> str:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=60, check=True).stdout
