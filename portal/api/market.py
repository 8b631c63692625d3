"""The public marketplace: available capacity and quotes."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from portal.api.deps import SessionDep, SettingsDep
from portal.models import ConnectivityTier
from portal.schemas.clusters import ClusterSpecIn, OfferOut, QuoteLineOut, QuoteOut
from portal.security.access import PUBLIC
from portal.services.rentals import clusters, market

router = APIRouter(prefix="/market", tags=["marketplace"], dependencies=[Depends(PUBLIC)])


@router.get("/offers", summary="Available GPUs grouped by model, country and connectivity tier")
def offers(
    session: SessionDep,
    settings: SettingsDep,
    gpu_model: Annotated[str | None, Query(max_length=80)] = None,
    min_vram_mb: Annotated[int | None, Query(ge=0, le=10_000_000)] = None,
    min_gpus: Annotated[int | None, Query(ge=1, le=100_000)] = None,
    country: Annotated[str | None, Query(min_length=2, max_length=2)] = None,
    connectivity_tier: ConnectivityTier | None = None,
    max_price_micro: Annotated[int | None, Query(gt=0, le=1_000_000_000)] = None,
    min_reliability: Annotated[float | None, Query(ge=0, le=1)] = None,
    sort: Annotated[
        Literal["price", "model", "reliability", "free"] | None,
        Query(description="Order by price per GPU-hour, GPU model, reliability or free GPUs, as the page."),
    ] = None,
    order: Literal["asc", "desc"] = "asc",
) -> list[OfferOut]:
    filters = market.OfferFilters(
        gpu_model=gpu_model,
        min_vram_mb=min_vram_mb,
        min_gpus=min_gpus,
        country=country,
        connectivity_tier=connectivity_tier,
        max_price_micro=max_price_micro,
        min_reliability=min_reliability,
    )
    found = market.offers(session, settings, filters)
    if sort is not None:
        found = market.sort_offers(found, sort, descending=order == "desc")
    return [OfferOut(**offer.__dict__) for offer in found]


@router.post("/quote", summary="What a cluster would cost on the devices a deploy would book now")
def quote(body: ClusterSpecIn, session: SessionDep, settings: SettingsDep) -> QuoteOut:
    spec = clusters.validate(clusters.ClusterSpec(name="quote", **body.model_dump()))
    found = market.quote(session, settings, spec.placement(), spec.duration_hours)
    return QuoteOut(
        available=found.available,
        price_per_hour_micro=found.price_per_hour_micro,
        total_micro=found.total_micro,
        fee_micro=found.fee_micro,
        breakdown=[QuoteLineOut(**line) for line in found.breakdown],
        reason=found.reason,
        alternatives=found.alternatives,
    )
