"""A schema-driven fuzz of the whole API: every operation of the OpenAPI document, with the credential its
access rule wants and with none, never answers 5xx and answers only the status codes, content types and
body shapes the document declares.

Schemathesis generates the requests from the document the portal serves, valid and invalid alike; the
caller kind of each route comes from ``RULES`` in ``test_authorization_matrix.py``. No operation is left
out: the commands long-poll is sent ``wait=0`` so it answers at once, and every other case of an operation
whose path names a device or a cluster is pointed at a real one, so the answers for existing objects are
checked too. The heartbeat lane that answers beats in front of the app gets fuzzed beats of its own.

Not checked: that invalid input is always refused (schemathesis' ``negative_data_rejection``). Pydantic's
lax mode reads ``true`` as 1 and a repeated query parameter as its last value, so a few inputs outside
the document are accepted on purpose; what matters here is that they never break the contract.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Engine

from portal.api.app import create_api
from portal.api.heartbeat_lane import HEARTBEAT_PATH, HeartbeatLane
from portal.infra import migrations
from portal.infra.cache import MemoryCache
from portal.infra.db import build_engine, session_scope
from portal.models import DeviceState, Role
from portal.parts import AppParts
from portal.services.money import ledger
from portal.services.rentals import clusters
from tests.conftest import settings_for
from tests.factories import access_token_for, device_token_for, make_device, make_user
from tests.test_authorization_matrix import RULES
from tests.test_clusters import market_with, spec

# About a minute and a half for the whole document on two cores (~75 operations, two callers each).
EXAMPLES_WITH_CREDENTIAL = 60
EXAMPLES_WITHOUT_CREDENTIAL = 15
EXAMPLES_IN_THE_LANE = 100

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def config(max_examples: int) -> schemathesis.Config:
    """Schemathesis' fuzzing phase (valid and invalid inputs), plus the document's own examples."""
    return schemathesis.Config.from_dict(
        {
            "generation": {"mode": "all", "max-examples": max_examples, "database": "none"},
            "phases": {"coverage": {"enabled": False}, "stateful": {"enabled": False}},
        }
    )


# The document as the portal serves it; each test sends its cases to the fixture's app.
DOCUMENT = create_api().openapi()
with_credential = schemathesis.openapi.from_dict(DOCUMENT, config=config(EXAMPLES_WITH_CREDENTIAL))
without_credential = schemathesis.openapi.from_dict(DOCUMENT, config=config(EXAMPLES_WITHOUT_CREDENTIAL))
in_the_lane = schemathesis.openapi.from_dict(DOCUMENT, config=config(EXAMPLES_IN_THE_LANE)).include(
    method="POST", path=HEARTBEAT_PATH
)


@dataclass
class FuzzPortal:
    """One portal over SQLite: a customer with credit and a cluster, a provider with a device, an admin."""

    app: FastAPI
    parts: AppParts
    accounts: dict[str, object]
    known: dict[str, str]  # path parameter -> the id of an object that exists
    cases: Iterator[int]

    @property
    def engine(self) -> Engine:
        return self.parts.engine

    def credential(self, rule: str) -> str | None:
        """A fresh credential of a caller the rule admits (fresh: a fuzzed logout may end a session)."""
        if rule == "open":
            return None
        with session_scope(self.engine) as session:
            if rule == "device":
                return device_token_for(session, self.accounts["provider"].id)
            caller = {"provider": "provider", "admin": "admin"}.get(rule, "customer")
            return access_token_for(session, self.accounts[caller])

    def existing(self, name: str, method: str) -> str:
        """The id of a real object for a path parameter; a device of its own for each delete, so the
        provider's device stays for the other routes."""
        if name == "device_id" and method == "DELETE":
            with session_scope(self.engine) as session:
                return str(make_device(session, self.accounts["provider"].id, state=DeviceState.READY).id)
        return self.known[name]


@pytest.fixture(scope="module")
def fuzz_portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzPortal]:
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'portal.db'}"
    migrations.upgrade(url)
    engine = build_engine(url)
    parts = AppParts(settings_for(rate_limit_per_minute=10_000_000), engine, MemoryCache())
    with session_scope(engine) as session:
        accounts = {
            "customer": make_user(session, Role.CUSTOMER),
            "provider": make_user(session, Role.PROVIDER),
            "admin": make_user(session, Role.ADMIN),
        }
        device = make_device(session, accounts["provider"].id, state=DeviceState.READY, gpus=2)
        market_with(session, [1, 1])
        ledger.grant_credits(
            session,
            user_id=accounts["customer"].id,
            amount_micro=1_000_000_000,
            reason="fuzz",
            idempotency_key="fuzz:customer",
        )
        cluster = clusters.create(session, parts.settings, accounts["customer"].id, spec(2))
    known = {"device_id": str(device.id), "cluster_id": str(cluster.id)}
    yield FuzzPortal(create_api(parts), parts, accounts, known, itertools.count())
    engine.dispose()


