"""A hostile stranger's and a hostile provider's input: bodies nested to exhaust the parser, dates at the
calendar's ends, names that run as spreadsheet formulas or hide and reorder text. Each is refused with a
clear 4xx (or made harmless, for CSV cells) and changes nothing."""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import func, select

from portal.infra.db import session_scope
from portal.models import ApiKey, Cluster, Device, Role, User
from portal.parts import in_use as parts_in_use
from portal.security.firewall import MAX_JSON_DEPTH, json_nesting_exceeds
from portal.security.principal import RequestOrigin
from portal.services import csv_export
from portal.services.accounts import api_keys
from portal.services.errors import InvalidInput
from portal.services.providers import devices, liveness
from portal.services.rentals import clusters
from tasks import billing as billing_actors
from tests.factories import access_token_for, device_token_for, make_user
from tests.test_clusters import backdate, run_to_running
from tests.test_clusters import beat as agents_beat
from tests.test_heartbeat_lane import BEAT, add_device, beat, serve

GRAPHQL = "/api/v1/graphql"
PORTAL = Path(__file__).resolve().parents[1] / "portal"


def nested(levels: int, inner: object = 1) -> object:
    for _ in range(levels):
        inner = [inner]
    return inner


def bearer(session, user: User) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token_for(session, user)}"}


def count(engine, table: type) -> int:
    with session_scope(engine) as session:
        return session.exec(select(func.count()).select_from(table)).one()


# --- JSON nesting --------------------------------------------------------------------------------------


def test_a_graphql_body_nested_960_levels_from_a_stranger_is_a_400_naming_the_limit(api_client):
    body = "[" * 960 + "]" * 960

    refused = api_client.post(GRAPHQL, content=body, headers={"content-type": "application/json"})

    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "too_deep" and f"{MAX_JSON_DEPTH} levels" in error["message"]


@pytest.mark.parametrize("content_type", ["application/json", "application/merge-patch+json", None])
def test_any_api_body_nested_past_the_limit_is_refused_before_it_is_parsed_and_changes_nothing(
    parts, api_client, content_type
):
    users_before = count(parts.engine, User)
    body = json.dumps(
        {"email": "deep@example.com", "password": "a-long-password-1", "extra": nested(MAX_JSON_DEPTH)}
    )
    headers = {"content-type": content_type} if content_type else {}

    refused = api_client.post("/api/v1/auth/signup", content=body, headers=headers)

    assert refused.status_code == 400 and refused.json()["error"]["code"] == "too_deep"
    assert count(parts.engine, User) == users_before


def test_nesting_up_to_the_limit_and_brackets_inside_strings_are_let_through(api_client):
    query = "{ network { at } }"
    within = {"query": query, "variables": {"deep": nested(MAX_JSON_DEPTH - 2)}}  # 32 levels in all
    brackets_in_text = {"query": query, "variables": {"text": "[{" * 5_000}}
    escaped_quotes = {"query": query, "variables": {"text": '\\" [[[[' + "[" * 100}}

    for body in (within, brackets_in_text, escaped_quotes):
        answered = api_client.post(GRAPHQL, json=body)
        assert answered.status_code == 200 and answered.json()["data"]["network"]["at"], body


def test_a_heartbeat_nested_past_the_limit_is_refused_in_front_of_the_app_too_and_notes_nothing(parts):
    app, spy = serve(parts)
    _, token = add_device(parts)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert [beat(client, token).status_code for _ in range(2)] == [200, 200]  # the lane knows it now
        parts.cache.hdrain(liveness.BEATS)
        reached = len(spy.reached)

        refused = beat(client, token, {**BEAT, "ray": {"state": "running", "x": nested(MAX_JSON_DEPTH)}})

    assert refused.status_code == 400 and refused.json()["error"]["code"] == "too_deep"
    assert len(spy.reached) == reached + 1  # handed to the app, whose firewall refused it
    assert parts.cache.hdrain(liveness.BEATS) == {}


