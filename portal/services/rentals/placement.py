"""Placement: which devices fit a cluster spec, ranked by price, packing and reliability, reserved atomically.

Concurrent deploys never book one device twice. On PostgreSQL the candidates are locked with
``FOR UPDATE SKIP LOCKED`` (a second deploy passes over rows the first one holds); on SQLite, whose
writers are serialized anyway, a process-wide lock orders the placements. On both, the booking itself is a
conditional ``UPDATE ... WHERE state = 'ready'`` whose row count must match, so a booking never lands on a
device that changed under it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import Select, and_, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from portal.config import Environment, Settings
from portal.models import ConnectivityTier, Device, DeviceState, StateTransition, User
from portal.models.base import utcnow
from portal.services.providers.devices import MISSED_HEARTBEATS_OFFLINE

# Rows locked per placement: enough choice for packing, few enough that concurrent deploys rarely collide.
CANDIDATES = 64
MAX_GPUS_PER_CLUSTER = 64
TIER_RANK = {tier: rank for rank, tier in enumerate(reversed(list(ConnectivityTier)))}
_sqlite_placement = threading.Lock()


@dataclass(frozen=True)
class Spec:
    gpu_model: str
    gpu_count: int
    countries: tuple[str, ...] = ()
    connectivity_tier: str | None = None
    max_price_per_gpu_hour_micro: int | None = None
    min_reliability: float = 0.0
    exclude: frozenset[uuid.UUID] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Candidate:
    device_id: uuid.UUID
    gpus: int
    price_per_gpu_hour_micro: int
    reliability: float
    country: str
    connectivity_tier: str


def tiers_at_least(tier: str) -> list[str]:
    return [t for t, rank in TIER_RANK.items() if rank >= TIER_RANK[ConnectivityTier(tier)]]


def hireable_clause(settings: Settings) -> list:
    """The SQL form of the eligibility checklist: ready, online, verified, a payout wallet, real GPUs and
    customers' code in containers in production. Keep in step with ``devices.eligibility``."""
    fresh = utcnow() - timedelta(seconds=settings.heartbeat_interval_s * MISSED_HEARTBEATS_OFFLINE)
    clauses = [
        Device.state == DeviceState.READY,
        col(Device.verified_at).is_not(None),
        col(Device.last_heartbeat_at) > fresh,
        Device.gpu_count > 0,
        col(User.wallet_address).is_not(None),
    ]
    if settings.environment is Environment.PRODUCTION:
        clauses.append(col(Device.simulated).is_(False))
        clauses.append(Device.isolation == "container")
    return clauses


def candidates_query(settings: Settings, spec: Spec) -> Select:
    price = Device.hourly_price_micro
    query = (
        select(
            Device.id,
            Device.gpu_count,
            price,
            Device.reliability,
            Device.country,
            Device.connectivity_tier,
        )
        .join(User, col(User.id) == Device.owner_id)
        .where(
            and_(*hireable_clause(settings)),
            Device.gpu_model == spec.gpu_model,
            Device.gpu_count <= spec.gpu_count,
        )
    )
    if spec.countries:
        query = query.where(col(Device.country).in_(spec.countries))
    if spec.connectivity_tier:
        query = query.where(col(Device.connectivity_tier).in_(tiers_at_least(spec.connectivity_tier)))
    if spec.max_price_per_gpu_hour_micro is not None:
        query = query.where(price <= spec.max_price_per_gpu_hour_micro)
    if spec.min_reliability:
        query = query.where(Device.reliability >= spec.min_reliability)
    if spec.exclude:
        query = query.where(col(Device.id).not_in(spec.exclude))
    return query.order_by(
        price, col(Device.reliability).desc(), col(Device.gpu_count).desc(), Device.id
    ).limit(CANDIDATES)


def choose(candidates: Sequence[Candidate], gpu_count: int) -> list[Candidate] | None:
    """The devices whose GPUs add up to exactly ``gpu_count`` at the lowest price; among equal prices the
    fewest nodes (packing), then the most reliable. None when no combination fits.

    A small knapsack over the ranked candidates: ``best[w]`` is the best way found to hold ``w`` GPUs.
    """
    best: list[tuple[tuple[int, int, float], list[Candidate]] | None] = [None] * (gpu_count + 1)
    best[0] = ((0, 0, 0.0), [])
    for candidate in candidates:
        for held in range(gpu_count - candidate.gpus, -1, -1):
            current = best[held]
            if current is None:
                continue
            (cost, nodes, unreliability), chosen = current
            key = (
                cost + candidate.price_per_gpu_hour_micro * candidate.gpus,
                nodes + 1,
                unreliability + (1.0 - candidate.reliability),
            )
            target = held + candidate.gpus
            if best[target] is None or key < best[target][0]:
                best[target] = (key, [*chosen, candidate])
    found = best[gpu_count]
    return found[1] if found else None


def find(
    session: Session, settings: Settings, spec: Spec, *, lock: str | None = None
) -> list[Candidate] | None:
    """The best devices for ``spec``; ``lock`` ("skip" or "wait") locks the candidates on PostgreSQL."""
    query = candidates_query(settings, spec)
    if lock and session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(of=Device, skip_locked=lock == "skip")
    rows = session.exec(query).all()
    return choose([Candidate(*row) for row in rows], spec.gpu_count)


@contextmanager
def _serialized(session: Session) -> Iterator[None]:
    if session.get_bind().dialect.name == "sqlite":
        with _sqlite_placement:
            yield
    else:
        yield


def reserve(session: Session, settings: Settings, spec: Spec, reason: str) -> list[Candidate] | None:
    """Book devices for ``spec`` (state ``hired``) in the caller's transaction; None when they are short.

    PostgreSQL: first over the candidates no concurrent placement holds (``SKIP LOCKED``, the fast path
    under load); when those do not fit, which in a small pool may only mean others hold them for now,
    again waiting for those locks (``FOR UPDATE`` re-reads a row once its holder commits, so a device
    booked meanwhile drops out). Each try runs in a savepoint whose rollback releases its locks. The
    caller commits; until then the booked rows stay locked (PostgreSQL) or the database is held (SQLite).
    """
    tries = ("skip", "wait") if session.get_bind().dialect.name == "postgresql" else (None,)
    with _serialized(session):
        for lock in tries:
            savepoint = session.begin_nested()
            chosen = find(session, settings, spec, lock=lock)
            if chosen is not None and _book(session, [c.device_id for c in chosen], reason):
                savepoint.commit()
                return chosen
            savepoint.rollback()
        return None


def _book(session: Session, device_ids: list[uuid.UUID], reason: str) -> bool:
    """Move the devices from ready to hired; False unless all of them were still ready."""
    booked = session.execute(
        update(Device)
        .where(col(Device.id).in_(device_ids), Device.state == DeviceState.READY)
        .values(state=DeviceState.HIRED, state_reason=reason[:500])
        .execution_options(synchronize_session=False)
    ).rowcount
    if booked != len(device_ids):
        return False
    session.add_all(
        StateTransition(
            entity_type="device",
            entity_id=str(device_id),
            from_state=DeviceState.READY,
            to_state=DeviceState.HIRED,
            reason=reason[:500],
        )
        for device_id in device_ids
    )
    # Loaded copies of these devices would show the old state otherwise.
    for loaded in list(session.identity_map.values()):
        if isinstance(loaded, Device) and loaded.id in device_ids:
            set_committed_value(loaded, "state", DeviceState.HIRED)
            set_committed_value(loaded, "state_reason", reason[:500])
    return True
