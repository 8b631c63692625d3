"""The marketplace's order (issue 20): by price per GPU-hour, GPU model, reliability or free GPUs, either way,
and the order a link asks for."""

from __future__ import annotations

from datetime import timedelta

import pytest
from solders.keypair import Keypair
from sqlmodel import Session

from portal.models import DeviceState, Role
from portal.models.base import utcnow
from portal.services.errors import InvalidInput
from portal.services.rentals import market
from portal.state.market import DEFAULT_SORT, SORT_CHOICES, sort_from_query
from tests.conftest import settings_for
from tests.factories import make_device, make_user

SETTINGS = settings_for()


def offer_group(
    session: Session,
    provider_id,
    model: str,
    country: str,
    gpus: int,
    price: int,
    reliability: float,
    *,
    new: bool = False,
) -> None:
    """One hireable device: one offer group of its model and country."""
    device = make_device(
        session, provider_id, state=DeviceState.READY, gpus=gpus, model=model, country=country
    )
    device.verified_at = utcnow()
    device.price_per_gpu_hour_micro = device.hourly_price_micro = price
    device.reliability = reliability
    # Older than the grace a new device gets before its score means anything.
    device.created_at = utcnow() - (timedelta(0) if new else timedelta(days=60))
    session.add(device)


def seed_offers(session: Session) -> None:
    provider = make_user(session, Role.PROVIDER)
    provider.wallet_address = str(Keypair().pubkey())
    session.add(provider)
    offer_group(session, provider.id, "H100-80GB", "DE", 2, 2_500_000, 0.99)
    offer_group(session, provider.id, "A100-80GB", "FR", 4, 1_500_000, 0.90)
    offer_group(session, provider.id, "RTX-4090", "NL", 1, 400_000, 0.95)
    offer_group(session, provider.id, "L40S", "PL", 3, 900_000, 0.0, new=True)
    session.commit()


@pytest.fixture
def offers(engine) -> list[market.Offer]:
    with Session(engine) as session:
        seed_offers(session)
        return market.offers(session, SETTINGS, market.OfferFilters())


def order(found: list[market.Offer]) -> list[str]:
    return [offer.gpu_model for offer in found]


def test_offers_sort_by_price_model_reliability_and_free_gpus_both_ways(offers):
    assert order(market.sort_offers(offers, "price")) == ["RTX-4090", "L40S", "A100-80GB", "H100-80GB"]
    assert order(market.sort_offers(offers, "price", descending=True)) == [
        "H100-80GB",
        "A100-80GB",
        "L40S",
        "RTX-4090",
    ]
    assert order(market.sort_offers(offers, "model")) == ["A100-80GB", "H100-80GB", "L40S", "RTX-4090"]
    assert order(market.sort_offers(offers, "model", descending=True)) == [
        "RTX-4090",
        "L40S",
        "H100-80GB",
        "A100-80GB",
    ]
    assert order(market.sort_offers(offers, "free", descending=True)) == [
        "A100-80GB",
        "L40S",
        "H100-80GB",
        "RTX-4090",
    ]
    assert order(market.sort_offers(offers, "free")) == ["RTX-4090", "H100-80GB", "L40S", "A100-80GB"]


def test_a_group_too_new_to_score_comes_after_the_scored_ones_either_way(offers):
    assert order(market.sort_offers(offers, "reliability", descending=True)) == [
        "H100-80GB",
        "RTX-4090",
        "A100-80GB",
        "L40S",
    ]
    assert order(market.sort_offers(offers, "reliability")) == ["A100-80GB", "RTX-4090", "H100-80GB", "L40S"]


def test_an_unknown_sort_is_refused_with_the_field_named(offers):
    with pytest.raises(InvalidInput) as refused:
        market.sort_offers(offers, "colour")
    assert refused.value.details == {"field": "sort"}


def test_a_link_keeps_its_order_and_a_bad_one_falls_back_to_cheapest_first():
    assert sort_from_query({"sort": "reliability", "order": "desc"}) == "reliability-desc"
    assert sort_from_query({"sort": "model"}) == "model-asc"
    assert sort_from_query({}) == DEFAULT_SORT == "price-asc"
    assert sort_from_query({"sort": "price", "order": "sideways"}) == DEFAULT_SORT
    assert sort_from_query({"sort": "<script>"}) == DEFAULT_SORT
    # Every choice the control offers is one a link can carry, both ways for each sort.
    assert {choice["value"] for choice in SORT_CHOICES} == {
        f"{by}-{way}" for by in market.OFFER_SORTS for way in ("asc", "desc")
    }


def test_the_api_sorts_as_the_page_does_and_refuses_an_unknown_order(parts, api_client):
    with Session(parts.engine) as session:
        seed_offers(session)

    def models(**params: str) -> list[str]:
        reply = api_client.get("/api/v1/market/offers", params=params)
        assert reply.status_code == 200, reply.text
        return [offer["gpu_model"] for offer in reply.json()]

    assert models(sort="price") == ["RTX-4090", "L40S", "A100-80GB", "H100-80GB"]
    assert models(sort="free", order="desc") == ["A100-80GB", "L40S", "H100-80GB", "RTX-4090"]
    assert models(sort="reliability", order="desc")[-1] == "L40S"  # too new to score: last either way
    for bad in ({"sort": "cheapest"}, {"sort": "price", "order": "up"}):
        refused = api_client.get("/api/v1/market/offers", params=bad)
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_input"
