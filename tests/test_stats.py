"""Network statistics (``/stats/network`` and GraphQL) and admin analytics (JSON and CSV), over a network
with devices in several states, a metered cluster and a confirmed payout."""

from __future__ import annotations

import csv
import io

from solders.keypair import Keypair
from sqlmodel import select

from portal.infra.db import session_scope
from portal.models import DeviceState, Payout, PayoutState, Role, UsageRecord
from portal.models.base import utcnow
from portal.parts import in_use as parts_in_use
from portal.services.network import analytics
from tasks import billing as billing_actors
from tests.factories import access_token_for, make_user
from tests.test_clusters import backdate, beat, market_with, run_to_running


def network(parts) -> tuple[str, dict]:
    cluster_id, _, devices = run_to_running(parts.engine, [1, 1], 2)
    backdate(parts.engine, cluster_id, 3600)
    beat(parts.engine, devices)
    with parts_in_use(parts):
        billing_actors.meter_clusters.fn()
    with session_scope(parts.engine) as session:
        idle = market_with(session, [2])[0]
        idle.last_heartbeat_at = utcnow()
        offline = market_with(session, [4])[0]
        offline.state, offline.country = DeviceState.OFFLINE, "US"
        session.add_all([idle, offline])
        session.add(
            Payout(
                provider_id=devices[0].owner_id,
                wallet_address=str(Keypair().pubkey()),
                amount_micro=1_234_567,
                state=PayoutState.CONFIRMED,
            )
        )
        admin = {"Authorization": f"Bearer {access_token_for(session, make_user(session, Role.ADMIN))}"}
    return cluster_id, admin


def test_network_stats_count_states_models_countries_hired_share_hours_and_payouts(parts, api_client):
    network(parts)
    stats = api_client.get("/api/v1/stats/network").json()
    assert (stats["devices"], stats["gpus"]) == (4, 8)
    assert (stats["devices_online"], stats["gpus_online"], stats["gpus_hired"]) == (3, 4, 2)
    assert stats["hired_share"] == 0.5 and stats["earnings_paid_micro"] == 1_234_567
    assert stats["compute_hours"] >= 2.0  # two GPUs for an hour
    assert {g["key"]: g["gpus"] for g in stats["by_state"]} == {"hired": 2, "ready": 2, "offline": 4}
    assert [(g["key"], g["gpus"], g["gpus_hired"]) for g in stats["by_model"]] == [("H100-80GB", 4, 2)]
    assert "US" not in {g["key"] for g in stats["by_country"]}  # offline devices are not online anywhere

    query = "{ network { gpusOnline gpusHired hiredShare earningsPaidMicro byModel { key gpus gpusHired } } }"
    answer = api_client.post("/api/v1/graphql", json={"query": query})
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["network"] == {
        "gpusOnline": 4,
        "gpusHired": 2,
        "hiredShare": 0.5,
        "earningsPaidMicro": 1_234_567,
        "byModel": [{"key": "H100-80GB", "gpus": 4, "gpusHired": 2}],
    }


def test_stats_are_cached_for_a_while(parts, api_client):
    network(parts)
    first = api_client.get("/api/v1/stats/network").json()
    with session_scope(parts.engine) as session:
        market_with(session, [8])
    assert api_client.get("/api/v1/stats/network").json()["gpus"] == first["gpus"]
    parts.cache.delete(analytics.CACHE_KEY)
    assert api_client.get("/api/v1/stats/network").json()["gpus"] == first["gpus"] + 8


def test_graphql_refuses_bad_deep_or_huge_queries_without_a_server_error(api_client):
    for body in (
        {"query": "{ network { nope } }"},
        {"query": "{ network { byModel { key " + "x " * 3000 + "} } }"},
        {"query": "{"},
        {"nothing": 1},
    ):
        reply = api_client.post("/api/v1/graphql", json=body)
        assert reply.status_code in (200, 400) and reply.status_code < 500, reply.text
        assert reply.status_code == 400 or reply.json().get("errors")
    over_get = api_client.get("/api/v1/graphql", params={"query": "{ network { gpus } }"})
    assert 400 <= over_get.status_code < 500  # queries come as POST only


def test_admin_analytics_add_up_to_the_usage_and_export_as_csv(parts, api_client):
    _, admin = network(parts)
    with session_scope(parts.engine) as session:
        usage = session.exec(select(UsageRecord)).all()
    tables = api_client.get("/api/v1/admin/analytics", headers=admin).json()
    assert len(tables["revenue"]) == 30
    assert sum(day["revenue_micro"] for day in tables["revenue"]) == sum(u.amount_micro for u in usage)
    assert sum(day["fees_micro"] for day in tables["revenue"]) == sum(u.fee_micro for u in usage)
    (cohort,) = tables["cohorts"]
    assert cohort["customers"] == 1 and cohort[utcnow().strftime("%Y-%m")] == sum(
        u.amount_micro for u in usage
    )
    exported = api_client.get("/api/v1/admin/analytics/revenue.csv", headers=admin)
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [int(r["revenue_micro"]) for r in rows] == [d["revenue_micro"] for d in tables["revenue"]]
    assert api_client.get("/api/v1/admin/analytics/cohorts.csv", headers=admin).status_code == 200
    assert api_client.get("/api/v1/admin/analytics/secrets.csv", headers=admin).status_code == 422
