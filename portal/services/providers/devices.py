"""Providers' devices: adding one (token shown once, launch command), listing, removing, rotating the
token, and the eligibility checklist that says why a device is not hireable yet."""

from __future__ import annotations

import logging
import re
import shlex
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, event, func
from sqlmodel import Session, col, select

from portal import __version__
from portal.config import Environment, Settings
from portal.infra.cache import Cache
from portal.models import (
    ClusterNode,
    ConnectivityTier,
    Device,
    DeviceCommand,
    DeviceState,
    FaultEvent,
    Gpu,
    HearingGap,
    User,
)
from portal.models.base import utcnow
from portal.security.authentication import revoke_device_token
from portal.security.principal import RequestOrigin
from portal.security.secrets import DEVICE_TOKEN_PREFIX, keyed_hash, new_token
from portal.services import audit, names
from portal.services.display import count
from portal.services.errors import Conflict, InvalidInput, NotFound
from portal.services.mesh import revocations
from portal.services.providers.gpu_catalog import list_price
from portal.services.providers.liveness import AGENT_RETRY_MAX_S, HEARING_GAP_S

logger = logging.getLogger(__name__)
# A device is online while its last heartbeat is younger than this many intervals.
MISSED_HEARTBEATS_OFFLINE = 3
_COUNTRY = re.compile(r"^[A-Z]{2}$")
# What a provider may ask per GPU-hour: a cent at least, a thousand dollars at most.
MIN_PRICE_MICRO, MAX_PRICE_MICRO = 10_000, 1_000_000_000
MAX_DEVICES_PER_OWNER = 500


@dataclass(frozen=True)
class Check:
    key: str
    ok: bool
    message: str


def launch_commands(settings: Settings, token: str) -> dict[str, str]:
    """How a provider starts the agent: with pip, or with Docker; ``--simulate`` for development.

    Both install the agent's own distribution, ``gpu-pool`` (gpu_pool/pyproject.toml), released with this
    portal: it brings the portal's Ray and none of the server's packages."""
    portal = shlex.quote(settings.base_url)
    quoted = shlex.quote(token)
    return {
        "pip": f"pip install gpu-pool=={__version__} && gpu-pool worker --portal {portal} --token {quoted}",
        "docker": (
            f"docker run -d --gpus all --restart unless-stopped --network host gpu-pool:{__version__} "
            f"gpu-pool worker --portal {portal} --token {quoted}"
        ),
        "simulate": f"gpu-pool worker --portal {portal} --token {quoted} --simulate 2xH100-80GB",
    }


def _validate(name: str, country: str, tier: str, price: int | None) -> tuple[str, str]:
    name, country = names.shown_text(name, field="name"), country.strip().upper()
    if not 1 <= len(name) <= 80:
        raise InvalidInput("Name the device (1 to 80 characters).", details={"field": "name"})
    if not _COUNTRY.match(country):
        raise InvalidInput(
            "Give the country as a two-letter ISO code, e.g. DE.", details={"field": "country"}
        )
    if tier not in ConnectivityTier._value2member_map_:
        raise InvalidInput(
            f"Connectivity tier is one of: {', '.join(ConnectivityTier)}.",
            details={"field": "connectivity_tier"},
        )
    if price is not None and not 0 < price <= 1_000_000_000:
        raise InvalidInput(
            "The price per GPU-hour must be positive.", details={"field": "price_per_gpu_hour_micro"}
        )
    return name, country


def add_device(
    session: Session,
    *,
    owner_id: uuid.UUID,
    name: str,
    country: str,
    connectivity_tier: str,
    price_per_gpu_hour_micro: int | None,
    origin: RequestOrigin,
) -> tuple[Device, str]:
    """The new device and its token, which is shown this once."""
    name, country = _validate(name, country, connectivity_tier, price_per_gpu_hour_micro)
    if len(list_devices(session, owner_id)) >= MAX_DEVICES_PER_OWNER:
        raise Conflict(f"An account holds at most {MAX_DEVICES_PER_OWNER} devices.", code="too_many_devices")
    token = new_token(DEVICE_TOKEN_PREFIX)
    device = Device(
        owner_id=owner_id,
        name=name,
        country=country,
        connectivity_tier=connectivity_tier,
        price_per_gpu_hour_micro=price_per_gpu_hour_micro,
        hourly_price_micro=price_per_gpu_hour_micro or list_price(""),
        token_hash=keyed_hash(token),
        token_prefix=token[:12],
        state_reason="waiting for the agent to connect",
    )
    session.add(device)
    session.flush()
    audit.record(
        session,
        "device.create",
        actor_id=f"user:{owner_id}",
        origin=origin,
        target_type="device",
        target_id=device.id,
        details={"name": name},
    )
    return device, token


