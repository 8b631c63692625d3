"""A cluster's life after the deploy request: Ray nodes started on the booked devices, failed devices
replaced, ``running`` once every node has joined, and the end (terminated, expired or failed) with the
nodes stopped, the escrow settled and the devices returned.

``advance`` looks at where a cluster is and takes the next steps; it is idempotent, so the actors call it
on every command result and the reconciler calls it periodically: a worker killed mid-way leaves nothing
that the next call does not finish. Each call holds the cluster's row lock (PostgreSQL) or a process lock
(SQLite), so two calls for one cluster never interleave.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import httpx
from sqlalchemy import Engine, exists
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from portal.config import Settings
from portal.infra.db import session_scope
from portal.infra.wakeups import Wakeups
from portal.models import (
    Cluster,
    ClusterEvent,
    ClusterNode,
    ClusterState,
    CommandState,
    Device,
    DeviceCommand,
    DeviceState,
    FaultEvent,
    NodeRole,
    NodeState,
)
from portal.models.base import utcnow
from portal.services import state_machines
from portal.services.display import count
from portal.services.errors import NotFound
from portal.services.mesh import revocations
from portal.services.money import metering
from portal.services.providers import commands, devices, node_addresses
from portal.services.rentals import clusters, head_addresses, placement
from portal.services.rentals.clusters import ACTIVE_NODE_STATES, record

logger = logging.getLogger(__name__)
HEAD_PROBE_TRIES = 10
HEAD_PROBE_PAUSE_S = 0.2
HEAD_PROBE_TIMEOUT_S = 2
MAX_FIELD = {"node_id": 64, "address": 255, "client_address": 255, "dashboard_url": 255}
_sqlite_clusters = threading.Lock()

# How long a joined node whose agent is quiet stays in its cluster while the Ray head still sees it: this
# many heartbeat intervals, and never less than QUIET_NODE_GRACE_MIN_S.
QUIET_NODE_GRACE_HEARTBEATS = 6
QUIET_NODE_GRACE_MIN_S = 30


def quiet_node_grace_s(settings: Settings) -> float:
    return max(settings.heartbeat_interval_s * QUIET_NODE_GRACE_HEARTBEATS, QUIET_NODE_GRACE_MIN_S)


# Asks a Ray head which node ids it sees alive; None when it cannot be reached.
HeadProbe = Callable[[str], set[str] | None]


@functools.cache
def _head_client() -> httpx.Client:
    """One client for every probe: a client of its own per call (httpx.get) loads the CA bundle each time,
    about 23 ms of CPU per new head; made on first use, so processes that never probe do not hold it. No
    proxies from the environment: heads are called directly."""
    return httpx.Client(
        timeout=HEAD_PROBE_TIMEOUT_S,
        trust_env=False,
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=8),
    )


def probe_head(dashboard_url: str) -> set[str] | None:
    """The node ids a Ray head reports alive, from its dashboard's state API."""
    try:
        reply = _head_client().get(f"{dashboard_url}/api/v0/nodes", params={"limit": 1000})
        reply.raise_for_status()
        rows = reply.json()["data"]["result"]["result"]
    except (httpx.HTTPError, KeyError, TypeError, ValueError):
        return None
    return {row["node_id"] for row in rows if row.get("state") == "ALIVE"}


def _node_status(detail: str, *, head: bool, device: Device, settings: Settings) -> dict[str, str] | str:
    """The Ray node an agent reports having started, when it is usable: an id, and for a head its GCS
    address, client address and dashboard URL, each on the device's own registered address (the portal,
    and the cluster's other agents, call them); else why not."""
    try:
        status = json.loads(detail)
    except ValueError:
        return "not JSON"
    if not isinstance(status, dict):
        return "not an object"
    needed = ("node_id", "address", "dashboard_url") if head else ("node_id",)
    for name in (*needed, "client_address"):
        value = status.get(name)
        if value is None and name not in needed:
            continue
        if not isinstance(value, str) or not 0 < len(value) <= MAX_FIELD[name]:
            return f"no usable {name}"
    if not head:
        return {"node_id": status["node_id"]}
    checked = {
        "node_id": status["node_id"],
        "address": node_addresses.checked_hostport(device, status["address"], settings),
        "dashboard_url": node_addresses.checked_url(
            device, status["dashboard_url"], settings, schemes=("http",)
        ),
    }
    if status.get("client_address"):
        checked["client_address"] = node_addresses.checked_url(
            device, status["client_address"], settings, schemes=("ray",)
        )
    for name, value in checked.items():
        if isinstance(value, node_addresses.Refused):
            return f"its {name} is refused: {value.reason}"
    return checked  # type: ignore[return-value]


