"""The worker agent against a real portal API over HTTP: registration, proof of compute, heartbeats,
commands, token refusal, a portal restart, and Ray nodes of two agents joining one cluster."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import pytest
from sqlmodel import select

from gpu_pool import compute, ray_node
from gpu_pool.agent import Agent
from gpu_pool.client import PortalClient, PortalUnavailable
from gpu_pool.hardware import SIMULATED_MODELS, OfferedGpus, SimulatedGpus, parse_indices
from portal.infra.db import session_scope
from portal.infra.wakeups import Listener, RedisWakeups, Wakeups
from portal.models import CommandState, Device, DeviceCommand, DeviceState, FaultEvent, Gpu
from portal.parts import AppParts
from portal.security.principal import RequestOrigin
from portal.services.providers import commands, devices, verification
from portal.services.providers.gpu_catalog import CATALOG
from tests import factories
from tests.conftest import VENV_BIN, wait_until
from tests.servers import ServerThread, portal_app


class WatchedWakeups:
    """Wake-ups that tell when a long-poll has looked for work, found none and begun to wait."""

    def __init__(self, wakeups: Wakeups) -> None:
        self.wakeups = wakeups
        self.waiting = threading.Event()

    def notify(self, key: str) -> None:
        self.wakeups.notify(key)

    @asynccontextmanager
    async def listen(self, key: str) -> AsyncIterator[Listener]:
        async with self.wakeups.listen(key) as listener:
            yield WatchedListener(listener, self.waiting)


class WatchedListener:
    def __init__(self, listener: Listener, waiting: threading.Event) -> None:
        self.listener, self.waiting = listener, waiting

    async def wait(self, timeout_s: float) -> bool:
        self.waiting.set()  # a wake-up from now on is not missed: the listener was subscribed before
        return await self.listener.wait(timeout_s)


@pytest.fixture(params=["in-process", "redis"])
def polling_portal(request, parts, cache_prefix) -> Iterator[tuple[ServerThread, AppParts]]:
    """The portal with either kind of wake-up, watched, for the long-poll."""
    wakeups = parts.wakeups
    if request.param == "redis":
        wakeups = RedisWakeups(request.getfixturevalue("redis_url"), cache_prefix)
    with_wakeups = AppParts(parts.settings, parts.engine, parts.cache, WatchedWakeups(wakeups))
    server = ServerThread(portal_app(with_wakeups))
    with server:
        yield server, with_wakeups


def add_device(parts: AppParts, name: str = "rig") -> tuple[str, str]:
    device_id, token = factories.add_device(parts.engine, name=name)
    return str(device_id), token


def device_row(parts: AppParts, device_id: str) -> Device:
    with session_scope(parts.engine) as session:
        return session.get(Device, uuid.UUID(device_id))


class RunningAgent:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.thread = threading.Thread(target=agent.run, daemon=True)

    def __enter__(self) -> Agent:
        self.thread.start()
        return self.agent

    def __exit__(self, *_: object) -> None:
        self.agent.stop()
        self.thread.join(timeout=30)


def simulated_agent(url: str, token: str, count: int = 2) -> Agent:
    return Agent(PortalClient(url, token), SimulatedGpus(count, "H100-80GB", seed=1))


# --- contract between the two sides ----------------------------------------------------------------


def test_both_sides_derive_the_same_challenge_matrices_and_know_the_same_models():
    for which in (0, 1):
        assert (
            compute.matrix_rows(99, which, [0, 7, 31], 32)
            == verification.matrix_rows(99, which, [0, 7, 31], 32)
        ).all()
    assert set(SIMULATED_MODELS) <= set(CATALOG)
    assert all(SIMULATED_MODELS[name] == CATALOG[name].memory_mb for name in SIMULATED_MODELS)


# --- registration, proof of compute, heartbeats ----------------------------------------------------


def test_a_simulated_agent_registers_proves_its_compute_and_heartbeats(portal_api):
    server, parts = portal_api
    device_id, token = add_device(parts)
    with RunningAgent(simulated_agent(server.url, token)):
        wait_until(lambda: device_row(parts, device_id).state == DeviceState.READY)
        first_beat = device_row(parts, device_id).last_heartbeat_at
        wait_until(lambda: device_row(parts, device_id).last_heartbeat_at > first_beat, timeout_s=10)
    device = device_row(parts, device_id)
    assert device.simulated and device.verified_at is not None and device.verified_tflops > 0
    with session_scope(parts.engine) as session:
        gpus = session.exec(select(Gpu).where(Gpu.device_id == device.id)).all()
        checks = {c.key: c for c in devices.eligibility(session, device, parts.settings)}
    assert [(g.model, g.simulated) for g in gpus] == [("H100-80GB", True)] * 2
    assert checks["verified"].ok and checks["connected"].ok and checks["gpus"].ok
    assert checks["real_gpus"].message == "Simulated GPUs (development mode)."
    samples = json.loads(parts.cache.get(f"gpu-samples:{device_id}"))
    assert [s["index"] for s in samples["gpus"]] == [0, 1]


def test_a_provider_rents_out_only_the_gpus_they_choose(portal_api):
    server, parts = portal_api
    device_id, token = add_device(parts)
    offered = OfferedGpus(SimulatedGpus(4, "H100-80GB", seed=1), [3, 1])
    agent = Agent(PortalClient(server.url, token), offered)
    with RunningAgent(agent):
        wait_until(lambda: device_row(parts, device_id).state == DeviceState.READY)
        wait_until(lambda: parts.cache.get(f"gpu-samples:{device_id}") is not None, timeout_s=10)
    with session_scope(parts.engine) as session:
        gpus = session.exec(
            select(Gpu).where(Gpu.device_id == uuid.UUID(device_id)).order_by(Gpu.index)
        ).all()
    # The portal knows the two offered GPUs by their own numbers; GPUs 0 and 2 stay the provider's.
    assert [g.index for g in gpus] == [1, 3] and device_row(parts, device_id).gpu_count == 2
    samples = json.loads(parts.cache.get(f"gpu-samples:{device_id}"))
    assert [s["index"] for s in samples["gpus"]] == [1, 3]
    assert agent._node_spec("head", {}).num_gpus == 2


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("0,7", "no GPU 7 on this machine: it has 4 (indices 0, 1, 2, 3)"),
        ("", "GPU indices"),
        ("a", "GPU indices"),
    ],
)
def test_offering_gpus_the_machine_lacks_is_refused_with_what_it_has(given, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        OfferedGpus(SimulatedGpus(4, "H100-80GB"), parse_indices(given))


def test_the_cli_refuses_an_offer_of_missing_gpus_before_it_connects():
    result = subprocess.run(
        [
            str(VENV_BIN / "gpu-pool"), "worker", "--portal", "http://127.0.0.1:1", "--token", "x",
            "--simulate", "2xH100-80GB", "--gpus", "0,2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "no GPU 2 on this machine: it has 2" in result.stderr


class WrongAgent(Agent):
    """Commits to the product of other matrices: what a machine faking its GPU would send."""

    def verify(self):
        challenge = self.client.challenge()
        product = compute.multiply(challenge["seed"] + 1, challenge["n"], use_gpu=False)
        reply = self.client.answer_challenge(
            challenge["id"], {"row_hashes": product.commitment(), "elapsed_ms": product.elapsed_ms}
        )
        return self.client.answer_challenge(challenge["id"], {"rows": product.reveal(reply["rows"])})


class SlowAgent(Agent):
    """Computes the right product, but later than the deadline."""

    def verify(self):
        challenge = self.client.challenge()
        product = compute.multiply(challenge["seed"], challenge["n"], use_gpu=False)
        # Lateness is the point: the portal times the answer by its own clock, which a test cannot move.
        time.sleep(challenge["deadline_s"] + 0.5)
        reply = self.client.answer_challenge(
            challenge["id"], {"row_hashes": product.commitment(), "elapsed_ms": product.elapsed_ms}
        )
        return self.client.answer_challenge(challenge["id"], {"rows": product.reveal(reply["rows"])})


@pytest.mark.parametrize(
    ("agent_class", "deadline_s", "reason"), [(WrongAgent, None, "Freivalds"), (SlowAgent, 1, "late")]
)
def test_a_wrong_or_late_answer_fails_verification_with_a_fault(parts, agent_class, deadline_s, reason):
    # Only the late agent gets a short deadline: a wrong answer must fail on its merits, on any busy host.
    strict = AppParts(
        parts.settings.model_copy(update={"verification_deadline_s": deadline_s}), parts.engine, parts.cache
    )
    device_id, token = add_device(parts)
    with ServerThread(portal_app(strict)) as url:
        agent = agent_class(PortalClient(url, token), SimulatedGpus(1, "A10-24GB"))
        agent.register()
        verdict = agent.verify()
    assert verdict["passed"] is False and reason in verdict["reason"]
    device = device_row(parts, device_id)
    assert device.state == DeviceState.VERIFYING and device.verified_at is None
    with session_scope(parts.engine) as session:
        fault = session.exec(select(FaultEvent).where(FaultEvent.device_id == device.id)).one()
    assert fault.kind == "verification_failed" and reason in fault.message


# --- commands --------------------------------------------------------------------------------------


def test_a_queued_command_reaches_a_long_polling_agent_in_well_under_a_second(polling_portal):
    server, parts = polling_portal
    device_id, token = add_device(parts)
    client = PortalClient(server.url, token)
    client.register({"agent_version": "t", "gpus": [], "simulated": True})
    received: list = []
    poller = threading.Thread(target=lambda: received.extend(client.poll_commands(20)))
    poller.start()
    assert parts.wakeups.waiting.wait(timeout=10), "the agent's long-poll never began to wait"
    started = time.perf_counter()
    with session_scope(parts.engine) as session:
        command = commands.enqueue(session, session.get(Device, uuid.UUID(device_id)), "stop_ray", {})
    commands.wake(parts.wakeups, command.device_id)
    poller.join(timeout=10)
    latency = time.perf_counter() - started
    assert [c["kind"] for c in received] == ["stop_ray"]
    assert latency < 1.0, f"took {latency:.2f} s"
    client.command_result(received[0]["id"], True, "stopped")
    client.command_result(received[0]["id"], True, "stopped")  # a retried result is harmless
    with session_scope(parts.engine) as session:
        assert session.get(DeviceCommand, command.id).state == CommandState.SUCCEEDED


def test_a_rotated_token_stops_the_agent_with_a_clear_reason(portal_api):
    server, parts = portal_api
    device_id, token = add_device(parts)
    agent = simulated_agent(server.url, token)
    with RunningAgent(agent):
        wait_until(lambda: device_row(parts, device_id).state == DeviceState.READY)
        with session_scope(parts.engine) as session:
            owner = device_row(parts, device_id).owner_id
            devices.rotate_token(
                session,
                parts.cache,
                owner_id=owner,
                device_id=device_row(parts, device_id).id,
                origin=RequestOrigin(),
            )
        wait_until(lambda: agent.stopping.is_set(), timeout_s=10)
    assert "device token is invalid or has been rotated" in agent.fatal


def test_the_agent_survives_a_portal_restart(parts):
    fast = AppParts(parts.settings.model_copy(update={"heartbeat_interval_s": 1}), parts.engine, parts.cache)
    server = ServerThread(portal_app(fast))
    server.start()
    device_id, token = add_device(parts)
    agent = simulated_agent(server.url, token)
    failed_beats = []
    beat = agent.client.heartbeat

    def heartbeat(*args, **kwargs):
        try:
            return beat(*args, **kwargs)
        except PortalUnavailable as error:
            failed_beats.append(error)
            raise

    agent.client.heartbeat = heartbeat
    with RunningAgent(agent):
        wait_until(lambda: device_row(parts, device_id).state == DeviceState.READY)
        server.stop()
        wait_until(
            lambda: len(failed_beats) >= 2, timeout_s=20, what="heartbeats failing while the portal is down"
        )
        down_since = device_row(parts, device_id).last_heartbeat_at
        server.start()
        wait_until(lambda: device_row(parts, device_id).last_heartbeat_at > down_since, timeout_s=40)
        assert not agent.stopping.is_set()
    server.stop()


def test_the_cli_without_a_driver_says_what_to_do_in_one_line():
    result = subprocess.run(
        [str(VENV_BIN / "gpu-pool"), "worker", "--portal", "http://127.0.0.1:1", "--token", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--cpu-only" in lines[0] and "--simulate 2xH100-80GB" in lines[0]


def test_the_cli_agent_connects_and_stops_on_ctrl_c(portal_api):
    server, parts = portal_api
    device_id, token = add_device(parts)
    process = subprocess.Popen(
        [
            str(VENV_BIN / "gpu-pool"),
            "worker",
            "--portal",
            server.url,
            "--simulate",
            "1xRTX-4090-24GB",
            "--metrics-port",
            "0",
        ],
        env={**os.environ, "GPU_POOL_TOKEN": token},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: device_row(parts, device_id).state == DeviceState.READY)
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=30)[0].decode()
    assert process.returncode == 0, output
    assert "SIMULATED GPUs: 1 x RTX-4090-24GB" in output


# --- Ray -------------------------------------------------------------------------------------------


def send_command(parts: AppParts, device_id: str, kind: str, payload: dict) -> uuid.UUID:
    with session_scope(parts.engine) as session:
        command = commands.enqueue(session, session.get(Device, uuid.UUID(device_id)), kind, payload)
    commands.wake(parts.wakeups, command.device_id)
    return command.id


def command_result(parts: AppParts, command_id: uuid.UUID, timeout_s: float = 120) -> DeviceCommand:
    """The command once its agent has answered it."""

    def finished() -> bool:
        with session_scope(parts.engine) as session:
            return session.get(DeviceCommand, command_id).state in (
                CommandState.SUCCEEDED,
                CommandState.FAILED,
            )

    wait_until(finished, timeout_s=timeout_s, every_s=0.3)
    with session_scope(parts.engine) as session:
        return session.get(DeviceCommand, command_id)


def command_and_wait(
    parts: AppParts,
    device_id: str,
    kind: str,
    payload: dict,
    timeout_s: float = 120,
    meanwhile: Callable[[], object] | None = None,
) -> DeviceCommand:
    """Queue a command for the device and wait for its agent's result; ``meanwhile`` runs while it waits."""
    command_id = send_command(parts, device_id, kind, payload)
    if meanwhile is not None:
        meanwhile()
    return command_result(parts, command_id, timeout_s)


