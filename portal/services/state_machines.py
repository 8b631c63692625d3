"""One state machine per entity: the allowed moves, and a record of every move with its reason."""

from __future__ import annotations

from typing import Protocol

from sqlmodel import Session

from portal.models import ClusterState, DeviceState, NodeState, PayoutState, StateTransition
from portal.services.errors import Conflict

D = DeviceState
DEVICE_MOVES: dict[str, set[str]] = {
    D.REGISTERED: {D.VERIFYING, D.OFFLINE, D.BLOCKED, D.UNSUPPORTED},
    D.VERIFYING: {D.READY, D.VERIFYING, D.OFFLINE, D.BLOCKED, D.UNSUPPORTED},
    D.READY: {D.HIRED, D.VERIFYING, D.OFFLINE, D.BLOCKED},
    D.HIRED: {D.READY, D.VERIFYING, D.OFFLINE, D.BLOCKED},  # verifying: its agent reported other GPUs
    D.OFFLINE: {D.VERIFYING, D.READY, D.BLOCKED},
    D.BLOCKED: {D.REGISTERED},
    D.UNSUPPORTED: {D.VERIFYING, D.BLOCKED},
}
C = ClusterState
CLUSTER_MOVES: dict[str, set[str]] = {
    C.PENDING: {C.PROVISIONING, C.TERMINATING, C.FAILED},
    C.PROVISIONING: {C.RUNNING, C.TERMINATING, C.FAILED},
    C.RUNNING: {C.DEGRADED, C.TERMINATING, C.EXPIRED, C.FAILED},
    C.DEGRADED: {C.RUNNING, C.TERMINATING, C.EXPIRED, C.FAILED},
    C.TERMINATING: {C.TERMINATED},
    C.TERMINATED: set(),
    C.FAILED: set(),
    C.EXPIRED: set(),
}
N = NodeState
NODE_MOVES: dict[str, set[str]] = {
    N.ASSIGNED: {N.STARTING, N.RELEASED, N.LOST},
    N.STARTING: {N.JOINED, N.RELEASED, N.LOST},
    N.JOINED: {N.LOST, N.RELEASED, N.STARTING},  # starting again: sent to a replaced head's successor
    N.LOST: {N.RELEASED},
    N.RELEASED: set(),
}
P = PayoutState
# Deposits' sweeps follow the same moves: signed and persisted (submitted), then landed or not.
TRANSFER_MOVES: dict[str, set[str]] = {
    P.PENDING: {P.SUBMITTED, P.FAILED},
    P.SUBMITTED: {P.CONFIRMED, P.FAILED, P.PENDING},  # pending again: expired unseen, safe to sign anew
    P.FAILED: {P.PENDING},  # an admin's retry
    P.CONFIRMED: set(),
}
MACHINES = {
    "device": DEVICE_MOVES,
    "cluster": CLUSTER_MOVES,
    "node": NODE_MOVES,
    "payout": TRANSFER_MOVES,
    "deposit": TRANSFER_MOVES,
}


class HasState(Protocol):
    id: object
    state: str
    state_reason: str


def move(session: Session, entity_type: str, entity: HasState, to_state: str, reason: str) -> bool:
    """Move ``entity`` to ``to_state`` and record it; False when it is there already (a harmless retry)."""
    if entity.state == to_state and to_state not in MACHINES[entity_type].get(to_state, set()):
        return False
    if to_state not in MACHINES[entity_type].get(entity.state, set()):
        raise Conflict(f"A {entity_type} cannot go from {entity.state} to {to_state}.", code="invalid_state")
    session.add(
        StateTransition(
            entity_type=entity_type,
            entity_id=str(entity.id),
            from_state=entity.state,
            to_state=to_state,
            reason=reason[:500],
        )
    )
    entity.state = to_state
    entity.state_reason = reason[:500]
    session.add(entity)
    return True