def test_the_depth_check_is_exact_on_json_and_fast_on_a_hostile_megabyte():
    assert not json_nesting_exceeds(json.dumps(nested(MAX_JSON_DEPTH)).encode())
    assert json_nesting_exceeds(json.dumps(nested(MAX_JSON_DEPTH + 1)).encode())
    assert not json_nesting_exceeds(json.dumps({"a": "[" * 100, "b": '"]{' * 100}).encode())
    assert not json_nesting_exceeds(b'{"a": [1, {"b": 2')  # malformed, shallow: the parser's to refuse
    megabyte = 1 << 20
    hostile = [
        b"[" * (megabyte // 2) + b"]" * (megabyte // 2),
        (b"[" * 30 + b"]" * 30) * (megabyte // 60),
        b'\\"' * (megabyte // 2),
        b"[]" * (megabyte // 2),
    ]
    for body in hostile:
        started = time.perf_counter()
        json_nesting_exceeds(body)
        assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    "query",
    [
        "{" + "network {" * 500 + "at" + "}" * 501,
        "{ network { " + "at " * 5_000 + "} }",
        "{ network(x: " + "[" * 3_000 + "]" * 3_000 + ") { at } }",
        "{ __schema { types { fields { type { " + "ofType { " * 300 + "name" + " }" * 304 + " }",
        "fragment A on Network { ...B } fragment B on Network { ...A } { network { ...A } }",
    ],
    ids=["nested-500", "huge", "deep-argument", "deep-introspection", "fragment-cycle"],
)
def test_a_hostile_graphql_query_gets_a_graphql_error_never_a_500(api_client, query):
    answered = api_client.post(GRAPHQL, json={"query": query})

    assert answered.status_code < 500
    assert answered.json()["data"] is None and answered.json()["errors"]


# --- dates and time ranges -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("month", "says"),
    [
        ("9999-12", "between 1970-01-01 and 2100-01-01"),
        ("1969-12", "between 1970-01-01 and 2100-01-01"),
        ("0000-01", "YYYY-MM"),
        ("2026-13", "YYYY-MM"),
        ("2026-1", "month"),
    ],
)
def test_an_invoice_for_a_month_off_the_calendar_is_a_422_saying_why(parts, api_client, month, says):
    with session_scope(parts.engine) as session:
        customer = bearer(session, make_user(session, Role.CUSTOMER))

    refused = api_client.get("/api/v1/billing/invoice.csv", params={"month": month}, headers=customer)

    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["code"] == "invalid_input" and says in error["message"]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/admin/audit", {"since": "0001-01-01T00:00:00+01:00"}),
        ("/api/v1/admin/audit", {"until": "9999-12-31T23:59:59-05:00"}),
        ("/api/v1/admin/audit", {"since": "9999-12-31T23:59:59"}),
        ("/api/v1/admin/faults", {"since": "0001-01-01T00:00:00+01:00"}),
        ("/api/v1/admin/faults", {"since": "2100-01-01T00:00:00Z"}),
    ],
)
def test_a_since_or_until_outside_1970_to_2100_is_a_422(parts, api_client, path, params):
    with session_scope(parts.engine) as session:
        admin = bearer(session, make_user(session, Role.ADMIN))

    refused = api_client.get(path, params=params, headers=admin)

    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["code"] == "invalid_input" and "between 1970-01-01 and 2100-01-01" in error["message"]


def test_a_since_without_an_offset_is_read_as_utc(parts, api_client):
    with session_scope(parts.engine) as session:
        admin = bearer(session, make_user(session, Role.ADMIN))

    for path in ("/api/v1/admin/audit", "/api/v1/admin/faults"):
        answered = api_client.get(path, params={"since": "2024-01-01T00:00:00"}, headers=admin)
        assert answered.status_code == 200, answered.text