@pytest.mark.slow
def test_two_agents_on_one_host_start_ray_nodes_that_join_one_cluster(portal_api):
    server, parts = portal_api
    (head_id, head_token), (worker_id, worker_token) = add_device(parts, "head"), add_device(parts, "worker")
    head_agent, worker_agent = (
        simulated_agent(server.url, head_token, 2),
        simulated_agent(server.url, worker_token, 1),
    )
    with RunningAgent(head_agent), RunningAgent(worker_agent):
        wait_until(lambda: all(device_row(parts, d).state == DeviceState.READY for d in (head_id, worker_id)))
        # The portal allocates the head's GCS port; a port something else holds fails the start at once.
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            busy = command_and_wait(
                parts, head_id, "start_ray_head", {"num_cpus": 1, "gcs_port": taken.getsockname()[1]}
            )
        assert busy.state == CommandState.FAILED and "is busy" in busy.result_detail
        (gcs_port,) = ray_node.free_ports(1)
        address = f"127.0.0.1:{gcs_port}"
        # The worker is asked first: it waits (the portal hears "starting") until the head's GCS answers.
        worker = send_command(parts, worker_id, "start_ray_worker", {"head_address": address, "num_cpus": 1})
        wait_until(lambda: device_row(parts, worker_id).ray_state == "starting")
        # The agent keeps heartbeating while its node starts (seconds): the portal hears "starting".
        head = command_and_wait(
            parts,
            head_id,
            "start_ray_head",
            {"num_cpus": 1, "gcs_port": gcs_port},
            meanwhile=lambda: wait_until(lambda: device_row(parts, head_id).ray_state == "starting"),
        )
        assert head.state == CommandState.SUCCEEDED, head.result_detail
        assert json.loads(head.result_detail)["address"] == address
        joined = command_result(parts, worker)
        assert joined.state == CommandState.SUCCEEDED, joined.result_detail

        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import json, ray; ray.init(address={address!r}, logging_level='ERROR');"
                "print(json.dumps(ray.cluster_resources())); ray.shutdown()",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        resources = json.loads(probe.stdout.strip().splitlines()[-1])
        assert resources["GPU"] == 3
        assert resources[f"device_{head_id}"] == 1 and resources[f"device_{worker_id}"] == 1
        wait_until(lambda: device_row(parts, worker_id).ray_node_id is not None, timeout_s=10)

        for device_id in (worker_id, head_id):
            assert command_and_wait(parts, device_id, "stop_ray", {}).state == CommandState.SUCCEEDED
        wait_until(lambda: device_row(parts, head_id).ray_state == "none", timeout_s=10)
    leftovers = subprocess.run(
        ["pgrep", "-f", "gp-.*raylet|raylet.*gp-"], capture_output=True, text=True
    ).stdout
    assert leftovers.strip() == ""


