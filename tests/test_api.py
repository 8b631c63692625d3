"""The HTTP API's ground rules: health, readiness, metrics, the error envelope and request ids."""

import logging
import sqlite3
from collections.abc import Iterator

import pytest
import sqlalchemy
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from portal.api.app import create_api
from portal.api.errors import install_error_handlers
from portal.api.middleware import RequestContextMiddleware
from portal.infra.cache import MemoryCache, RedisCache
from portal.infra.db import build_engine
from portal.parts import AppParts
from tests.conftest import closed_port, settings_for


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_api(), raise_server_exceptions=False) as client:
        yield client


def serve(*, settings, engine, cache) -> TestClient:
    """A client of the API built over these parts."""
    return TestClient(create_api(AppParts(settings, engine, cache)), raise_server_exceptions=False)


@pytest.mark.parametrize("path", ["/healthz", "/api/v1/healthz"])
def test_healthz_answers_while_the_process_runs(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_ready_when_every_embedded_part_answers(sqlite_url):
    client = serve(settings=settings_for(), engine=build_engine(sqlite_url), cache=MemoryCache())
    response = client.get("/api/v1/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "cache": "ok", "broker": "ok"}}


@pytest.mark.integration
def test_readyz_is_ready_on_postgresql_redis_and_rabbitmq(postgres_url, redis_url, rabbitmq_url):
    settings = settings_for(database_url=postgres_url, redis_url=redis_url, broker_url=rabbitmq_url)
    client = serve(settings=settings, engine=build_engine(postgres_url), cache=RedisCache(redis_url))
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    assert set(response.json()["checks"].values()) == {"ok"}


def test_readyz_names_the_database_when_it_is_down():
    down = f"postgresql+psycopg://portal@127.0.0.1:{closed_port()}/portal"
    client = serve(
        settings=settings_for(),
        engine=build_engine(down, connect_args={"connect_timeout": 1}),
        cache=MemoryCache(),
    )
    response = client.get("/readyz")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "not_ready"
    assert error["message"] == "database is down"
    assert error["details"]["database"].startswith("down: OperationalError")
    assert error["details"]["cache"] == "ok"


def test_readyz_names_the_cache_when_redis_is_down(sqlite_url):
    redis_down = RedisCache(f"redis://127.0.0.1:{closed_port()}/0", timeout_s=0.5)
    client = serve(settings=settings_for(), engine=build_engine(sqlite_url), cache=redis_down)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["message"] == "cache is down"


def test_readyz_names_the_broker_when_rabbitmq_is_down(sqlite_url):
    settings = settings_for(
        broker_url=f"amqp://guest:guest@127.0.0.1:{closed_port()}/", readiness_timeout_s=1
    )
    client = serve(settings=settings, engine=build_engine(sqlite_url), cache=MemoryCache())
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["message"] == "broker is down"


def test_an_unknown_api_path_gets_the_error_envelope(client):
    response = client.get("/api/v1/no-such-thing")
    assert response.status_code == 404
    assert response.json() == {
        "error": {"code": "not_found", "message": "No API route /api/v1/no-such-thing.", "details": None}
    }


class Thing(BaseModel):
    name: str
    count: int


@pytest.fixture
def probe_client(tmp_path) -> Iterator[TestClient]:
    """A bare app with the portal's error handling, to drive every kind of error through it."""
    probe = FastAPI()
    install_error_handlers(probe)
    probe.add_middleware(RequestContextMiddleware)

    @probe.post("/things")
    def create_thing(thing: Thing) -> Thing:
        return thing

    @probe.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    @probe.post("/locked")
    def locked(request: Request) -> None:
        """A write to a SQLite database that another connection holds locked (busy timeout 0)."""
        engine = sqlalchemy.create_engine(f"sqlite:///{request.app.state.db}", connect_args={"timeout": 0})
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text("INSERT INTO t VALUES (1)"))

    @probe.get("/pool-exhausted")
    def pool_exhausted(request: Request) -> None:
        """Every pooled connection taken (requests queued on row locks hold theirs): the next waits, then
        gives up."""
        engine = sqlalchemy.create_engine(
            f"sqlite:///{request.app.state.db}", pool_size=1, max_overflow=0, pool_timeout=0.1
        )
        with engine.connect(), engine.connect():
            pass

    probe.state.db = tmp_path / "locked.db"
    holder = sqlite3.connect(probe.state.db, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    with TestClient(probe, raise_server_exceptions=False) as client:
        yield client
    holder.close()


@pytest.mark.parametrize(("method", "path"), [("POST", "/locked"), ("GET", "/pool-exhausted")])
def test_a_busy_or_unreachable_database_is_a_503_to_retry_not_a_500(probe_client, method, path):
    response = probe_client.request(method, path)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"
    assert response.headers["retry-after"] == "1"
    assert "INSERT" not in response.text


def test_validation_errors_name_the_field_and_do_not_echo_the_input(probe_client):
    response = probe_client.post("/things", json={"name": "gpu", "count": "hunter2-not-a-number"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert error["message"].startswith("body.count:")
    assert error["details"][0]["field"] == "body.count"
    assert "hunter2" not in response.text


def test_a_malformed_json_body_is_a_4xx_not_a_500(probe_client):
    response = probe_client.post(
        "/things", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_input"


def test_a_method_that_does_not_exist_gets_the_envelope(probe_client):
    response = probe_client.delete("/things")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_an_unexpected_error_is_a_500_envelope_that_leaks_nothing(probe_client):
    response = probe_client.get("/boom")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "secret internals" not in response.text


def test_a_request_id_is_on_every_response_and_every_log_line_of_the_request(client, caplog):
    caplog.set_level(logging.INFO, logger="portal.access")
    response = client.get("/healthz", headers={"x-request-id": "trace-abc_123"})
    assert response.headers["x-request-id"] == "trace-abc_123"
    access = [record for record in caplog.records if record.name == "portal.access"]
    assert access and access[-1].request_id == "trace-abc_123"
    assert access[-1].status == 200


def test_an_unsafe_incoming_request_id_is_replaced(client):
    response = client.get("/healthz", headers={"x-request-id": "evil\nline " + "x" * 100})
    assert response.headers["x-request-id"].isalnum()
    assert len(response.headers["x-request-id"]) == 32


def test_metrics_is_a_valid_exposition_with_request_counters(client):
    client.get("/healthz")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    requests = families["portal_http_requests"]
    assert any(
        sample.labels == {"method": "GET", "route": "/healthz", "status": "200"} and sample.value >= 1
        for sample in requests.samples
    )
    assert "portal_http_request_duration_seconds" in families


def test_the_openapi_document_is_served_under_api(client):
    document = client.get("/api/openapi.json").json()
    assert document["info"]["title"] == "GPU Portal API"
    assert "/api/v1/readyz" in document["paths"]
    assert client.get("/api/docs").status_code == 200


def test_the_interactive_docs_are_served_from_local_files(client):
    page = client.get("/api/docs")
    assert page.status_code == 200
    assert "/api/docs-assets/swagger-ui-bundle.js" in page.text
    assert "cdn.jsdelivr.net" not in page.text
    script = client.get("/api/docs-assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