@contextmanager
def _locked(
    engine: Engine, cluster_id: uuid.UUID, *, wait: bool = True
) -> Iterator[tuple[Session, Cluster | None]]:
    """A transaction holding the cluster's lock; the cluster is None when it does not exist, or when
    ``wait`` is False and someone else holds it (the reconciler then leaves it to them)."""
    sqlite = engine.dialect.name == "sqlite"
    if sqlite and not _sqlite_clusters.acquire(blocking=wait):
        with Session(engine) as idle:
            yield idle, None
        return
    try:
        with session_scope(engine) as session:
            if not wait and not sqlite:
                held = session.exec(
                    select(Cluster.id).where(Cluster.id == cluster_id).with_for_update(skip_locked=True)
                ).first()
                if held is None:
                    yield session, None
                    return
            try:
                cluster = clusters.lock_cluster(session, None, cluster_id)
            except NotFound:
                cluster = None
            yield session, cluster
    finally:
        if sqlite:
            _sqlite_clusters.release()


@contextmanager
def stepping(
    engine: Engine, settings: Settings, wakeups: Wakeups, cluster_id: uuid.UUID, *, wait: bool = True
) -> Iterator[ClusterLifecycle | None]:
    """The cluster's steps under its lock (None as in ``_locked``); the agents of the devices the steps
    sent commands to are woken once the transaction has committed."""
    woken: set[uuid.UUID] = set()
    with _locked(engine, cluster_id, wait=wait) as (session, cluster):
        yield ClusterLifecycle(session, settings, cluster, woken) if cluster is not None else None
    for device_id in woken:
        commands.wake(wakeups, device_id)


def advance(
    engine: Engine,
    settings: Settings,
    wakeups: Wakeups,
    cluster_id: uuid.UUID,
    probe: HeadProbe = probe_head,
    *,
    wait: bool = True,
) -> str | None:
    """Take the cluster's next steps; returns its state afterwards (None when there is no such cluster, or
    it is busy and ``wait`` is False)."""
    with stepping(engine, settings, wakeups, cluster_id, wait=wait) as steps:
        if steps is None:
            return None
        steps.run(probe)
        return steps.cluster.state


