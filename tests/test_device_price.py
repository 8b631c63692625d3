"""A provider edits a device's price per GPU-hour (issue 20): bounded, audited, 4xx on bad input, and the
marketplace offers the new price at once while running clusters keep theirs."""

from __future__ import annotations

import pytest
from solders.keypair import Keypair
from sqlmodel import select

from portal.infra.db import session_scope
from portal.models import AuditLog, Device, DeviceState, Role
from portal.models.base import utcnow
from portal.security.principal import RequestOrigin
from portal.services.errors import InvalidInput, NotFound
from portal.services.providers import devices
from portal.services.providers.gpu_catalog import list_price
from portal.services.rentals import market
from portal.state.devices import price_micro
from tests.conftest import settings_for
from tests.factories import access_token_for, make_device, make_user

SETTINGS = settings_for()
ORIGIN = RequestOrigin(ip="10.9.8.7")


def hireable_device(session, *, model: str = "A100-80GB") -> tuple[object, Device]:
    provider = make_user(session, Role.PROVIDER)
    provider.wallet_address = str(Keypair().pubkey())
    session.add(provider)
    device = make_device(session, provider.id, state=DeviceState.READY, gpus=2, model=model)
    device.verified_at = utcnow()
    session.add(device)
    session.flush()
    return provider, device


def offered_price(session, model: str) -> int:
    [offer] = market.offers(session, SETTINGS, market.OfferFilters(gpu_model=model))
    return offer.min_price_per_gpu_hour_micro


def test_a_new_price_is_offered_at_once_and_audited_and_none_is_the_list_price(engine):
    with session_scope(engine) as session:
        provider, device = hireable_device(session)
        assert offered_price(session, "A100-80GB") == list_price("A100-80GB")
        devices.set_price(
            session,
            owner_id=provider.id,
            device_id=device.id,
            price_per_gpu_hour_micro=3_250_000,
            origin=ORIGIN,
        )
        assert offered_price(session, "A100-80GB") == 3_250_000
        devices.set_price(
            session, owner_id=provider.id, device_id=device.id, price_per_gpu_hour_micro=None, origin=ORIGIN
        )
        assert offered_price(session, "A100-80GB") == list_price("A100-80GB")
        entries = session.exec(select(AuditLog).where(AuditLog.action == "device.price")).all()
        assert [e.details for e in entries] == [
            {"before_micro": None, "after_micro": 3_250_000},
            {"before_micro": 3_250_000, "after_micro": None},
        ]
        assert entries[0].ip == "10.9.8.7" and entries[0].target_id == str(device.id)


@pytest.mark.parametrize("price", [0, -1, 9_999, 1_000_000_001])
def test_a_price_out_of_bounds_is_refused_and_changes_nothing(engine, price):
    with session_scope(engine) as session:
        provider, device = hireable_device(session)
        with pytest.raises(InvalidInput) as refused:
            devices.set_price(
                session,
                owner_id=provider.id,
                device_id=device.id,
                price_per_gpu_hour_micro=price,
                origin=ORIGIN,
            )
        assert refused.value.details == {"field": "price_per_gpu_hour_micro"}
        assert session.get(Device, device.id).price_per_gpu_hour_micro is None


def test_only_the_owner_sets_a_devices_price(engine):
    with session_scope(engine) as session:
        _, device = hireable_device(session)
        stranger = make_user(session, Role.PROVIDER)
        with pytest.raises(NotFound):
            devices.set_price(
                session,
                owner_id=stranger.id,
                device_id=device.id,
                price_per_gpu_hour_micro=2_000_000,
                origin=ORIGIN,
            )


def test_typed_dollars_become_micro_usd_without_floats():
    assert price_micro("1.80") == 1_800_000
    assert price_micro(" $2 ") == 2_000_000
    assert price_micro("0.004444") == 4_444
    assert price_micro("") is None
    for bad in ("abc", "1.2345678", "nan", "Infinity", "1,5"):
        with pytest.raises(InvalidInput):
            price_micro(bad)


def test_the_api_sets_the_price_and_answers_422_on_bad_input(api_client, parts):
    with session_scope(parts.engine) as session:
        provider, device = hireable_device(session, model="L40S")
        headers = {"Authorization": f"Bearer {access_token_for(session, provider)}"}
        other = {"Authorization": f"Bearer {access_token_for(session, make_user(session, Role.PROVIDER))}"}
    url = f"/api/v1/devices/{device.id}/price"
    saved = api_client.put(url, json={"price_per_gpu_hour_micro": 1_234_000}, headers=headers)
    assert saved.status_code == 200, saved.text
    assert saved.json()["price_per_gpu_hour_micro"] == 1_234_000
    offers = api_client.get("/api/v1/market/offers", params={"gpu_model": "L40S"}).json()
    assert [offer["min_price_per_gpu_hour_micro"] for offer in offers] == [1_234_000]
    for body in (
        {"price_per_gpu_hour_micro": 0},
        {"price_per_gpu_hour_micro": 10**12},
        {"price_per_gpu_hour_micro": "cheap"},
        {"price_per_gpu_hour_micro": 1_000_000, "gpus": [0]},
        {},
    ):
        refused = api_client.put(url, json=body, headers=headers)
        assert refused.status_code == 422, (body, refused.text)
    assert api_client.put(url, json={"price_per_gpu_hour_micro": 2_000_000}, headers=other).status_code == 404
    assert (
        api_client.put(url, json={"price_per_gpu_hour_micro": None}, headers=headers).json()[
            "price_per_gpu_hour_micro"
        ]
        is None
    )
