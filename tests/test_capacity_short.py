"""'Not enough capacity' says how many GPUs of the model are free (issue 20), in the quote and the deploy;
a quote spread over countries says so."""

from __future__ import annotations

import pytest

from portal.infra.db import session_scope
from portal.services.errors import Conflict
from portal.services.rentals import clusters, market
from tests.test_clusters import SETTINGS, customer_with, market_with, spec


def quote_reason(engine, gpus: int, **values: object) -> str:
    with session_scope(engine) as session:
        wanted = clusters.validate(spec(gpus, **values))
        found = market.quote(session, SETTINGS, wanted.placement(), wanted.duration_hours)
    assert not found.available
    return found.reason


def test_too_few_free_gpus_are_counted(engine):
    with session_scope(engine) as session:
        market_with(session, [1, 2])
    assert quote_reason(engine, 4) == (
        "No set of available H100-80GB devices holds exactly 4 GPUs with these filters: only 3 H100-80GB "
        "GPUs are free now."
    )


def test_enough_gpus_on_devices_that_do_not_add_up_say_devices_are_rented_whole(engine):
    with session_scope(engine) as session:
        market_with(session, [4])
    assert quote_reason(engine, 3).endswith(
        ": 4 H100-80GB GPUs are free now, but devices are rented whole and none add up to exactly 3."
    )


def test_filters_count_what_matches_them_and_what_is_free_in_all(engine):
    with session_scope(engine) as session:
        market_with(session, [1, 1])  # in DE
    assert quote_reason(engine, 2, countries=("FR",)).endswith(
        ": no H100-80GB GPU is free now with these filters (2 in all)."
    )
    with session_scope(engine) as session:
        market_with(session, [1])
    assert quote_reason(engine, 1, gpu_model="A100-80GB").endswith(": no A100-80GB GPU is free now.")


def test_a_refused_deploy_says_it_too(engine):
    with session_scope(engine) as session:
        market_with(session, [1])
        customer = customer_with(session, 100_000_000)
    with pytest.raises(Conflict) as refused, session_scope(engine) as session:
        clusters.create(session, SETTINGS, customer, spec(2))
    assert refused.value.code == "capacity_short"
    assert refused.value.message.startswith("Not enough capacity: ")
    assert refused.value.message.endswith("; only 1 H100-80GB GPU is free now.")


def test_a_quote_over_two_countries_says_so_and_how_to_keep_one(engine):
    with session_scope(engine) as session:
        _, french = market_with(session, [1, 1])  # both in DE, then one moves
        french.country = "FR"
        session.add(french)
    with session_scope(engine) as session:
        spread = market.quote(session, SETTINGS, spec(2).placement(), 1)
        together = market.quote(session, SETTINGS, spec(1).placement(), 1)
        chosen = market.quote(session, SETTINGS, clusters.validate(spec(1, countries=("FR",))).placement(), 1)
    assert sorted(line["country"] for line in spread.breakdown) == ["DE", "FR"]
    assert spread.spread == (
        "These GPUs are in 2 countries (DE, FR): their nodes talk across borders. Name one under Countries "
        "to keep them together."
    )
    assert together.available and together.spread == ""
    assert chosen.available and chosen.spread == ""
