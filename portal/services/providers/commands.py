"""Orders for worker agents: queued in the database (they survive restarts), delivered by long-poll or
heartbeat, answered with a result. Queuing one wakes the device's long-poll at once."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, or_
from sqlmodel import Session, col, select

from portal.infra.wakeups import Wakeups
from portal.models import CommandState, Device, DeviceCommand
from portal.models.base import utcnow
from portal.services.errors import Conflict, NotFound
from portal.services.followups import FollowUps

KINDS = {"start_ray_head", "start_ray_worker", "stop_ray", "verify"}
MAX_BATCH = 20
REDELIVER_AFTER = timedelta(seconds=120)
MAX_ATTEMPTS = 3


def enqueue(session: Session, device: Device, kind: str, payload: dict[str, Any]) -> DeviceCommand:
    """Queue a command; the wake-up is sent after the caller commits (see ``wake``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown command {kind}")
    command = DeviceCommand(device_id=device.id, kind=kind, payload=payload)
    session.add(command)
    session.flush()
    return command


def wake(wakeups: Wakeups, device_id: uuid.UUID) -> None:
    """Tell a long-polling agent to look again; call it once the command is committed."""
    wakeups.notify(str(device_id))


def take(session: Session, device_id: uuid.UUID) -> list[DeviceCommand]:
    """The device's commands to run now, oldest first, marked delivered.

    A command delivered but never answered (the agent died holding it) is offered again after
    ``REDELIVER_AFTER``, up to ``MAX_ATTEMPTS`` deliveries; then it expires. Agents run each id once and
    the commands are idempotent, so a redelivery is harmless.
    """
    now = utcnow()
    stale = now - REDELIVER_AFTER
    due = session.exec(
        select(DeviceCommand)
        .where(
            DeviceCommand.device_id == device_id,
            or_(
                DeviceCommand.state == CommandState.QUEUED,
                and_(DeviceCommand.state == CommandState.DELIVERED, col(DeviceCommand.delivered_at) < stale),
            ),
        )
        .order_by(col(DeviceCommand.created_at))
        .limit(MAX_BATCH)
    ).all()
    delivered = []
    for command in due:
        if command.attempts >= MAX_ATTEMPTS:
            command.state, command.completed_at = CommandState.EXPIRED, now
            command.result_detail = f"no result after {command.attempts} deliveries"
        else:
            command.state, command.delivered_at = CommandState.DELIVERED, now
            command.attempts += 1
            delivered.append(command)
        session.add(command)
    session.flush()
    return delivered


def complete(
    session: Session, device_id: uuid.UUID, command_id: uuid.UUID, *, ok: bool, detail: str
) -> DeviceCommand:
    command = session.get(DeviceCommand, command_id)
    if command is None or command.device_id != device_id:
        raise NotFound("No such command for this device.")
    if command.state in (CommandState.SUCCEEDED, CommandState.FAILED):
        same = (command.state == CommandState.SUCCEEDED) == ok
        if same:
            return command  # a retried result: harmless
        raise Conflict("This command already has a different result.", code="command_completed")
    command.state = CommandState.SUCCEEDED if ok else CommandState.FAILED
    command.completed_at, command.result_detail = utcnow(), detail[:2000]
    session.add(command)
    return command


def report_result(
    session: Session,
    followups: FollowUps,
    device_id: uuid.UUID,
    command_id: uuid.UUID,
    *,
    ok: bool,
    detail: str,
) -> DeviceCommand:
    """An agent's result for one of its commands; a cluster's command has the cluster take its next step
    (the next node, running, a replacement) at once, once the result is committed."""
    command = complete(session, device_id, command_id, ok=ok, detail=detail)
    cluster_id = cluster_of(command)
    if cluster_id is not None:
        session.commit()
        followups.advance_cluster(cluster_id)
    return command


def cancel(session: Session, command_id: uuid.UUID, reason: str) -> None:
    """Withdraw a command not answered yet, so that it is never delivered (again)."""
    command = session.get(DeviceCommand, command_id)
    if command is not None and command.state in (CommandState.QUEUED, CommandState.DELIVERED):
        command.state, command.completed_at = CommandState.EXPIRED, utcnow()
        command.result_detail = f"withdrawn: {reason}"[:2000]
        session.add(command)


def as_message(command: DeviceCommand) -> dict[str, Any]:
    return {"id": str(command.id), "kind": command.kind, "payload": command.payload}


def cluster_of(command: DeviceCommand) -> uuid.UUID | None:
    """The cluster a command works for, when it does."""
    try:
        return uuid.UUID(str(command.payload["cluster_id"]))
    except (KeyError, ValueError):
        return None
