"""Placement: which devices fit a cluster spec, ranked by price, packing and reliability, reserved atomically.

Concurrent deploys never book one device twice. On PostgreSQL a placement chooses among the candidates
no concurrent placement holds (``FOR UPDATE SKIP LOCKED``), so deploys in a burst choose apart; where
devices are few it keeps only the ones it books, and it waits on others' rows only for those, briefly.
On SQLite, whose writers are serialized anyway, a process-wide lock orders the placements. On both, the
booking itself is a conditional ``UPDATE ... WHERE state = 'ready'`` whose row count must match, so a
booking never lands on a device that changed under it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from psycopg.errors import LockNotAvailable
from sqlalchemy import Select, and_, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from portal.config import Environment, Settings
from portal.models import ConnectivityTier, Device, DeviceState, StateTransition, User
from portal.models.base import utcnow
from portal.services.errors import Unavailable
from portal.services.providers.devices import MISSED_HEARTBEATS_OFFLINE

# Candidates a placement reads (and holds while choosing): enough choice for packing, few enough that
# deploys at the same moment rarely collide.
CANDIDATES = 64
MAX_GPUS_PER_CLUSTER = 64
# Choices made again, each time a device chosen was taken meanwhile (a few milliseconds each), before
# answering "busy, retry".
RESERVE_ATTEMPTS = 32
# How long a placement waits, in all, for devices others hold when nothing else fits: a deploy's
# transaction holds them for milliseconds; a longer wait would hold this request's database connection.
LOCK_WAIT_MS = 2000
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
    session: Session, settings: Settings, spec: Spec, *, skip_held: bool = False
) -> list[Candidate] | None:
    """The best devices for ``spec`` as committed now; with ``skip_held`` (PostgreSQL) among those no other
    transaction holds, locking them until the caller's savepoint ends."""
    return choose(_candidates(session, settings, spec, skip_held=skip_held), spec.gpu_count)


def _candidates(session: Session, settings: Settings, spec: Spec, *, skip_held: bool) -> list[Candidate]:
    query = candidates_query(settings, spec)
    if skip_held:
        query = query.with_for_update(of=Device, skip_locked=True)
    return [Candidate(*row) for row in session.exec(query).all()]


def reserve(session: Session, settings: Settings, spec: Spec, reason: str) -> list[Candidate] | None:
    """Book devices for ``spec`` (state ``hired``) in the caller's transaction; None when they are short.
    The caller commits; until then the booked rows stay locked (PostgreSQL) or the database is held
    (SQLite). ``Unavailable`` (503, retry) when devices that would fit stay held by other deploys."""
    if session.get_bind().dialect.name != "postgresql":
        with _sqlite_placement:
            chosen = find(session, settings, spec)
            return chosen if chosen is not None and _book(session, _ids(chosen), reason) else None
    return _reserve_postgresql(session, settings, spec, reason)


def _reserve_postgresql(
    session: Session, settings: Settings, spec: Spec, reason: str
) -> list[Candidate] | None:
    """Choose among the candidates no other placement holds (``SKIP LOCKED``: deploys at the same moment
    choose apart), then book.

    Where the market is deep (a full set of candidates unheld), the candidates stay held until this
    deploy commits, milliseconds, and no one misses them. Where it is shallow they are let go as soon as
    the choice is made, and only the chosen devices are locked and booked, so a burst of deploys on a
    few hundred devices does not lock the market; a device taken in that moment is passed over at the
    next try. When nothing fits among the unheld devices but something would among all of them, the
    choice is made over all and its devices waited for, in id order (two waiting placements never
    deadlock), at most ``LOCK_WAIT_MS`` in all: "busy, retry" (503) past that, so no request holds its
    database connection long on another's rows."""
    deadline = time.monotonic() + LOCK_WAIT_MS / 1000
    for _ in range(RESERVE_ATTEMPTS):
        choosing = session.begin_nested()
        candidates = _candidates(session, settings, spec, skip_held=True)
        chosen = choose(candidates, spec.gpu_count)
        if chosen is not None and len(candidates) == CANDIDATES and _book(session, _ids(chosen), reason):
            choosing.commit()
            return chosen
        choosing.rollback()
        wait = chosen is None
        if wait:
            chosen = find(session, settings, spec)
            if chosen is None:
                return None
        ids = _ids(chosen)
        booking = session.begin_nested()
        try:
            locked = _lock(session, ids, wait_ms=int((deadline - time.monotonic()) * 1000) if wait else None)
        except Unavailable:
            booking.rollback()
            raise
        if locked == len(ids) and _book(session, ids, reason):
            booking.commit()
            return chosen
        booking.rollback()
    raise busy()


def _lock(session: Session, ids: list[uuid.UUID], *, wait_ms: int | None) -> int:
    """Lock these devices' rows in id order (so two waiting placements never deadlock); how many were
    locked: those no one held, or with ``wait_ms`` all of them, waiting that long at most for holders."""
    query = select(Device.id).where(col(Device.id).in_(ids)).order_by(Device.id)
    if wait_ms is None:
        return len(session.exec(query.with_for_update(skip_locked=True)).all())
    if wait_ms <= 0:
        raise busy()
    session.execute(text(f"SET LOCAL lock_timeout = {wait_ms}"))
    try:
        locked = len(session.exec(query.with_for_update()).all())
    except OperationalError as waited_too_long:
        if isinstance(waited_too_long.orig, LockNotAvailable):
            raise busy() from waited_too_long
        raise
    session.execute(text("SET LOCAL lock_timeout = DEFAULT"))
    return locked


def busy() -> Unavailable:
    """Nothing was changed: other deploys hold the devices, or the deploys' turns, for now."""
    return Unavailable(
        "Other deploys are booking these GPUs right now; try again in a moment.",
        code="placement_busy",
        headers={"Retry-After": "1"},
    )


def _ids(chosen: Sequence[Candidate]) -> list[uuid.UUID]:
    return [c.device_id for c in chosen]


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