def test_a_worker_waiting_for_its_head_gives_way_to_a_stop_at_once():
    agent = Agent(PortalClient("http://127.0.0.1:9", "unused"), SimulatedGpus(1, "H100-80GB", seed=1))
    agent.device_id = "rig"
    (nobody,) = ray_node.free_ports(1)  # no head listens here
    started: list[tuple[bool, str]] = []
    start = {
        "kind": "start_ray_worker",
        "payload": {"cluster_id": "c", "head_address": f"127.0.0.1:{nobody}"},
    }
    waiting = threading.Thread(target=lambda: started.append(agent.handle(start)))
    waiting.start()
    wait_until(lambda: agent.ray_status()["state"] == "starting", timeout_s=5)
    time.sleep(0.3)  # still waiting: nothing answers there

    began = time.monotonic()
    assert agent.handle({"kind": "stop_ray"}) == (True, "stopped")

    waiting.join(timeout=5)
    assert time.monotonic() - began < 2
    assert started == [(False, "abandoned for a newer command while waiting for the head")]
    assert agent.ray_status()["state"] == "none"


def test_real_gpus_that_cannot_allocate_their_claimed_memory_fail_verification(parts):
    from portal.services.providers import agents

    device_id, _ = add_device(parts)
    with session_scope(parts.engine) as session:
        device = session.get(Device, uuid.UUID(device_id))
        report = agents.MachineReport(
            agent_version="t",
            hostname="h",
            os="linux",
            cpu_count=8,
            ram_mb=1,
            simulated=False,
            metrics_url=None,
            gpus=[{"index": 0, "uuid": "GPU-1", "model": "NVIDIA H100 80GB HBM3", "memory_mb": 81_559}],
        )
        assert agents.register(session, device, report, peer="127.0.0.1", settings=parts.settings) is True
        challenge = verification.issue(parts.cache, device)
        product = compute.multiply(challenge["seed"], challenge["n"], use_gpu=False)
        rows = verification.commit(
            parts.cache,
            device,
            challenge["id"],
            row_hashes=product.commitment(),
            elapsed_ms=40.0,
            vram_mb=2_048,
        )
        result = verification.reveal(
            session,
            parts.cache,
            device,
            challenge["id"],
            rows=product.reveal(rows),
            gpu_models=["H100-80GB"],
            claimed_vram_mb=81_559,
        )
    assert not result.passed
    assert result.reason == "only 2048 MiB of the claimed 81559 MiB could be allocated"