# --- CSV exports ---------------------------------------------------------------------------------------

HYPERLINK = '=HYPERLINK("http://evil.example/x","Open")'


def test_a_device_named_like_a_formula_is_plain_text_in_its_customers_invoice(parts, api_client):
    cluster_id, customer_id, found = run_to_running(parts.engine, [1], 1)
    backdate(parts.engine, cluster_id, 900)
    agents_beat(parts.engine, found)
    with parts_in_use(parts):
        billing_actors.meter_clusters.fn()
    with session_scope(parts.engine) as session:
        device = session.get(Device, found[0].id)
        device.name = HYPERLINK
        cluster = session.get(Cluster, cluster_id)
        cluster.name = "@SUM(1+1)"
        session.add_all([device, cluster])
        customer = bearer(session, session.get(User, customer_id))

    invoice = api_client.get(
        "/api/v1/billing/invoice.csv", params={"month": f"{datetime.now(UTC):%Y-%m}"}, headers=customer
    )

    assert invoice.status_code == 200
    header, line, total = list(csv.reader(io.StringIO(invoice.text, newline="")))
    row = dict(zip(header, line, strict=True))
    assert row["device"] == "'" + HYPERLINK and row["cluster"] == "'@SUM(1+1)"
    # Amounts stay numbers a spreadsheet sums.
    assert Decimal(row["amount_usd"]) * 1_000_000 == int(row["amount_micro"]) > 0
    assert total[0] == "total" and total[-1] == row["amount_micro"]


def test_csv_text_that_would_start_a_formula_gets_a_quote_and_numbers_stay_numbers():
    written = csv_export.csv_text(
        ["=name", "amount"],
        [
            ["=1+1", -1.5],
            ["+1", Decimal("-2.000000")],
            ["-2+3", -3],
            ["@SUM(A1)", None],
            ["\tx", 0],
            ["\rx", 0],
            ["plain -1", 1],
        ],
    )

    assert list(csv.reader(io.StringIO(written, newline=""))) == [
        ["'=name", "amount"],
        ["'=1+1", "-1.5"],
        ["'+1", "-2.000000"],
        ["'-2+3", "-3"],
        ["'@SUM(A1)", ""],
        ["'\tx", "0"],
        ["'\rx", "0"],
        ["plain -1", "1"],
    ]


def test_every_csv_export_is_written_by_the_one_safe_writer(parts, api_client):
    writers = ("csv.writer(", "csv.DictWriter(", ".to_csv(")
    elsewhere = [
        str(path.relative_to(PORTAL))
        for path in PORTAL.rglob("*.py")
        if path.name != "csv_export.py" and any(writer in path.read_text() for writer in writers)
    ]
    assert elsewhere == []
    with session_scope(parts.engine) as session:
        admin = bearer(session, make_user(session, Role.ADMIN))
    for table in ("revenue", "cohorts"):
        exported = api_client.get(f"/api/v1/admin/analytics/{table}.csv", headers=admin)
        assert exported.status_code == 200 and exported.text.splitlines()[0].split(",")[0] in (
            "day",
            "cohort",
        )


# --- names ---------------------------------------------------------------------------------------------

REFUSED = {
    "nul": "rig\x00one",
    "escape": "rig\x1b[31m",
    "newline": "rig\none",
    "rtl-override": "rig\u202eexe.txt",
    "rtl-isolate": "\u2067rig",
    "rtl-mark": "rig\u200f",
    "arabic-letter-mark": "rig\u061c",
    "zero-width-space": "r\u200big",
    "byte-order-mark": "rig\ufeff",
}


