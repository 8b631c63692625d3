"""Overlay addresses: one per device, from ``PORTAL_OVERLAY_CIDR``, allocated once and kept.

A device keeps its address across renewals, re-registrations and token rotations; no other device gets it
while the device exists. The network and broadcast addresses, the portal's node and the lighthouses are
never given out.

Allocation is race-free on SQLite and PostgreSQL alike without locks: the unique index on
``devices.overlay_ip`` refuses a second holder, so each attempt is its own short transaction that sets the
address only where the device has none yet, and a collision is retried with another address. Candidates
are random (with 100,000 devices in a /10 fewer than 3 in 100 collide), and after a few misses they are
drawn from the addresses the database says are free, so a nearly full network still fills up.

The last quarter of the network is for customers' machines (``connections``): new devices never get an
address there (one allocated there before stays its device's, and connections skip it).
"""

from __future__ import annotations

import ipaddress
import secrets
import uuid

from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from portal.config import Settings
from portal.infra.db import session_scope
from portal.models import Device
from portal.services.errors import Conflict, NotFound, Unavailable

RANDOM_TRIES = 8
MAX_TRIES = 64


def reserved(settings: Settings) -> set[ipaddress.IPv4Address]:
    """Addresses no device gets: the network's and its broadcast, the portal's node, the lighthouses."""
    network = settings.overlay_network
    return {
        network.network_address,
        network.broadcast_address,
        settings.portal_overlay_ip,
        *(lighthouse.overlay_ip for lighthouse in settings.lighthouses),
    }


def usable(settings: Settings, address: str | None) -> bool:
    """Whether a stored address still fits the overlay as configured now."""
    if address is None:
        return False
    try:
        parsed = ipaddress.IPv4Address(address)
    except ValueError:
        return False
    return parsed in settings.overlay_network and parsed not in reserved(settings)


def assign(engine: Engine, settings: Settings, device_id: uuid.UUID) -> ipaddress.IPv4Address:
    """The device's overlay address, allocated now if it has none (or one the overlay no longer allows:
    the CIDR changed, or a lighthouse took it). Commits on its own engine."""
    taken_by_others: set[str] | None = None
    for attempt in range(MAX_TRIES):
        with session_scope(engine) as session:
            row = session.exec(select(Device.id, Device.overlay_ip).where(Device.id == device_id)).first()
        if row is None:
            raise NotFound("No such device.")
        held = row[1]
        if usable(settings, held):
            return ipaddress.IPv4Address(held)
        if attempt >= RANDOM_TRIES and taken_by_others is None:
            taken_by_others = _taken(engine)
        candidate = pick(settings, taken_by_others, device_span(settings))
        unchanged = col(Device.overlay_ip).is_(None) if held is None else col(Device.overlay_ip) == held
        try:
            with session_scope(engine) as session:
                session.execute(
                    update(Device)
                    .where(col(Device.id) == device_id)
                    .where(unchanged)
                    .values(overlay_ip=str(candidate))
                )
        except IntegrityError:
            # Another device holds it (or took it a moment ago): try another address.
            if taken_by_others is not None:
                taken_by_others.add(str(candidate))
            continue
        # Set, or another request of this device set one first: the next read says which.
    raise Unavailable("No overlay address could be allocated; try again.", code="overlay_busy")


def device_span(settings: Settings) -> tuple[int, int]:
    """Offsets into the network devices draw from: the first three quarters."""
    total = settings.overlay_network.num_addresses
    return 0, total - total // 4


def connection_span(settings: Settings) -> tuple[int, int]:
    """Offsets customers' machines draw from: the last quarter."""
    total = settings.overlay_network.num_addresses
    return total - total // 4, total // 4


def pick(settings: Settings, taken: set[str] | None, span: tuple[int, int]) -> ipaddress.IPv4Address:
    network, excluded = settings.overlay_network, reserved(settings)
    first, count = span
    if taken is None:
        for _ in range(16):  # a tiny network may be nearly all reserved: then walk it
            candidate = network.network_address + first + secrets.randbelow(count)
            if candidate not in excluded:
                return candidate
        taken = set()
    # Walk from a random offset to the first free address: uniform enough, and one pass at most.
    start = secrets.randbelow(count)
    for step in range(count):
        candidate = network.network_address + first + (start + step) % count
        if candidate not in excluded and str(candidate) not in taken:
            return candidate
    raise _full(settings)


def _taken(engine: Engine) -> set[str]:
    with session_scope(engine) as session:
        return set(session.exec(select(Device.overlay_ip).where(col(Device.overlay_ip).is_not(None))).all())


def _full(settings: Settings) -> Conflict:
    return Conflict(
        f"Every address of the overlay {settings.overlay_cidr} is taken; the operator must widen "
        "PORTAL_OVERLAY_CIDR.",
        code="overlay_full",
    )
