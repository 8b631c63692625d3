"""A person starts offering GPUs, or stops: the provider role, taken and given back by its holder from the
account page (``PUT`` / ``DELETE /me/provider``). Each change is audited with its origin.

Stopping is refused while one of the person's devices serves a rental (a customer's cluster runs on it) or
is on the market (its agent runs and it is ready to be hired): without the role its owner could no longer
manage it, yet customers would keep renting it."""

from __future__ import annotations

import uuid

from sqlmodel import Session, col, delete, select

from portal.config import Settings
from portal.infra.cache import Cache
from portal.models import ClusterNode, Device, DeviceState, NodeState, Role, UserRole
from portal.security.authentication import publish_user_access
from portal.security.principal import RequestOrigin
from portal.services import audit
from portal.services.accounts import users
from portal.services.display import count
from portal.services.errors import Conflict
from portal.services.providers import devices

# A node in one of these states holds its device for a customer (clusters.ACTIVE_NODE_STATES).
SERVING_NODE_STATES = (NodeState.ASSIGNED, NodeState.STARTING, NodeState.JOINED)


def devices_serving(session: Session, owner_id: uuid.UUID) -> list[Device]:
    """The person's devices that a customer's cluster holds now."""
    held = select(ClusterNode.device_id).where(col(ClusterNode.state).in_(SERVING_NODE_STATES))
    return list(
        session.exec(
            select(Device)
            .where(Device.owner_id == owner_id)
            .where((Device.state == DeviceState.HIRED) | col(Device.id).in_(held))
            .order_by(Device.name)
        ).all()
    )


def devices_offered(session: Session, settings: Settings, owner_id: uuid.UUID) -> list[Device]:
    """The person's devices a customer could hire now: ready, with their agent heartbeating."""
    ready = session.exec(
        select(Device)
        .where(Device.owner_id == owner_id, Device.state == DeviceState.READY)
        .order_by(Device.name)
    ).all()
    return [device for device in ready if devices.is_online(device, settings)]


def _your_devices(found: list[Device]) -> str:
    """``your device rig-a``, ``your 2 devices (rig-a, rig-b)``, ``your 5 devices (a, b, c and 2 more)``."""
    if len(found) == 1:
        return f"your device {found[0].name}"
    shown = ", ".join(device.name for device in found[:3])
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return f"your {count(len(found), 'device')} ({shown}{more})"


def become_provider(
    session: Session, cache: Cache, user_id: uuid.UUID, *, origin: RequestOrigin | None = None
) -> set[Role]:
    """Give the account the provider role (a repeat changes nothing); its roles afterwards, which its
    access tokens hold from the commit on."""
    user = users.get_user(session, user_id)
    before = users.roles_of(session, user.id)
    if Role.PROVIDER in before:
        return before
    users.grant_roles(session, user, [Role.PROVIDER])
    publish_user_access(session, cache, user.id)
    after = before | {Role.PROVIDER}
    audit.record(
        session,
        "user.become_provider",
        actor_id=f"user:{user.id}",
        origin=origin,
        target_type="user",
        target_id=user.id,
        details={"before": sorted(before), "after": sorted(after)},
    )
    return after


def stop_providing(
    session: Session,
    cache: Cache,
    settings: Settings,
    user_id: uuid.UUID,
    *,
    origin: RequestOrigin | None = None,
) -> set[Role]:
    """Take the provider role away (a repeat changes nothing); its roles afterwards. A person left with no
    role is a customer again: "back" from providing is to renting. 409 while a device serves a rental or
    is on the market, naming the devices and what to do."""
    user = users.get_user(session, user_id)
    before = users.roles_of(session, user.id)
    if Role.PROVIDER not in before:
        return before
    serving = devices_serving(session, user.id)
    if serving:
        raise Conflict(
            f"You cannot stop being a provider while {_your_devices(serving)} "
            f"{'serves' if len(serving) == 1 else 'serve'} a customer's rental. Try again once it ends.",
            code="devices_serving",
            details={"devices": [str(device.id) for device in serving]},
        )
    offered = devices_offered(session, settings, user.id)
    if offered:
        raise Conflict(
            f"Y{_your_devices(offered)[1:]} "
            f"{'is' if len(offered) == 1 else 'are'} on the market: stop the agent on "
            f"{'it' if len(offered) == 1 else 'each'} (a device leaves the market once its heartbeats "
            f"stop) or remove {'it' if len(offered) == 1 else 'them'} on the Devices page, then try again.",
            code="devices_offered",
            details={"devices": [str(device.id) for device in offered]},
        )
    session.exec(
        delete(UserRole).where(col(UserRole.user_id) == user.id, col(UserRole.role) == Role.PROVIDER)  # type: ignore[call-overload]
    )
    after = before - {Role.PROVIDER}
    if not after:
        users.grant_roles(session, user, [Role.CUSTOMER])
        after = {Role.CUSTOMER}
    publish_user_access(session, cache, user.id)
    audit.record(
        session,
        "user.stop_providing",
        actor_id=f"user:{user.id}",
        origin=origin,
        target_type="user",
        target_id=user.id,
        details={"before": sorted(before), "after": sorted(after)},
    )
    return after