def test_a_command_taken_by_an_agent_that_died_is_offered_again_then_expires(parts):
    from datetime import timedelta

    from portal.models.base import utcnow

    device_id, _ = add_device(parts)
    with session_scope(parts.engine) as session:
        device = session.get(Device, uuid.UUID(device_id))
        command = commands.enqueue(session, device, "stop_ray", {})
        assert [c.id for c in commands.take(session, device.id)] == [command.id]
        assert commands.take(session, device.id) == []  # delivered, not yet stale
        for attempt in (2, 3):
            command.delivered_at = utcnow() - commands.REDELIVER_AFTER - timedelta(seconds=1)
            session.add(command)
            assert [c.id for c in commands.take(session, device.id)] == [command.id]
            assert command.attempts == attempt
        command.delivered_at = utcnow() - commands.REDELIVER_AFTER - timedelta(seconds=1)
        assert commands.take(session, device.id) == []
        assert command.state == CommandState.EXPIRED


def test_a_heartbeat_brings_an_offline_device_back_through_the_state_machine(parts):
    from portal.models import StateTransition
    from portal.services.providers import agents

    device_id, _ = add_device(parts)
    with session_scope(parts.engine) as session:
        device = session.get(Device, uuid.UUID(device_id))
        device.state, device.verified_at = DeviceState.OFFLINE, device.created_at
        session.add(device)
    with session_scope(parts.engine) as session:
        state, queued = agents.heartbeat(
            session, parts.cache, uuid.UUID(device_id), samples=[], ray={"state": "running", "node_id": "abc"}
        )
    assert (state, queued) == (DeviceState.READY, [])
    device = device_row(parts, device_id)
    assert (device.state, device.ray_state, device.ray_node_id) == (DeviceState.READY, "running", "abc")
    with session_scope(parts.engine) as session:
        moves = session.exec(select(StateTransition).where(StateTransition.entity_id == device_id)).all()
    assert [(m.from_state, m.to_state, m.reason) for m in moves] == [
        ("offline", "ready", "heartbeats resumed")
    ]


