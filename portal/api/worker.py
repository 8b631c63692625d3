"""The worker agent's routes (device token only): register, heartbeat, commands, proof of compute, its
overlay certificate, and the Ray autoscaler of a cluster whose head the device hosts."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.concurrency import run_in_threadpool
from sqlmodel import Session

from portal.api.deps import CacheDep, FollowUpsDep, PartsDep, SessionDep, SettingsDep, WakeupsDep
from portal.infra.db import session_scope
from portal.infra.metrics import HEARTBEATS
from portal.models import Device
from portal.parts import AppParts
from portal.schemas.devices import (
    AutoscaledNodesOut,
    AutoscalerNodeOut,
    ChallengeAnswerIn,
    ChallengeOut,
    ChallengeReplyOut,
    CommandOut,
    CommandResultIn,
    HeartbeatIn,
    HeartbeatOut,
    RegisterIn,
    RegisterOut,
    ScaleUpIn,
)
from portal.schemas.mesh import MeshCertificateIn, MeshCertificateOut, certificate_fields
from portal.security.access import BEATING_DEVICE, DEVICE, OriginDep
from portal.security.principal import Principal
from portal.services.errors import InvalidInput
from portal.services.mesh import certificates
from portal.services.providers import agents, commands, devices, liveness, verification
from portal.services.rentals import autoscaling

router = APIRouter(prefix="/worker", tags=["worker agent"])
Agent = Annotated[Principal, Depends(DEVICE)]
BeatingAgent = Annotated[Principal, Depends(BEATING_DEVICE)]


def _device(session: Session, caller: Principal) -> Device:
    device = session.get(Device, caller.device_id)
    assert device is not None  # the device token was just resolved to it
    return device


@router.post("/register", summary="Report the machine and its GPUs; starts verification when needed")
def register(
    body: RegisterIn, session: SessionDep, settings: SettingsDep, caller: Agent, origin: OriginDep
) -> RegisterOut:
    device = _device(session, caller)
    report = agents.MachineReport(
        **body.model_dump(exclude={"gpus"}), gpus=[g.model_dump() for g in body.gpus]
    )
    verify = agents.register(session, device, report, peer=origin.ip, settings=settings)
    return RegisterOut(
        device_id=device.id, state=device.state, next_heartbeat_s=settings.heartbeat_interval_s, verify=verify
    )


def _finish_beat(
    parts: AppParts, device_id: uuid.UUID, beat: liveness.NotedBeat
) -> tuple[str, list[dict[str, Any]]]:
    with session_scope(parts.engine) as session:
        # Prometheus keeps the GPU samples when there is one; else the portal's own store does.
        store = parts.settings.prometheus_url is None
        state, queued = agents.finish_beat(session, parts.cache, device_id, beat, store_samples=store)
        return state, [commands.as_message(command) for command in queued]


async def answer_beat(parts: AppParts, device_id: uuid.UUID, beat: liveness.NotedBeat) -> HeartbeatOut:
    """The answer to a beat just noted in the cache; the route below and ``heartbeat_lane`` both give it.

    Async: almost every beat is answered without a thread or a database connection.
    """
    HEARTBEATS.inc()
    state, queued = beat.state or "", []
    if agents.needs_database(beat):
        state, queued = await run_in_threadpool(_finish_beat, parts, device_id, beat)
    return HeartbeatOut(
        state=state,
        commands=[CommandOut(**message) for message in queued],
        next_heartbeat_s=parts.settings.heartbeat_interval_s,
    )


@router.post("/heartbeat", summary="I am alive: GPU samples and Ray node status; returns queued commands")
async def heartbeat(body: HeartbeatIn, parts: PartsDep, caller: BeatingAgent) -> HeartbeatOut:
    # Most beats never get here: ``heartbeat_lane`` answers them in front of the app.
    assert caller.device_id is not None
    beat = agents.beat(
        parts.cache,
        caller.device_id,
        samples=[s.model_dump() for s in body.gpus],
        ray=body.ray.model_dump(),
        mesh=body.mesh.model_dump() if body.mesh else None,
    )
    return await answer_beat(parts, caller.device_id, beat)


def _take_and_commit(session: Session, device_id: uuid.UUID) -> list[dict[str, Any]]:
    taken = [commands.as_message(command) for command in commands.take(session, device_id)]
    # Committing returns the connection to the pool: a long-poll must not hold one while it waits.
    session.commit()
    return taken


@router.get(
    "/commands", summary="Long-poll: answers at once when a command is queued, else [] after `wait` s"
)
async def poll_commands(
    session: SessionDep,
    wakeups: WakeupsDep,
    caller: Agent,
    wait: Annotated[int, Query(ge=0, le=30, description="Seconds to wait for a command")] = 0,
) -> list[CommandOut]:
    assert caller.device_id is not None
    async with wakeups.listen(str(caller.device_id)) as listener:
        taken = await run_in_threadpool(_take_and_commit, session, caller.device_id)
        if not taken and wait:
            await listener.wait(wait)
            taken = await run_in_threadpool(_take_and_commit, session, caller.device_id)
    return [CommandOut(**message) for message in taken]


@router.post("/commands/{command_id}/result", status_code=204, summary="The outcome of a command")
def command_result(
    command_id: uuid.UUID, body: CommandResultIn, session: SessionDep, followups: FollowUpsDep, caller: Agent
) -> None:
    assert caller.device_id is not None
    commands.report_result(session, followups, caller.device_id, command_id, ok=body.ok, detail=body.detail)


@router.get("/challenge", summary="A fresh proof-of-compute challenge")
def get_challenge(session: SessionDep, cache: CacheDep, settings: SettingsDep, caller: Agent) -> ChallengeOut:
    device = _device(session, caller)
    hardware = agents.recorded_hardware(session, device)
    return ChallengeOut(
        **verification.issue(cache, device, settings.verification_deadline_s, hardware=hardware)
    )


@router.post("/challenge/{challenge_id}", summary="Commit to the product, then reveal the rows asked for")
def answer_challenge(
    challenge_id: Annotated[str, Path(max_length=64)],
    body: ChallengeAnswerIn,
    session: SessionDep,
    cache: CacheDep,
    caller: Agent,
) -> ChallengeReplyOut:
    device = _device(session, caller)
    if body.row_hashes is not None:
        rows = verification.commit(
            cache,
            device,
            challenge_id,
            row_hashes=body.row_hashes,
            elapsed_ms=body.elapsed_ms or 0.0,
            vram_mb=body.vram_mb,
        )
        return ChallengeReplyOut(phase="reveal", rows=rows)
    if body.rows is not None:
        gpus = devices.gpus_of(session, device.id)
        result = verification.reveal(
            session,
            cache,
            device,
            challenge_id,
            rows=body.rows,
            gpu_models=[g.model for g in gpus],
            claimed_vram_mb=sum(g.memory_mb for g in gpus),
            hardware=agents.recorded_hardware(session, device),
        )
        return ChallengeReplyOut(
            phase="done", passed=result.passed, reason=result.reason, tflops=result.tflops
        )
    raise InvalidInput("Send row_hashes (to commit) or rows (to reveal).")


@router.post(
    "/mesh/certificate",
    summary="Sign the agent's public key into a short-lived overlay certificate (409 mesh_off without one)",
)
def mesh_certificate(body: MeshCertificateIn, parts: PartsDep, caller: Agent) -> MeshCertificateOut:
    assert caller.device_id is not None
    issued = certificates.issue(parts.engine, parts.settings, caller.device_id, body.public_key)
    return MeshCertificateOut(**certificate_fields(issued))


@router.get(
    "/autoscaler/nodes", summary="The live nodes of the autoscaled cluster whose head this device hosts"
)
def autoscaler_nodes(session: SessionDep, caller: Agent) -> AutoscaledNodesOut:
    assert caller.device_id is not None
    return _nodes_out(autoscaling.nodes(session, caller.device_id))


def _nodes_out(found: autoscaling.Nodes) -> AutoscaledNodesOut:
    return AutoscaledNodesOut(
        cluster_id=found.cluster_id,
        min_workers=found.min_workers,
        max_workers=found.max_workers,
        nodes=[AutoscalerNodeOut(**node.__dict__) for node in found.nodes],
    )


@router.post(
    "/autoscaler/nodes",
    status_code=201,
    summary="Add one-GPU workers (within max_workers, at the quoted rate, escrow held); 409 says why not",
)
def autoscaler_scale_up(body: ScaleUpIn, parts: PartsDep, caller: Agent) -> AutoscaledNodesOut:
    assert caller.device_id is not None
    added = autoscaling.scale_up(parts.engine, parts.settings, parts.wakeups, caller.device_id, body.count)
    return _nodes_out(added)


@router.delete("/autoscaler/nodes/{node_id}", status_code=204, summary="Release an idle worker")
def autoscaler_scale_down(node_id: uuid.UUID, parts: PartsDep, caller: Agent) -> None:
    assert caller.device_id is not None
    autoscaling.scale_down(parts.engine, parts.settings, parts.wakeups, caller.device_id, node_id)