class ClusterLifecycle:
    """One cluster's next steps, taken under its lock: provisioning its nodes, healing it while it runs,
    and its end (nodes stopped, escrow settled, devices returned)."""

    def __init__(self, session: Session, settings: Settings, cluster: Cluster, woken: set[uuid.UUID]) -> None:
        self.session, self.settings, self.cluster, self.woken = session, settings, cluster, woken
        # Addresses of heads replaced in this step: workers still waiting there must not find a new head.
        self.retired_addresses: set[str] = set()

    @property
    def nodes(self) -> list[ClusterNode]:
        return clusters.nodes_of(self.session, self.cluster.id)

    def run(self, probe: HeadProbe) -> None:
        cluster = self.cluster
        if cluster.state == ClusterState.PENDING:
            self.move(ClusterState.PROVISIONING, "starting the Ray nodes")
        if cluster.state == ClusterState.PROVISIONING:
            self.provision(probe)
        if cluster.state in (ClusterState.RUNNING, ClusterState.DEGRADED):
            self.heal(probe)
        if cluster.state == ClusterState.TERMINATING:
            self.end(ClusterState.TERMINATED, cluster.state_reason or "terminated")
        # Devices of nodes that ended (a terminated cluster's, a lost node's) go back once stopped.
        self.return_devices()

    def move(self, to_state: str, reason: str) -> None:
        state_machines.move(self.session, "cluster", self.cluster, to_state, reason)

    # --- provisioning ------------------------------------------------------------------------------

    def provision(self, probe: HeadProbe) -> None:
        now = utcnow()
        timeout = timedelta(seconds=self.settings.node_start_timeout_s)
        # Replacements each get their own start timeout; past all of them the deploy has failed.
        deadline = timeout * (self.settings.max_node_replacements + 2)
        if now - self.cluster.created_at > deadline:
            self.end(ClusterState.FAILED, f"the cluster did not come up within {deadline.seconds} s")
            return
        if not self.progress(now, timeout, self.replace):
            return
        self.start_assigned()
        nodes = self.active_nodes()
        if nodes and all(node.state == NodeState.JOINED for node in nodes):
            self.confirm_running(nodes, probe)

    def progress(
        self, now: datetime, timeout: timedelta, on_failure: Callable[[ClusterNode, str], None]
    ) -> bool:
        """Move starting nodes on from their commands' results; False when the cluster ended meanwhile."""
        state = self.cluster.state
        for node in self.active_nodes():
            if node.state == NodeState.STARTING:
                command = self.session.get(DeviceCommand, node.command_id) if node.command_id else None
                if command is not None and command.state == CommandState.SUCCEEDED:
                    self.joined(node, command)
                elif command is None or command.state in (CommandState.FAILED, CommandState.EXPIRED):
                    detail = command.result_detail if command else "no start command"
                    on_failure(node, f"could not start its Ray node: {detail}")
                elif node.started_at and now - node.started_at > timeout:
                    on_failure(node, f"did not start its Ray node within {timeout.seconds} s")
            if self.cluster.state != state:
                return False
        return True

    def start_assigned(self) -> None:
        """Start the head and, once its address is known, every worker at the same time: the portal
        allocates the head's address up front, so workers need not wait for the head to join (they wait
        for its GCS themselves). A worker sent to a head that was replaced since is sent to the new one."""
        head = self.head()
        for node in self.active_nodes():
            if node.role == NodeRole.HEAD:
                if node.state == NodeState.ASSIGNED:
                    self.start_head(node)
                continue
            address = self.cluster.ray_address
            if head is None or head.state not in (NodeState.STARTING, NodeState.JOINED) or not address:
                continue  # no head yet, or one that picks its own port: the workers wait until it joins
            sent = self.sent_head_address(node)
            if node.state == NodeState.ASSIGNED or (sent is not None and sent != address):
                self.start(node, "start_ray_worker", {"head_address": address})

    def start_head(self, node: ClusterNode) -> None:
        payload = {"dashboard": True, **self.autoscaling(node)}
        device = self.session.get(Device, node.device_id)
        assert device is not None
        address = head_addresses.allocate(self.session, self.settings, device, self.retired_addresses)
        if address is not None:
            payload["gcs_port"] = head_addresses.split(address)[1]
        # Known before the head runs: the workers start with it, and the head must report this one.
        self.cluster.ray_address = address
        self.session.add(self.cluster)
        self.start(node, "start_ray_head", payload)

    def sent_head_address(self, node: ClusterNode) -> str | None:
        """The head address the worker's latest start command carried."""
        command = self.session.get(DeviceCommand, node.command_id) if node.command_id else None
        if command is None or command.kind != "start_ray_worker":
            return None
        return command.payload.get("head_address")

    def autoscaling(self, head: ClusterNode) -> dict:
        """What the head of an autoscaled cluster needs to run Ray's autoscaler: the bounds, the idle
        timeout, and the shape of a node (workers are one-GPU devices of the cluster's model)."""
        cluster = self.cluster
        if cluster.min_workers is None or cluster.max_workers is None:
            return {}
        device = self.session.get(Device, head.device_id)
        cpus = float(device.cpu_count or 1) if device else 1.0
        return {
            "autoscaling": {
                "min_workers": cluster.min_workers,
                "max_workers": cluster.max_workers,
                "idle_timeout_s": self.settings.autoscale_idle_timeout_s,
                "head_resources": {"CPU": cpus, "GPU": float(head.gpu_count)},
                "worker_resources": {"CPU": cpus, "GPU": 1.0},
            }
        }

    # --- healing -----------------------------------------------------------------------------------

    def quiet_but_alive(
        self,
        node: ClusterNode,
        device: Device,
        heard: devices.Hearing,
        seen_by_head: Callable[[], set[str] | None],
    ) -> bool:
        """A node whose agent went quiet while the Ray head still sees its Ray node alive is not lost yet: a
        late agent or a slow portal (a few seconds under load) must not end a customer's cluster. For
        ``quiet_node_grace_s`` at most: past that, the agent's silence alone decides. Its time is not
        charged meanwhile (metering counts heartbeats)."""
        if device.last_heartbeat_at is None or not node.ray_node_id:
            return False
        if heard.silence(device.last_heartbeat_at) >= timedelta(seconds=quiet_node_grace_s(self.settings)):
            return False
        return node.ray_node_id in (seen_by_head() or set())

    def heal(self, probe: HeadProbe) -> None:
        """A running cluster that loses a worker goes degraded, books a device that fits, starts a worker on
        it joining the same head, and is running again once the head sees it. Losing the head ends the
        cluster: a Ray cluster does not outlive its head (its GCS holds the cluster's state)."""
        heard = devices.hearing(self.session)
        seen_by_head = functools.cache(
            lambda: probe(self.cluster.dashboard_url) if self.cluster.dashboard_url else None
        )
        for node in self.active_nodes():
            if node.state != NodeState.JOINED:
                continue
            device = self.session.get(Device, node.device_id)
            assert device is not None
            online = devices.is_online(device, self.settings, heard)
            if device.state in (DeviceState.BLOCKED, DeviceState.VERIFYING):
                # "blocked by an admin: <reason>", "taken off the market: its GPUs changed (...)"
                why = f"was {device.state_reason}"
            elif not online and self.quiet_but_alive(node, device, heard, seen_by_head):
                continue
            elif not online:
                why = "stopped heartbeating"
            elif device.ray_state == "failed":
                why = "lost its Ray node"
            else:
                continue
            self.lose(node, device, why)
            if node.role == NodeRole.HEAD:
                self.end(
                    ClusterState.FAILED,
                    f"the Ray head on device {device.name} {why}; a Ray cluster cannot outlive its head",
                )
                return
            if self.cluster.state == ClusterState.RUNNING:
                self.move(ClusterState.DEGRADED, f"device {device.name} {why}")
        timeout = timedelta(seconds=self.settings.node_start_timeout_s)
        if self.cluster.state == ClusterState.RUNNING:
            # Workers the autoscaler asked for start while the cluster runs; one that fails is dropped
            # (its GPUs leave the cluster's size) and the autoscaler asks again if the load still needs it.
            self.progress(utcnow(), timeout, self.drop_added)
            self.start_assigned()
            return
        if self.cluster.state != ClusterState.DEGRADED:
            return
        self.progress(
            utcnow(),
            timeout,
            lambda node, reason: self.lose(node, self.session.get(Device, node.device_id), reason),
        )
        active = self.active_nodes()
        missing = self.cluster.gpu_count - sum(node.gpu_count for node in active)
        if missing > 0 and not self.book_replacement(
            missing, self.cluster.price_per_gpu_hour_micro, head=False
        ):
            if self.events()[-1].kind != "no_replacement":
                record(
                    self.session,
                    self.cluster,
                    "no_replacement",
                    f"No device fits to replace {count(missing, 'GPU')} yet; the cluster runs degraded "
                    "and is charged only for the nodes that run. The portal keeps looking.",
                )
            return
        self.start_assigned()
        active = self.active_nodes()
        if missing <= 0 and active and all(node.state == NodeState.JOINED for node in active):
            self.confirm_running(active, probe)

    def drop_added(self, node: ClusterNode, reason: str) -> None:
        device = self.session.get(Device, node.device_id)
        self.lose(node, device, reason)
        self.cluster.gpu_count -= node.gpu_count
        self.session.add(self.cluster)

    def lose(self, node: ClusterNode, device: Device | None, why: str) -> None:
        """A node that stopped serving: its billing stops, its device is told to stop, a fault is raised."""
        name = device.name if device else str(node.device_id)
        self.release(node, f"device {name} {why}", lost=True)
        self.session.add(
            FaultEvent(
                device_id=node.device_id,
                cluster_id=self.cluster.id,
                kind="node_lost",
                severity="error",
                message=f"Device {name} {why}."[:500],
            )
        )
        record(
            self.session,
            self.cluster,
            "node_lost",
            f"The Ray {node.role} on device {name} {why}.",
            device_id=str(node.device_id),
        )

    def active_nodes(self) -> list[ClusterNode]:
        # The head first: workers need its address.
        active = [node for node in self.nodes if node.state in ACTIVE_NODE_STATES]
        return sorted(active, key=lambda node: node.role != NodeRole.HEAD)

    def head(self) -> ClusterNode | None:
        return next((n for n in self.active_nodes() if n.role == NodeRole.HEAD), None)

    def start(self, node: ClusterNode, kind: str, payload: dict) -> None:
        device = self.session.get(Device, node.device_id)
        assert device is not None
        if node.command_id is not None:
            # A worker sent to another head: its agent stops that node and starts one joining this head.
            commands.cancel(self.session, node.command_id, "the head changed")
        command = commands.enqueue(
            self.session,
            device,
            kind,
            {**payload, "cluster_id": str(self.cluster.id), "node_id": str(node.id)},
        )
        node.command_id, node.started_at = command.id, utcnow()
        # The node's reason is read by its owner: what was asked, not the command's internal name.
        state_machines.move(
            self.session, "node", node, NodeState.STARTING, f"asked its device to start the Ray {node.role}"
        )
        self.woken.add(device.id)
        record(
            self.session,
            self.cluster,
            "node_starting",
            f"Asked device {device.name} to start the Ray {node.role}{self.start_target(kind, payload)}.",
            device_id=str(device.id),
            node_id=str(node.id),
        )

    def start_target(self, kind: str, payload: dict) -> str:
        if kind == "start_ray_worker":
            return f" joining {payload['head_address']}"
        return f" at {self.cluster.ray_address}" if self.cluster.ray_address else ""

    def joined(self, node: ClusterNode, command: DeviceCommand) -> None:
        device = self.session.get(Device, node.device_id)
        assert device is not None
        status = _node_status(
            command.result_detail, head=node.role == NodeRole.HEAD, device=device, settings=self.settings
        )
        if isinstance(status, dict) and any(
            other.id != node.id and other.ray_node_id == status["node_id"] for other in self.nodes
        ):
            # Another node's id: the head would see that node alive and count this one as joined.
            status = "its Ray node id is another node's"
        allocated = self.cluster.ray_address if node.role == NodeRole.HEAD else None
        if isinstance(status, dict) and allocated and status["address"] != allocated:
            # The workers were sent to the allocated address: a head elsewhere is not theirs.
            status = f"its address {status['address']} is not the one the portal allocated ({allocated})"
        if isinstance(status, str):
            self.replace(node, f"reported a Ray node the portal cannot use ({status})")
            return
        node.ray_node_id, node.joined_at = status["node_id"], utcnow()
        state_machines.move(self.session, "node", node, NodeState.JOINED, f"the Ray {node.role} is up")
        if node.role == NodeRole.HEAD:
            self.cluster.ray_address = status["address"]
            self.cluster.dashboard_url = status["dashboard_url"]
            self.cluster.client_address = status.get("client_address")
            self.session.add(self.cluster)
        record(
            self.session,
            self.cluster,
            "node_joined",
            f"The Ray {node.role} on device {device.name} is up"
            + (f" at {self.cluster.ray_address}." if node.role == NodeRole.HEAD else " and joined the head."),
            node_id=str(node.id),
            ray_node_id=node.ray_node_id,
        )

    def confirm_running(self, nodes: list[ClusterNode], probe: HeadProbe) -> None:
        """``running`` once the head itself sees every node alive."""
        expected = {node.ray_node_id for node in nodes if node.ray_node_id}
        seen: set[str] | None = None
        if self.cluster.dashboard_url:
            for _ in range(HEAD_PROBE_TRIES):
                seen = probe(self.cluster.dashboard_url)
                if seen is not None and expected <= seen:
                    break
                time.sleep(HEAD_PROBE_PAUSE_S)
        if seen is None or not expected <= seen:
            record(self.session, self.cluster, "waiting", "Waiting for the Ray head to see every node.")
            return
        now = utcnow()
        healed = self.cluster.state == ClusterState.DEGRADED
        if not healed:
            self.cluster.started_at = now
            self.cluster.expires_at = now + timedelta(hours=self.cluster.duration_hours)
        up = "its node is up" if len(nodes) == 1 else f"all {len(nodes)} nodes are up"
        self.move(ClusterState.RUNNING, f"healed: {up} again" if healed else up)
        record(
            self.session,
            self.cluster,
            "running",
            f"Running on {count(len(nodes), 'node')} with {count(sum(n.gpu_count for n in nodes), 'GPU')}; "
            "the Ray head sees every node.",
        )

    def replace(self, node: ClusterNode, reason: str) -> None:
        """Drop a device that failed its node and book another that fits; fail the deploy past the limit."""
        device = self.session.get(Device, node.device_id)
        assert device is not None
        self.release(node, f"device {device.name} {reason}", lost=True)
        if node.role == NodeRole.HEAD and self.cluster.ray_address:
            # The replacement head gets an address of its own; workers sent here are sent there.
            self.retired_addresses.add(self.cluster.ray_address)
            self.cluster.ray_address = self.cluster.dashboard_url = self.cluster.client_address = None
            self.session.add(self.cluster)
        self.session.add(
            FaultEvent(
                device_id=device.id,
                cluster_id=self.cluster.id,
                kind="node_start_failed",
                severity="warning",
                message=reason[:500],
            )
        )
        record(
            self.session,
            self.cluster,
            "node_failed",
            f"Device {device.name} dropped: it {reason}.",
            device_id=str(device.id),
        )
        failures = sum(1 for event in self.events() if event.kind == "node_failed")
        if failures > self.settings.max_node_replacements:
            self.end(ClusterState.FAILED, f"{failures} devices failed to start their nodes; giving up")
            return
        if not self.book_replacement(node.gpu_count, node.rate_micro, head=node.role == NodeRole.HEAD):
            self.end(ClusterState.FAILED, f"no replacement for device {device.name} is available")

    def book_replacement(self, gpus: int, max_rate_micro: int, *, head: bool) -> bool:
        """Book devices for ``gpus`` GPUs among those the cluster never used, at the quoted rate or less."""
        spec = clusters.ClusterSpec(
            name=self.cluster.name,
            gpu_model=self.cluster.gpu_model,
            gpu_count=gpus,
            duration_hours=self.cluster.duration_hours,
            countries=tuple(self.cluster.countries),
            connectivity_tier=self.cluster.connectivity_tier,
            # The customer was quoted this rate: a replacement costs no more.
            max_price_per_gpu_hour_micro=max_rate_micro,
        ).placement(exclude=frozenset(n.device_id for n in self.nodes))
        chosen = placement.reserve(
            self.session, self.settings, spec, f"replacement for cluster {self.cluster.id}"
        )
        if chosen is None:
            return False
        record(
            self.session,
            self.cluster,
            "replaced",
            f"Booked {count(len(chosen), 'device')} to replace {count(gpus, 'GPU')}.",
        )
        clusters.add_nodes(self.session, self.cluster, chosen, head=head)
        return True

    def events(self) -> list[ClusterEvent]:
        return clusters.events_of(self.session, self.cluster.id)

    # --- the end -----------------------------------------------------------------------------------

    def release(self, node: ClusterNode, reason: str, *, lost: bool = False) -> None:
        """Stop the node's Ray process; the device returns to ready once its agent confirms the stop."""
        if node.state in (NodeState.ASSIGNED, NodeState.STARTING, NodeState.JOINED) and lost:
            state_machines.move(self.session, "node", node, NodeState.LOST, reason)
        device = self.session.get(Device, node.device_id)
        assert device is not None
        if node.command_id is not None:
            commands.cancel(self.session, node.command_id, f"node released: {reason}")
        stop = commands.enqueue(
            self.session, device, "stop_ray", {"cluster_id": str(self.cluster.id), "node_id": str(node.id)}
        )
        node.command_id, node.ended_at = stop.id, node.ended_at or utcnow()
        state_machines.move(self.session, "node", node, NodeState.RELEASED, reason)
        self.woken.add(device.id)

    def end(self, final_state: str, reason: str) -> None:
        """Stop every node, settle the escrow, and close the cluster in ``final_state``."""
        now = utcnow()
        for node in self.active_nodes():
            self.release(node, reason)
        self.cluster.ended_at = self.cluster.ended_at or now
        self.move(final_state, reason)
        revocations.revoke_cluster(self.session, self.cluster.id, self.cluster.ended_at)
        charged, refunded = metering.settle(self.session, self.settings, self.cluster)
        record(
            self.session,
            self.cluster,
            final_state,
            f"{final_state.capitalize()}: {reason}. Charged {charged / 1e6:.2f} USD for the uptime, "
            f"returned {refunded / 1e6:.2f} USD of escrow.",
            charged_micro=charged,
            refunded_micro=refunded,
        )

    def return_devices(self) -> None:
        """Devices whose agent has answered the stop go back to ready; a device whose agent is gone goes
        offline (it gets the stop when it comes back). Only a device's latest node decides: an older
        cluster never hands back a device a newer one holds."""
        for node in self.nodes:
            if node.state != NodeState.RELEASED or node.command_id is None:
                continue
            device = self.session.get(Device, node.device_id)
            if device is None or device.state != DeviceState.HIRED:
                continue
            if latest_node_id(self.session, device.id) != node.id:
                continue
            stop = self.session.get(DeviceCommand, node.command_id)
            if stop is None or stop.state in (CommandState.QUEUED, CommandState.DELIVERED):
                if not devices.is_online(device, self.settings):
                    reason = "agent gone while stopping its node"
                    state_machines.move(self.session, "device", device, DeviceState.OFFLINE, reason)
                continue
            if stop.state == CommandState.FAILED:
                # The agent could not wipe the rental (a container, volume or process survived): the next
                # customer must not land there.
                self.wipe_failed(device, stop.result_detail or "no detail")
                continue
            if device.isolation == "container":
                device.last_wipe_at = stop.completed_at
            state_machines.move(self.session, "device", device, DeviceState.READY, "released by its cluster")

    def wipe_failed(self, device: Device, detail: str) -> None:
        reason = f"wipe failed: {detail[:300]}"
        state_machines.move(self.session, "device", device, DeviceState.BLOCKED, reason)
        revocations.revoke_device(self.session, device.id)
        self.session.add(
            FaultEvent(
                device_id=device.id,
                kind="wipe_failed",
                severity="error",
                message=f"The rental's wipe failed ({detail[:300]}): off the market until an admin "
                "unblocks it.",
            )
        )