def test_malformed_challenge_answers_fail_verification_instead_of_erroring(portal_api):
    server, parts = portal_api
    _, token = add_device(parts)
    client = PortalClient(server.url, token)
    client.register(
        {
            "agent_version": "t",
            "gpus": [{"index": 0, "uuid": "u", "model": "A10-24GB", "memory_mb": 23028}],
            "simulated": True,
        }
    )
    challenge = client.challenge()
    reply = client.answer_challenge(
        challenge["id"], {"row_hashes": ["0" * 64] * challenge["n"], "elapsed_ms": 1}
    )
    ragged = {i: [1.0] * (j + 1) for j, i in enumerate(reply["rows"])}
    verdict = client.answer_challenge(challenge["id"], {"rows": ragged})
    assert verdict["passed"] is False and verdict["reason"] == "the revealed rows are malformed"
    import httpx

    bad = httpx.post(
        f"{server.url}/api/v1/worker/challenge/{challenge['id']}",
        json={"rows": {"x": "y"}},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert bad.status_code == 422


def test_a_revoked_token_is_refused_even_if_a_read_before_the_revocation_caches_it(parts):
    from portal.security import authentication
    from portal.security.secrets import keyed_hash
    from portal.services.errors import Unauthorized

    _, token = add_device(parts)
    authentication.revoke_device_token(parts.cache, keyed_hash(token))
    # The row still holds the old hash (the revoking change "not committed yet"): the stale read must not
    # overwrite the revocation in the cache.
    with session_scope(parts.engine) as session, pytest.raises(Unauthorized):
        authentication.authenticate_bearer(session, parts.cache, token)


def test_a_node_whose_raylet_missed_rays_own_30_s_wait_is_started_again(tmp_path, monkeypatch):
    """Ray gives its raylet a hard-coded 30 s to register and then exits; on a loaded machine that happens
    while all else is well. A stand-in for ``ray`` fails so once, then runs: the node starts on the second
    try, and the first try's temp dir is gone."""
    tries = tmp_path / "tries"
    fake_ray = tmp_path / "ray"
    fake_ray.write_text(
        "#!/bin/sh\n"
        f'echo try >> "{tries}"\n'
        f'if [ "$(wc -l < "{tries}")" -eq 1 ]; then\n'
        f'  echo "Exception: {ray_node.RAYLET_TIMED_OUT}. This could happen because ..."; exit 1\n'
        "fi\n"
        'echo "Ray runtime started."; exec sleep 60\n'
    )
    fake_ray.chmod(0o755)
    monkeypatch.setattr(ray_node, "_ray_executable", lambda: str(fake_ray))
    spec = ray_node.NodeSpec(role="head", num_gpus=0, resources={})
    node = ray_node.start(spec, workdir=tmp_path)
    try:
        assert node.alive() and tries.read_text().count("try") == 2
        assert [path for path in tmp_path.glob("gp-*") if path != node.temp_dir] == []
    finally:
        node.stop()