def prepare(case: schemathesis.Case, portal: FuzzPortal, credential: str | None) -> None:
    """The credential in place of any generated one; no waiting; every other case aimed at real objects."""
    if case.operation.path == "/api/v1/worker/commands":
        case.query = {**(case.query or {}), "wait": 0}
    if case.path_parameters and next(portal.cases) % 2 == 0:
        for name in case.path_parameters.keys() & portal.known.keys():
            case.path_parameters[name] = portal.existing(name, case.method.upper())
    headers = {key: value for key, value in (case.headers or {}).items() if key.lower() != "authorization"}
    if credential:
        headers["Authorization"] = f"Bearer {credential}"
    case.headers = headers


@with_credential.parametrize()
def test_every_operation_with_its_callers_credential(case: schemathesis.Case, fuzz_portal: FuzzPortal):
    rule = RULES[(case.method.upper(), case.operation.path)]
    prepare(case, fuzz_portal, fuzz_portal.credential(rule))
    case.call_and_validate(checks=CHECKS, app=fuzz_portal.app)


@without_credential.parametrize()
def test_every_operation_without_a_credential(case: schemathesis.Case, fuzz_portal: FuzzPortal):
    prepare(case, fuzz_portal, None)
    case.call_and_validate(checks=CHECKS, app=fuzz_portal.app)


@pytest.fixture(scope="module")
def lane(fuzz_portal: FuzzPortal) -> tuple[HeartbeatLane, str]:
    """The lane in front of the app, and a device token the cache knows (its first beat went through)."""
    token = fuzz_portal.credential("device")
    app = HeartbeatLane(fuzz_portal.app, fuzz_portal.parts)
    beat = {"gpus": [], "ray": {"state": "running"}}
    with TestClient(app) as client:
        answer = client.post(HEARTBEAT_PATH, json=beat, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    return app, token


@in_the_lane.parametrize()
def test_fuzzed_beats_through_the_heartbeat_lane(case: schemathesis.Case, lane: tuple[HeartbeatLane, str]):
    app, token = lane
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
    case.call_and_validate(checks=CHECKS, app=app)


def test_the_document_is_valid_openapi_and_every_error_is_the_envelope():
    with_credential.validate()
    for path, operations in DOCUMENT["paths"].items():
        for method, operation in operations.items():
            errors = {status: body for status, body in operation["responses"].items() if status >= "400"}
            assert {"429", "503"} <= errors.keys(), (method, path)
            for status, response in errors.items():
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (method, path, status)
            if RULES[(method.upper(), path)] not in ("open", "public"):
                assert {"401", "403"} <= errors.keys(), (method, path)
            if "{" in path:
                assert "404" in errors, (method, path)


def test_public_routes_take_a_credential_optionally_and_others_require_it():
    for (method, path), rule in RULES.items():
        security = DOCUMENT["paths"][path][method.lower()].get("security", [])
        if rule == "public":
            assert {} in security, (method, path)
        elif rule != "open":
            assert security and {} not in security, (method, path)


# --- what the fuzz found --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"\x80\x81"),  # not UTF-8: was a 500
        ("application/json", b"null"),  # JSON but no object: was a 500
        ("application/json", b"7"),
        ("text/plain", b"{ network { devices } }"),  # was a plain-text 400
    ],
)
def test_a_graphql_request_it_cannot_read_is_a_400_in_the_error_envelope(api_client, content_type, body):
    response = api_client.post("/api/v1/graphql", content=body, headers={"Content-Type": content_type})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"


def test_graphql_still_answers_a_query(api_client):
    response = api_client.post("/api/v1/graphql", json={"query": "{ network { devices gpus } }"})

    assert response.status_code == 200
    assert response.json() == {"data": {"network": {"devices": 0, "gpus": 0}}}


def test_a_redirect_is_documented_without_a_body():
    for operations in DOCUMENT["paths"].values():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                if status.startswith("3"):
                    assert "content" not in response and "Location" in response["headers"]


def test_the_document_names_no_unused_validation_shapes():
    assert "HTTPValidationError" not in json.dumps(DOCUMENT)
