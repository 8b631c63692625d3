"""The marketplace: what capacity is available now, and what a cluster would cost."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, case, func
from sqlmodel import Session, col, select

from portal.config import Settings
from portal.models import Device, Gpu, User
from portal.models.base import utcnow
from portal.services.display import count
from portal.services.errors import InvalidInput
from portal.services.money.escrow import fee_of
from portal.services.providers.gpu_catalog import CATALOG
from portal.services.providers.reliability import NEW_FOR
from portal.services.rentals import placement


@dataclass(frozen=True)
class OfferFilters:
    gpu_model: str | None = None
    min_vram_mb: int | None = None
    min_gpus: int | None = None
    country: str | None = None
    connectivity_tier: str | None = None
    max_price_micro: int | None = None
    min_reliability: float | None = None


@dataclass(frozen=True)
class Offer:
    gpu_model: str
    vram_mb: int
    country: str
    connectivity_tier: str
    devices: int
    gpus: int
    largest_device_gpus: int
    min_price_per_gpu_hour_micro: int
    max_price_per_gpu_hour_micro: int
    reliability: float
    simulated: bool
    new: bool = False  # every device of the group is too young for its score to mean much


@dataclass(frozen=True)
class Quote:
    available: bool
    price_per_hour_micro: int
    total_micro: int
    fee_micro: int
    breakdown: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""
    alternatives: list[dict[str, Any]] = field(default_factory=list)

    @property
    def spread(self) -> str:
        """A sentence when the GPUs quoted are in more than one country (their nodes then talk across
        borders, slower), saying how to keep them in one; "" when they are in one."""
        countries = sorted({line["country"] for line in self.breakdown})
        if len(countries) < 2:
            return ""
        return (
            f"These GPUs are in {len(countries)} countries ({', '.join(countries)}): their nodes talk across "
            "borders. Name one under Countries to keep them together."
        )


def _vram_by_model(session: Session) -> dict[str, int]:
    known = {name: model.memory_mb for name, model in CATALOG.items()}
    reported = session.exec(select(Gpu.model, func.max(Gpu.memory_mb)).group_by(Gpu.model)).all()
    return known | {model: memory for model, memory in reported if model not in known}


def offers(session: Session, settings: Settings, filters: OfferFilters) -> list[Offer]:
    """Hireable capacity grouped by model, country and connectivity tier, cheapest first."""
    price = Device.hourly_price_micro
    query = (
        select(
            Device.gpu_model,
            Device.country,
            Device.connectivity_tier,
            func.count(),
            func.sum(Device.gpu_count),
            func.max(Device.gpu_count),
            func.min(price),
            func.max(price),
            func.avg(Device.reliability),
            func.max(case((col(Device.simulated), 1), else_=0)),
            func.max(case((col(Device.created_at) <= utcnow() - NEW_FOR, 1), else_=0)),
        )
        .join(User, col(User.id) == Device.owner_id)
        .where(and_(*placement.hireable_clause(settings)))
        .group_by(Device.gpu_model, Device.country, Device.connectivity_tier)
    )
    if filters.gpu_model:
        query = query.where(Device.gpu_model == filters.gpu_model)
    if filters.country:
        query = query.where(Device.country == filters.country.upper())
    if filters.connectivity_tier:
        query = query.where(
            col(Device.connectivity_tier).in_(placement.tiers_at_least(filters.connectivity_tier))
        )
    if filters.max_price_micro is not None:
        query = query.where(price <= filters.max_price_micro)
    if filters.min_reliability is not None:
        query = query.where(Device.reliability >= filters.min_reliability)
    vram = _vram_by_model(session)
    found = [
        Offer(
            gpu_model=model,
            vram_mb=vram.get(model, 0),
            country=country,
            connectivity_tier=tier,
            devices=devices,
            gpus=int(gpus),
            largest_device_gpus=largest,
            min_price_per_gpu_hour_micro=int(low),
            max_price_per_gpu_hour_micro=int(high),
            reliability=round(float(score), 4),
            simulated=bool(simulated),
            new=not established,
        )
        for model, country, tier, devices, gpus, largest, low, high, score, simulated, established in (
            session.exec(query).all()
        )
    ]
    if filters.min_gpus:
        found = [offer for offer in found if offer.gpus >= filters.min_gpus]
    if filters.min_vram_mb:
        found = [offer for offer in found if offer.vram_mb >= filters.min_vram_mb]
    return sorted(found, key=lambda o: (o.min_price_per_gpu_hour_micro, -o.gpus, o.gpu_model, o.country))


# How the marketplace may order its offers; each also sorts the other way.
OFFER_SORTS: dict[str, str] = {
    "price": "Price per GPU-hour",
    "model": "GPU model",
    "reliability": "Reliability",
    "free": "Free GPUs",
}


def sort_offers(found: list[Offer], by: str = "price", *, descending: bool = False) -> list[Offer]:
    """``found`` ordered by one of ``OFFER_SORTS``; ties keep the cheapest-first order. Groups too new to
    have a reliability score come after the scored ones in either direction: "new" is not a score."""
    if by not in OFFER_SORTS:
        raise InvalidInput(f"Sort by one of: {', '.join(OFFER_SORTS)}.", details={"field": "sort"})
    # Python's sort is stable, also reversed: the tie-break order set first survives the main sort.
    ordered = sorted(found, key=lambda o: (o.min_price_per_gpu_hour_micro, -o.gpus, o.gpu_model, o.country))
    if by == "price":
        return sorted(ordered, key=lambda o: o.min_price_per_gpu_hour_micro, reverse=descending)
    if by == "model":
        return sorted(ordered, key=lambda o: o.gpu_model.casefold(), reverse=descending)
    if by == "free":
        return sorted(ordered, key=lambda o: o.gpus, reverse=descending)
    ordered = sorted(ordered, key=lambda o: o.reliability, reverse=descending)
    return sorted(ordered, key=lambda o: o.new)


def alternatives(
    session: Session, settings: Settings, spec: placement.Spec, limit: int = 5
) -> list[dict[str, Any]]:
    """What is available instead when a spec cannot be met: the same model anywhere, then other models."""
    by_model: dict[str, dict[str, Any]] = {}
    for offer in offers(session, settings, OfferFilters()):
        entry = by_model.setdefault(
            offer.gpu_model,
            {
                "gpu_model": offer.gpu_model,
                "gpus": 0,
                "countries": set(),
                "min_price_per_gpu_hour_micro": None,
            },
        )
        entry["gpus"] += offer.gpus
        entry["countries"].add(offer.country)
        low = entry["min_price_per_gpu_hour_micro"]
        entry["min_price_per_gpu_hour_micro"] = min(
            low or offer.min_price_per_gpu_hour_micro, offer.min_price_per_gpu_hour_micro
        )
    ranked = sorted(by_model.values(), key=lambda e: (e["gpu_model"] != spec.gpu_model, -e["gpus"]))
    return [{**entry, "countries": sorted(entry["countries"])} for entry in ranked[:limit]]


def free_gpus(session: Session, settings: Settings, spec: placement.Spec) -> tuple[int, int]:
    """How many GPUs of the spec's model are free now: with its filters (countries, connectivity, price),
    and anywhere."""
    anywhere = sum(o.gpus for o in offers(session, settings, OfferFilters(gpu_model=spec.gpu_model)))
    if not (spec.countries or spec.connectivity_tier or spec.max_price_per_gpu_hour_micro):
        return anywhere, anywhere
    matching = sum(
        offer.gpus
        for country in spec.countries or (None,)
        for offer in offers(
            session,
            settings,
            OfferFilters(
                gpu_model=spec.gpu_model,
                country=country,
                connectivity_tier=spec.connectivity_tier,
                max_price_micro=spec.max_price_per_gpu_hour_micro,
            ),
        )
    )
    return matching, anywhere


def free_gpus_said(session: Session, settings: Settings, spec: placement.Spec) -> str:
    """What is free of the model, for a refusal: ``only 3 H100-80GB GPUs are free now with these filters
    (8 in all)``; it says when the GPUs are there but no set of whole devices adds up to the count."""
    matching, anywhere = free_gpus(session, settings, spec)
    model = f"{spec.gpu_model} GPU"
    filtered = ""
    if spec.countries or spec.connectivity_tier or spec.max_price_per_gpu_hour_micro:
        filtered = " with these filters" + (f" ({anywhere} in all)" if anywhere != matching else "")
    if matching == 0:
        return f"no {model} is free now{filtered}"
    verb = "is" if matching == 1 else "are"
    if matching < spec.gpu_count:
        return f"only {count(matching, model)} {verb} free now{filtered}"
    return (
        f"{count(matching, model)} {verb} free now{filtered}, but devices are rented whole and none add up "
        f"to exactly {spec.gpu_count}"
    )


def quote(session: Session, settings: Settings, spec: placement.Spec, duration_hours: int) -> Quote:
    """The price of a cluster placed on the devices a deploy would book now (nothing is booked)."""
    chosen = placement.find(session, settings, spec)
    if chosen is None:
        return Quote(
            available=False,
            price_per_hour_micro=0,
            total_micro=0,
            fee_micro=0,
            reason=f"No set of available {spec.gpu_model} devices holds exactly {spec.gpu_count} GPUs "
            f"with these filters: {free_gpus_said(session, settings, spec)}.",
            alternatives=alternatives(session, settings, spec),
        )
    lines: dict[tuple[int, str, str], dict[str, Any]] = {}
    for candidate in chosen:
        key = (candidate.price_per_gpu_hour_micro, candidate.country, candidate.connectivity_tier)
        line = lines.setdefault(
            key,
            {
                "gpu_model": spec.gpu_model,
                "country": candidate.country,
                "connectivity_tier": candidate.connectivity_tier,
                "price_per_gpu_hour_micro": candidate.price_per_gpu_hour_micro,
                "devices": 0,
                "gpus": 0,
            },
        )
        line["devices"] += 1
        line["gpus"] += candidate.gpus
    breakdown = []
    for line in lines.values():
        per_hour = line["price_per_gpu_hour_micro"] * line["gpus"]
        breakdown.append({**line, "per_hour_micro": per_hour, "subtotal_micro": per_hour * duration_hours})
    per_hour = sum(line["per_hour_micro"] for line in breakdown)
    total = per_hour * duration_hours
    return Quote(
        available=True,
        price_per_hour_micro=per_hour,
        total_micro=total,
        fee_micro=fee_of(total, settings.platform_fee_bps),
        breakdown=breakdown,
    )
