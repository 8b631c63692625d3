"""The marketplace page (anyone) and the deploy wizard (customers): offers, a live quote, deploy."""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from typing import Any

import reflex as rx
from sqlalchemy.exc import SQLAlchemyError

from portal import parts
from portal.infra.db import session_scope
from portal.models import ConnectivityTier, Role
from portal.services.display import reliability, usd, usd_rate, words
from portal.services.errors import DomainError
from portal.services.providers.gpu_catalog import CATALOG
from portal.services.rentals import clusters, market
from portal.state.session import SessionState, for_anyone, for_users, principal

logger = logging.getLogger(__name__)
ANY = "any"
TIER_CHOICES = [
    {"value": ANY, "label": "Any"},
    *({"value": t.value, "label": words(t)} for t in ConnectivityTier),
]


# The marketplace's orders, as the sort control names them; the URL carries ``sort`` and ``order``.
SORT_CHOICES = [
    {"value": "price-asc", "label": "Price per GPU-hour, lowest first"},
    {"value": "price-desc", "label": "Price per GPU-hour, highest first"},
    {"value": "model-asc", "label": "GPU model, A to Z"},
    {"value": "model-desc", "label": "GPU model, Z to A"},
    {"value": "reliability-desc", "label": "Reliability, highest first"},
    {"value": "reliability-asc", "label": "Reliability, lowest first"},
    {"value": "free-desc", "label": "Free GPUs, most first"},
    {"value": "free-asc", "label": "Free GPUs, fewest first"},
]
DEFAULT_SORT = "price-asc"


def sort_from_query(params: dict[str, str]) -> str:
    """The sort a link asks for (``?sort=reliability&order=desc``); the default for anything else."""
    chosen = f"{params.get('sort', '')}-{params.get('order', 'asc')}"
    return chosen if any(choice["value"] == chosen for choice in SORT_CHOICES) else DEFAULT_SORT


def _offers(filters: market.OfferFilters, sort: str = DEFAULT_SORT) -> list[dict[str, Any]]:
    by, _, order = sort.partition("-")
    with session_scope(parts.current().engine) as session:
        found = market.offers(session, parts.current().settings, filters)
    found = market.sort_offers(found, by, descending=order == "desc")
    return [
        {
            "gpu_model": o.gpu_model,
            "vram": f"{o.vram_mb / 1024:.0f} GiB",
            "country": o.country,
            "tier": words(o.connectivity_tier),
            "devices": o.devices,
            "gpus": o.gpus,
            "available": f"{o.gpus} GPU{'s' if o.gpus != 1 else ''} on {o.devices} "
            + f"device{'s' if o.devices != 1 else ''}",
            "largest": o.largest_device_gpus,
            # "from" when the group's devices ask different prices: the cheapest is placed first.
            "price": ("" if o.min_price_per_gpu_hour_micro == o.max_price_per_gpu_hour_micro else "from ")
            + usd_rate(o.min_price_per_gpu_hour_micro),
            "reliability": reliability(o.reliability, new=o.new),
            "simulated": o.simulated,
        }
        for o in found
    ]


def _number(value: Any, kind: type = int) -> Any:
    """The number typed, or None for nothing, not a number, or not a finite one."""
    try:
        number = kind(str(value).strip()) if str(value).strip() else None
    except ValueError:
        return None
    return number if number is None or math.isfinite(number) else None


class MarketState(rx.State):
    offers: list[dict[str, Any]] = []
    loaded: bool = False
    error: str = ""
    gpu_model: str = ANY
    country: str = ""
    tier: str = ANY
    max_price: str = ""
    min_gpus: str = ""
    min_vram: str = ""
    min_reliability: str = ""
    sort: str = DEFAULT_SORT

    @rx.var
    def models(self) -> list[str]:
        return [ANY, *CATALOG]

    @rx.var
    def sorts(self) -> list[dict[str, str]]:
        return SORT_CHOICES

    @rx.var
    def tiers(self) -> list[dict[str, str]]:
        return TIER_CHOICES

    def _filters(self) -> market.OfferFilters:
        price = _number(self.max_price, float)
        least_reliable = _number(self.min_reliability, float)
        vram_gib = _number(self.min_vram, float)
        return market.OfferFilters(
            min_vram_mb=round(vram_gib * 1024) if vram_gib else None,
            gpu_model=None if self.gpu_model == ANY else self.gpu_model,
            min_gpus=_number(self.min_gpus),
            country=self.country.strip().upper()[:2] or None,
            connectivity_tier=None if self.tier == ANY else self.tier,
            max_price_micro=round(price * 1_000_000) if price else None,
            min_reliability=least_reliable / 100 if least_reliable else None,
        )

    @rx.event
    @for_anyone
    async def tick(self, _now: str) -> None:
        """The page's clock: Reflex hands the handler the moment by its parameter's name."""
        await self.refresh()

    @rx.event
    @for_anyone
    async def refresh(self) -> None:
        # The URL holds the order, so a shared or reloaded link shows the offers as they were sorted.
        self.sort = sort_from_query(self.router.url.query_parameters)
        try:
            self.offers = await asyncio.to_thread(_offers, self._filters(), self.sort)
            self.error, self.loaded = "", True
        except SQLAlchemyError:
            logger.exception("offers unavailable")
            self.error = "The offers cannot be read right now; retrying."

    @rx.event
    @for_anyone
    async def set_filter(self, name: str, value: str) -> None:
        if name in ("gpu_model", "country", "tier", "max_price", "min_gpus", "min_vram", "min_reliability"):
            setattr(self, name, value)
        await self.refresh()

    @rx.event
    @for_anyone
    async def set_sort(self, value: str) -> Any:
        """Put the order in the URL; the page's load then sorts by it (and a copied link keeps it)."""
        by, _, order = value.partition("-")
        if sort_from_query({"sort": by, "order": order}) == value:
            self.sort = value
            return rx.redirect(f"/market?sort={by}&order={order}", replace=True)
        return None