def list_devices(session: Session, owner_id: uuid.UUID) -> list[Device]:
    return list(
        session.exec(
            select(Device).where(Device.owner_id == owner_id).order_by(col(Device.created_at).desc())
        ).all()
    )


def get_device(session: Session, owner_id: uuid.UUID, device_id: uuid.UUID) -> Device:
    device = session.get(Device, device_id)
    # Another provider's device is "not found": ids reveal nothing.
    if device is None or device.owner_id != owner_id:
        raise NotFound("No such device.")
    return device


def gpus_of(session: Session, device_id: uuid.UUID) -> list[Gpu]:
    return list(session.exec(select(Gpu).where(Gpu.device_id == device_id).order_by(col(Gpu.index))).all())


def forget_token(session: Session, cache: Cache, token_hash: str) -> None:
    """Revoke a token in the authentication cache as soon as the change that revokes it commits (before,
    a heartbeat could cache it again from the row not yet changed)."""

    def revoke(_: Session) -> None:
        try:
            revoke_device_token(cache, token_hash)
        except Exception:  # the change is committed; the cached entry lapses within its TTL
            logger.exception("could not revoke a device token in the cache")

    event.listen(session, "after_commit", revoke, once=True)


def rotate_token(
    session: Session, cache: Cache, *, owner_id: uuid.UUID, device_id: uuid.UUID, origin: RequestOrigin
) -> str:
    """A new token for the device; the old one stops working at once (the agent must be restarted with it)."""
    device = get_device(session, owner_id, device_id)
    forget_token(session, cache, device.token_hash)
    token = new_token(DEVICE_TOKEN_PREFIX)
    device.token_hash, device.token_prefix = keyed_hash(token), token[:12]
    session.add(device)
    audit.record(
        session,
        "device.rotate_token",
        actor_id=f"user:{owner_id}",
        origin=origin,
        target_type="device",
        target_id=device.id,
    )
    return token


def set_price(
    session: Session,
    *,
    owner_id: uuid.UUID,
    device_id: uuid.UUID,
    price_per_gpu_hour_micro: int | None,
    origin: RequestOrigin,
) -> Device:
    """The device's price per GPU-hour from now on; None for its model's list price. The marketplace and
    new placements see it at once; running clusters keep the rate they were placed at (ClusterNode's
    ``rate_micro``). Audited with the price before and after."""
    device = get_device(session, owner_id, device_id)
    price = price_per_gpu_hour_micro
    if price is not None and not MIN_PRICE_MICRO <= price <= MAX_PRICE_MICRO:
        raise InvalidInput(
            "The price per GPU-hour is between $0.01 and $1,000.",
            details={"field": "price_per_gpu_hour_micro"},
        )
    before = device.price_per_gpu_hour_micro
    if price == before:
        return device
    device.price_per_gpu_hour_micro = price
    device.hourly_price_micro = price or list_price(device.gpu_model)
    session.add(device)
    audit.record(
        session,
        "device.price",
        actor_id=f"user:{owner_id}",
        origin=origin,
        target_type="device",
        target_id=device.id,
        details={"before_micro": before, "after_micro": price},
    )
    return device


def remove_device(
    session: Session, cache: Cache, *, owner_id: uuid.UUID, device_id: uuid.UUID, origin: RequestOrigin
) -> None:
    device = get_device(session, owner_id, device_id)
    if device.state == DeviceState.HIRED:
        raise Conflict(
            "The device runs a cluster; it can be removed once the cluster ends.", code="device_hired"
        )
    if session.exec(select(ClusterNode.id).where(ClusterNode.device_id == device.id)).first() is not None:
        raise Conflict(
            "The device has served clusters, and its record is kept for their billing. Stop its agent to "
            "take it off the market, or rotate its token.",
            code="device_has_history",
        )
    forget_token(session, cache, device.token_hash)
    # Its token must never work again, even if a row somehow survives.
    device.token_hash = keyed_hash(new_token(DEVICE_TOKEN_PREFIX))
    audit.record(
        session,
        "device.delete",
        actor_id=f"user:{owner_id}",
        origin=origin,
        target_type="device",
        target_id=device.id,
        details={"name": device.name},
    )
    for gpu in gpus_of(session, device.id):
        session.delete(gpu)
    # Its faults (failed proofs, say) go with a device that never served a cluster.
    session.execute(delete(FaultEvent).where(col(FaultEvent.device_id) == device.id))
    session.execute(delete(DeviceCommand).where(col(DeviceCommand.device_id) == device.id))
    revocations.revoke_device(session, device.id)  # its rows stay, blocklisted until they expire
    session.flush()
    session.delete(device)