def latest_node_id(session: Session, device_id: uuid.UUID) -> uuid.UUID | None:
    return session.exec(
        select(ClusterNode.id)
        .where(ClusterNode.device_id == device_id)
        .order_by(col(ClusterNode.created_at).desc(), col(ClusterNode.id).desc())
        .limit(1)
    ).first()


def expired(session: Session) -> list[uuid.UUID]:
    """Running clusters whose time is up."""
    now = utcnow()
    return list(
        session.exec(
            select(Cluster.id).where(
                col(Cluster.state).in_([ClusterState.RUNNING, ClusterState.DEGRADED]),
                col(Cluster.expires_at) <= now,
            )
        ).all()
    )


def expire(engine: Engine, settings: Settings, wakeups: Wakeups, cluster_id: uuid.UUID) -> str | None:
    with stepping(engine, settings, wakeups, cluster_id) as steps:
        if steps is None:
            return None
        cluster = steps.cluster
        if cluster.state not in (ClusterState.RUNNING, ClusterState.DEGRADED):
            return cluster.state
        if cluster.expires_at is None or cluster.expires_at > utcnow():
            return cluster.state
        steps.end(ClusterState.EXPIRED, f"its {cluster.duration_hours} h ran out")
        return cluster.state


def unfinished(session: Session) -> list[uuid.UUID]:
    """Clusters the reconciler should advance: mid-way ones, running ones (to heal), and ended ones whose
    devices are not back."""
    moving = session.exec(
        select(Cluster.id).where(
            col(Cluster.state).in_(
                [
                    ClusterState.PENDING,
                    ClusterState.PROVISIONING,
                    ClusterState.RUNNING,
                    ClusterState.DEGRADED,
                    ClusterState.TERMINATING,
                ]
            )
        )
    ).all()
    newer = aliased(ClusterNode)
    returning = session.exec(
        select(ClusterNode.cluster_id)
        .join(Device, col(Device.id) == ClusterNode.device_id)
        .where(
            ClusterNode.state == NodeState.RELEASED,
            Device.state == DeviceState.HIRED,
            # Only a device's latest node: an older cluster has nothing left to do with it.
            ~exists().where(
                newer.device_id == ClusterNode.device_id, newer.created_at > ClusterNode.created_at
            ),
        )
        .distinct()
    ).all()
    return list(dict.fromkeys([*moving, *returning]))