def _quote(spec: clusters.ClusterSpec) -> dict[str, Any]:
    with session_scope(parts.current().engine) as session:
        found = market.quote(session, parts.current().settings, spec.placement(), spec.duration_hours)
    return {
        "available": found.available,
        "per_hour": usd_rate(found.price_per_hour_micro),
        "total": usd(found.total_micro),
        "fee": usd(found.fee_micro),
        "reason": found.reason,
        "spread": found.spread,
        "lines": [
            {
                "what": f"{line['gpus']} x {line['gpu_model']} in {line['country']} "
                f"({words(line['connectivity_tier']).lower()} connectivity)",
                "rate": usd_rate(line["price_per_gpu_hour_micro"], "/GPU-h"),
                "subtotal": usd(line["subtotal_micro"]),
            }
            for line in found.breakdown
        ],
        "alternatives": [
            f"{a['gpus']} x {a['gpu_model']} in {', '.join(a['countries'])}" for a in found.alternatives
        ],
    }


def _deploy(owner_id: uuid.UUID, spec: clusters.ClusterSpec) -> str:
    p = parts.current()
    with session_scope(p.engine) as session:
        return str(clusters.deploy(session, p.settings, p.followups, owner_id, spec).id)


class DeployState(SessionState):
    name: str = "my-cluster"
    purpose: str = "general"
    gpu_model: str = "H100-80GB"
    gpu_count: str = "2"
    countries: str = ""
    tier: str = ANY
    hours: str = "1"
    autoscale: bool = False
    min_workers: str = "0"
    max_workers: str = "2"
    quote: dict[str, Any] = {}
    error: str = ""
    alternatives: list[str] = []
    deploying: bool = False
    forbidden: bool = False

    @rx.var
    def models(self) -> list[str]:
        return list(CATALOG)

    @rx.var
    def tiers(self) -> list[dict[str, str]]:
        return TIER_CHOICES

    @rx.var
    def can_deploy(self) -> bool:
        return bool(self.quote.get("available")) and not self.deploying and not self.forbidden

    def _spec(self) -> clusters.ClusterSpec:
        return clusters.validate(
            clusters.ClusterSpec(
                name=self.name,
                purpose=self.purpose,
                gpu_model=self.gpu_model,
                gpu_count=_number(self.gpu_count) or 0,
                duration_hours=_number(self.hours) or 0,
                countries=tuple(c for c in self.countries.replace(",", " ").split() if c),
                connectivity_tier=None if self.tier == ANY else self.tier,
                min_workers=(_number(self.min_workers) or 0) if self.autoscale else None,
                max_workers=(_number(self.max_workers) or 0) if self.autoscale else None,
            )
        )

    async def _requote(self) -> None:
        try:
            self.quote = await asyncio.to_thread(_quote, self._spec())
            self.error = ""
        except DomainError as error:
            self.quote, self.error = {}, error.message

    @rx.event
    @for_users()
    async def open(self) -> None:
        self.forbidden = Role.CUSTOMER not in principal().roles
        params = self.router.url.query_parameters
        if params.get("gpu_model") in CATALOG:
            self.gpu_model = params["gpu_model"]
        if params.get("country"):
            self.countries = params["country"][:2]
        self.alternatives, self.deploying = [], False
        await self._requote()

    @rx.event
    @for_users()
    async def set_field(self, name: str, value: str) -> None:
        if name in (
            "name",
            "purpose",
            "gpu_model",
            "gpu_count",
            "countries",
            "tier",
            "hours",
            "min_workers",
            "max_workers",
        ):
            setattr(self, name, value)
        await self._requote()

    @rx.event
    @for_users()
    async def set_autoscale(self, value: bool) -> None:
        self.autoscale = value
        await self._requote()

    @rx.event
    @for_users(Role.CUSTOMER)
    async def deploy(self) -> Any:
        owner_id = principal().user_id
        self.deploying, self.alternatives = True, []
        yield
        try:
            cluster_id = await asyncio.to_thread(_deploy, owner_id, self._spec())
        except DomainError as error:
            self.error = error.message
            available = (error.details or {}).get("available", [])
            self.alternatives = [
                f"{a['gpus']} x {a['gpu_model']} in {', '.join(a['countries'])}" for a in available
            ]
            return
        except SQLAlchemyError:
            logger.exception("deploy failed")
            self.error = "The deploy could not be saved; nothing was booked. Try again in a moment."
            return
        finally:
            self.deploying = False
        yield rx.redirect(f"/cluster/{cluster_id}")
