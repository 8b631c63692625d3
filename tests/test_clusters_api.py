"""The marketplace and cluster routes over HTTP: clear 4xx answers that change nothing, what a response
says is already committed, admins see and end any cluster, and no input yields a 500."""

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import select

from portal.infra.db import session_scope
from portal.models import Cluster, Device, DeviceState, Role, User
from portal.services.money import ledger
from tests.factories import access_token_for, make_user
from tests.test_clusters import customer_with, market_with

SPEC = {"gpu_model": "H100-80GB", "gpu_count": 2, "duration_hours": 1}


@pytest.fixture
def customer(parts) -> dict[str, str]:
    with session_scope(parts.engine) as session:
        user_id = customer_with(session, 20_000_000)
        market_with(session, [1, 1])
        return {"Authorization": f"Bearer {access_token_for(session, session.get(User, user_id))}"}


def test_offers_and_quote_are_public_and_validate_their_input(api_client, customer):
    offers = api_client.get("/api/v1/market/offers", params={"gpu_model": "H100-80GB"}).json()
    assert [(o["devices"], o["gpus"], o["simulated"]) for o in offers] == [(2, 2, True)]
    assert api_client.get("/api/v1/market/offers", params={"min_gpus": 3}).json() == []
    quote = api_client.post("/api/v1/market/quote", json=SPEC).json()
    assert quote["available"] and quote["total_micro"] == 4_000_000 and quote["fee_micro"] == 400_000
    bad = api_client.post("/api/v1/market/quote", json={**SPEC, "gpu_count": 0})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_input"
    assert api_client.get("/api/v1/market/offers", params={"connectivity_tier": "warp"}).status_code == 422


def test_a_refused_deploy_says_why_and_changes_nothing(api_client, parts, customer):
    short = api_client.post(
        "/api/v1/clusters", json={"name": "big", **SPEC, "gpu_count": 3}, headers=customer
    )
    assert short.status_code == 409
    error = short.json()["error"]
    assert error["code"] == "capacity_short" and error["details"]["available"][0]["gpu_model"] == "H100-80GB"
    poor = api_client.post(
        "/api/v1/clusters", json={"name": "long", **SPEC, "duration_hours": 6}, headers=customer
    )
    assert poor.status_code == 409 and poor.json()["error"]["code"] == "insufficient_credit"
    typo = api_client.post("/api/v1/clusters", json={"name": "x", **SPEC, "gpus": 2}, headers=customer)
    assert typo.status_code == 422
    with session_scope(parts.engine) as session:
        assert session.exec(select(Cluster)).all() == []
        assert {d.state for d in session.exec(select(Device)).all()} == {DeviceState.READY}
        assert ledger.verify_books(session) == []


def test_what_a_response_reports_is_already_committed(api_client, parts, customer):
    created = api_client.post("/api/v1/clusters", json={"name": "c", **SPEC}, headers=customer)
    assert created.status_code == 202, created.text
    cluster_id = uuid.UUID(created.json()["id"])
    for hours in range(1, 5):  # 4 USD an hour against 20 USD of credit
        extended = api_client.post(
            f"/api/v1/clusters/{cluster_id}/extend", json={"hours": 1}, headers=customer
        )
        assert extended.json()["duration_hours"] == 1 + hours
        with session_scope(parts.engine) as session:
            assert session.get(Cluster, cluster_id).duration_hours == 1 + hours
    broke = api_client.post(f"/api/v1/clusters/{cluster_id}/extend", json={"hours": 1}, headers=customer)
    assert broke.status_code == 409 and broke.json()["error"]["code"] == "insufficient_credit"
    with session_scope(parts.engine) as session:
        assert session.get(Cluster, cluster_id).duration_hours == 5
    listed = api_client.get("/api/v1/clusters", headers=customer).json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == str(cluster_id)
    shown = api_client.get(f"/api/v1/clusters/{cluster_id}", headers=customer).json()
    assert shown["duration_hours"] == 5 and shown["escrow_micro"] == 20_000_000 and shown["spent_micro"] == 0
    assert (
        api_client.delete(f"/api/v1/clusters/{cluster_id}", headers=customer).json()["state"] == "terminating"
    )
    # Terminating again is harmless; an ended cluster cannot be extended.
    assert api_client.delete(f"/api/v1/clusters/{cluster_id}", headers=customer).status_code == 202
    again = api_client.post(f"/api/v1/clusters/{cluster_id}/extend", json={"hours": 1}, headers=customer)
    assert again.status_code == 409


def test_admins_list_and_terminate_any_cluster(api_client, parts, customer):
    cluster_id = api_client.post("/api/v1/clusters", json={"name": "c", **SPEC}, headers=customer).json()[
        "id"
    ]
    with session_scope(parts.engine) as session:
        admin = {"Authorization": f"Bearer {access_token_for(session, make_user(session, Role.ADMIN))}"}
    listed = api_client.get("/api/v1/admin/clusters", params={"state": "pending"}, headers=admin).json()
    assert [c["id"] for c in listed["items"]] == [cluster_id]
    ended = api_client.post(f"/api/v1/admin/clusters/{cluster_id}/terminate", headers=admin)
    assert ended.status_code == 202 and ended.json()["state"] == "terminating"
    audit = api_client.get("/api/v1/admin/audit", params={"action": "cluster."}, headers=admin).json()
    assert [e["action"] for e in audit["items"]] == ["cluster.terminate"]


finite = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | st.integers() | finite | st.text(max_size=50)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
fields = [
    "name",
    "type",
    "purpose",
    "gpu_model",
    "gpu_count",
    "countries",
    "connectivity_tier",
    "duration_hours",
    "max_price_per_gpu_hour_micro",
    "min_reliability",
    "min_workers",
    "max_workers",
    "hours",
    "entrypoint",
    "runtime_env",
]
plausible = st.sampled_from(
    ["H100-80GB", "ray", "general", "DE", ["DE"], "high", 1, 2, 64, 0, -1, 10**12, 0.5, {}]
)
bodies = values | st.dictionaries(st.sampled_from(fields), plausible | values, max_size=6)
ROUTES = [
    ("POST", "/api/v1/market/quote"),
    ("POST", "/api/v1/clusters"),
    ("POST", "/api/v1/clusters/{id}/extend"),
    ("POST", "/api/v1/clusters/{id}/jobs"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[p for _, p in ROUTES])
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, own=st.booleans())
def test_no_input_makes_the_cluster_routes_fail_with_a_server_error(
    api_client, customer, method, path, body, own
):
    cluster_id = str(uuid.uuid4())
    if own:
        listed = api_client.get("/api/v1/clusters", headers=customer).json()["items"]
        cluster_id = listed[0]["id"] if listed else cluster_id
    response = api_client.request(method, path.replace("{id}", cluster_id), json=body, headers=customer)
    assert response.status_code < 500, response.text