@pytest.mark.parametrize("name", REFUSED.values(), ids=REFUSED.keys())
def test_a_name_with_control_bidi_or_invisible_characters_is_a_422_and_nothing_is_made(
    parts, api_client, name
):
    with session_scope(parts.engine) as session:
        headers = bearer(session, make_user(session, Role.CUSTOMER, Role.PROVIDER))
    before = {table: count(parts.engine, table) for table in (Device, Cluster, ApiKey)}
    attempts = [
        ("/api/v1/devices", {"name": name, "country": "DE"}),
        ("/api/v1/clusters", {"name": name, "gpu_model": "H100-80GB", "gpu_count": 1}),
        ("/api/v1/api-keys", {"name": name, "scopes": ["clusters:read"]}),
    ]

    for path, body in attempts:
        refused = api_client.post(path, json=body, headers=headers)
        assert refused.status_code == 422, (path, refused.text)
        error = refused.json()["error"]
        assert error["code"] == "invalid_input" and "body.name" in error["message"]
        assert (
            "must not contain control, bidirectional or invisible formatting characters" in error["message"]
        )

    assert {table: count(parts.engine, table) for table in before} == before


def test_a_name_is_kept_in_nfc_without_surrounding_spaces(parts, api_client):
    with session_scope(parts.engine) as session:
        headers = bearer(session, make_user(session, Role.PROVIDER))

    added = api_client.post(
        "/api/v1/devices", json={"name": "  Cafe\u0301 rig \t", "country": "DE"}, headers=headers
    )
    blank = api_client.post("/api/v1/devices", json={"name": "   ", "country": "DE"}, headers=headers)

    assert added.status_code == 201 and added.json()["device"]["name"] == "Caf\u00e9 rig"
    assert blank.status_code == 422


def test_the_page_forms_refuse_the_same_names_through_the_services_they_call(parts):
    """The devices, market and account pages create through these services, not through the API."""
    name = REFUSED["rtl-override"]
    with session_scope(parts.engine) as session:
        user = make_user(session, Role.CUSTOMER, Role.PROVIDER)
        with pytest.raises(InvalidInput, match="must not contain control") as device_refused:
            devices.add_device(
                session,
                owner_id=user.id,
                name=name,
                country="DE",
                connectivity_tier="medium",
                price_per_gpu_hour_micro=None,
                origin=RequestOrigin(),
            )
        with pytest.raises(InvalidInput, match="must not contain control"):
            clusters.validate(
                clusters.ClusterSpec(name=name, gpu_model="H100-80GB", gpu_count=1, duration_hours=1)
            )
        with pytest.raises(InvalidInput, match="must not contain control"):
            api_keys.create_key(
                session, user_id=user.id, name=name, scopes=["clusters:read"], origin=RequestOrigin()
            )
    assert device_refused.value.details == {"field": "name"}
    assert count(parts.engine, Device) == count(parts.engine, ApiKey) == 0


@pytest.mark.parametrize(
    "field",
    [
        {"hostname": "gpu-box\u202egnp.exe"},
        {"os": "Linux\x1b[2J"},
        {"agent_version": "1.0\x00"},
        {"gpus": [{"index": 0, "uuid": "GPU-0", "model": "NVIDIA H100\u200b", "memory_mb": 81_559}]},
    ],
    ids=["hostname", "os", "agent_version", "gpu-model"],
)
def test_an_agent_cannot_register_host_details_with_control_or_bidi_characters(parts, api_client, field):
    with session_scope(parts.engine) as session:
        token = device_token_for(session, make_user(session, Role.PROVIDER).id)
    body = {
        "agent_version": "1.0",
        "hostname": "gpu-box",
        "os": "Linux",
        "gpus": [{"index": 0, "uuid": "GPU-0", "model": "NVIDIA H100", "memory_mb": 81_559}],
        "simulated": True,
        **field,
    }

    refused = api_client.post(
        "/api/v1/worker/register", json=body, headers={"Authorization": f"Bearer {token}"}
    )

    assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_input"
    with session_scope(parts.engine) as session:
        (device,) = session.exec(select(Device)).all()
        assert (device.hostname, device.os, device.agent_version) == ("", "", "")