@dataclass(frozen=True)
class Hearing:
    """What the portal heard lately: silence inside a gap (no agent at all heard: the portal's own restart
    or outage, a network split on its side) is the portal's, not a device's."""

    now: datetime
    gaps: tuple[tuple[datetime, datetime], ...] = ()

    def silence(self, last_beat: datetime) -> timedelta:
        deaf = sum(
            ((min(end, self.now) - max(start, last_beat)) for start, end in self.gaps if end > last_beat),
            timedelta(),
        )
        return self.now - last_beat - max(deaf, timedelta())


def hearing(session: Session) -> Hearing:
    """The gaps of the last hour, and the one going on while no agent at all is heard now."""
    now = utcnow()
    # Agents back off up to ``AGENT_RETRY_MAX_S`` while the portal is away: each gets that long to return.
    grace = timedelta(seconds=AGENT_RETRY_MAX_S)
    gaps = [
        (start, end + grace)
        for start, end in session.exec(
            select(HearingGap.started_at, HearingGap.ended_at).where(
                HearingGap.ended_at >= now - timedelta(hours=1)
            )
        ).all()
    ]
    newest = session.exec(select(func.max(Device.last_heartbeat_at))).one()
    if newest is not None and (now - newest).total_seconds() > HEARING_GAP_S:
        gaps.append((newest, now))
    return Hearing(now, tuple(gaps))


def is_online(device: Device, settings: Settings, heard: Hearing | None = None) -> bool:
    """Heartbeating within the last ``MISSED_HEARTBEATS_OFFLINE`` intervals (of the portal's hearing, when
    ``heard`` is given: where a loss would have consequences)."""
    if device.last_heartbeat_at is None:
        return False
    allowed = timedelta(seconds=settings.heartbeat_interval_s * MISSED_HEARTBEATS_OFFLINE)
    silence = (heard or Hearing(utcnow())).silence(device.last_heartbeat_at)
    return silence < allowed


def eligibility(session: Session, device: Device, settings: Settings) -> list[Check]:
    """Each condition for the device to be hired, met or not, in words its owner can act on."""
    owner = session.get(User, device.owner_id)
    gpus = gpus_of(session, device.id)
    production = settings.environment is Environment.PRODUCTION
    online = is_online(device, settings)
    return [
        Check(
            "connected",
            online,
            "The agent is connected."
            if online
            else "The agent is not connected: start it with the launch command."
            if device.last_heartbeat_at is None
            else "The agent stopped sending heartbeats: check that it runs and reaches the portal.",
        ),
        Check(
            "gpus",
            bool(gpus),
            f"{count(len(gpus), 'GPU')} reported." if gpus else "The agent has reported no GPU.",
        ),
        Check(
            "verified",
            device.verified_at is not None,
            f"Proof of compute passed ({device.verified_tflops or 0:.3f} TFLOPS measured)."
            if device.verified_at
            else "Proof of compute has not passed yet.",
        ),
        Check(
            "not_blocked",
            device.state != DeviceState.BLOCKED,
            "Not blocked." if device.state != DeviceState.BLOCKED else _blocked_because(device.state_reason),
        ),
        Check(
            "real_gpus",
            not (device.simulated and production),
            "Simulated GPUs: for development only; never hireable in production."
            if device.simulated and production
            else ("Simulated GPUs (development mode)." if device.simulated else "Real GPUs."),
        ),
        Check(
            "isolated",
            device.isolation == "container" or not production,
            f"Customers' code runs in containers ({device.container_engine}, {device.worker_image})."
            if device.isolation == "container"
            else "No isolation: customers' code would run as the agent's user on this machine; start the "
            "agent with --isolation container."
            if production
            else "No isolation (development mode).",
        ),
        Check(
            "wallet",
            bool(owner and owner.wallet_address),
            "A payout wallet is linked."
            if owner and owner.wallet_address
            else "Link a payout wallet in your account to be paid.",
        ),
    ]


def _blocked_because(reason: str) -> str:
    if reason.lower().startswith("blocked"):
        return reason[:1].upper() + reason[1:]
    return f"Blocked: {reason}"


def is_hireable(checks: list[Check]) -> bool:
    return all(check.ok for check in checks)
