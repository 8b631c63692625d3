"""The portal's proxy to a cluster's Ray dashboard (``/clusters/{id}/ray/…``, issue 18): the owner gets the
head's pages and websockets under the portal's origin; anyone else, and any cluster that is not running, a
404; the caller's credentials never reach the head and the head's cookies never reach the browser; the page
is sandboxed and its own requests get through on a pass for that cluster's path alone.

The head here is a real HTTP and websocket server on loopback standing where the Ray dashboard listens (the
namespace test, ``test_mesh_cluster.py``, goes through a real Ray head across NATs).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from http.cookies import SimpleCookie

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from portal.api.app import create_api
from portal.infra.db import session_scope
from portal.models import AuthSession, Cluster, ClusterState, Role, User
from portal.models.base import utcnow
from portal.security import proxy_pass
from portal.security.principal import RequestOrigin
from portal.services.accounts import auth
from tests.conftest import closed_port
from tests.factories import access_token_for, api_key_for, device_token_for, make_user
from tests.servers import ServerThread

SEEN: list[dict] = []


async def _echo(request: Request) -> JSONResponse:
    seen = {"path": request.url.path, "query": request.url.query, "headers": dict(request.headers)}
    seen["body"] = (await request.body()).decode()
    SEEN.append(seen)
    response = JSONResponse(seen)
    response.set_cookie("dashboard_cookie", "from-the-head")
    return response


async def _ws(websocket: WebSocket) -> None:
    await websocket.accept()
    while True:
        text = await websocket.receive_text()
        await websocket.send_text(f"head: {text}")


HEAD = Starlette(
    routes=[
        WebSocketRoute("/ws/logs", _ws),
        Route("/{path:path}", _echo, methods=["GET", "POST", "PUT", "DELETE"]),
    ]
)


@pytest.fixture(scope="module")
def head_url():
    with ServerThread(HEAD) as url:
        yield url


@pytest.fixture
def world(parts, head_url):
    """A customer's running cluster whose head's dashboard is the server above, and the callers."""
    SEEN.clear()
    with session_scope(parts.engine) as session:
        owner = make_user(session, Role.CUSTOMER)
        other = make_user(session, Role.CUSTOMER)
        cluster = Cluster(
            owner_id=owner.id,
            name="proxied",
            state=ClusterState.RUNNING,
            gpu_model="H100-80GB",
            gpu_count=1,
            duration_hours=1,
            price_per_gpu_hour_micro=1_000_000,
            dashboard_url=head_url,
        )
        session.add(cluster)
        session.flush()
        callers = {
            "owner": access_token_for(session, owner),
            "owner_key": api_key_for(session, owner, ["clusters:read"]),
            "owner_key_without_scope": api_key_for(session, owner, ["billing:read"]),
            "other": access_token_for(session, other),
            "provider": access_token_for(session, make_user(session, Role.PROVIDER)),
            "device": device_token_for(session, make_user(session, Role.PROVIDER).id),
        }
        cookie = auth.start_browser_session_cookie(
            session, user=owner, method="password", origin=RequestOrigin()
        )
        owner_id, cluster_id = owner.id, cluster.id
    client = TestClient(create_api(parts), raise_server_exceptions=False)
    return client, cluster_id, owner_id, callers, cookie


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_owner_gets_the_heads_pages_without_their_credentials_reaching_it(world):
    client, cluster_id, _, callers, _ = world
    answer = client.post(
        f"/clusters/{cluster_id}/ray/api/jobs/?limit=5",
        content=b'{"entrypoint": "python x.py"}',
        headers={**bearer(callers["owner"]), "Cookie": "portal_session=gps_secret", "X-Custom": "kept"},
    )
    assert answer.status_code == 200, answer.text
    seen = answer.json()
    assert (seen["path"], seen["query"], seen["body"]) == (
        "/api/jobs/",
        "limit=5",
        '{"entrypoint": "python x.py"}',
    )
    assert seen["headers"]["x-custom"] == "kept"
    assert "authorization" not in seen["headers"] and "cookie" not in seen["headers"]
    # The head's cookie stays with the head; the page is sandboxed in an opaque origin.
    assert "dashboard_cookie" not in answer.headers.get("set-cookie", "")
    assert answer.headers["content-security-policy"].startswith("sandbox allow-scripts")
    assert "allow-same-origin" not in answer.headers["content-security-policy"]
    # An API key with clusters:read works too (the CLI, a script).
    assert client.get(f"/clusters/{cluster_id}/ray/", headers=bearer(callers["owner_key"])).status_code == 200
    # Without the trailing slash, the dashboard's relative links would resolve one level up.
    moved = client.get(f"/clusters/{cluster_id}/ray", follow_redirects=False)
    assert (moved.status_code, moved.headers["location"]) == (307, f"/clusters/{cluster_id}/ray/")


@pytest.mark.parametrize(
    "caller", ["other", "provider", "device", "owner_key_without_scope", "anonymous", "forged"]
)
def test_anyone_but_the_owner_gets_a_404_that_says_nothing_and_the_head_sees_nothing(world, caller):
    client, cluster_id, _, callers, _ = world
    special = {"anonymous": {}, "forged": bearer("not-a-token")}
    headers = special[caller] if caller in special else bearer(callers[caller])
    answer = client.get(f"/clusters/{cluster_id}/ray/api/version", headers=headers)
    assert answer.status_code == 404
    assert answer.json()["error"] == {
        "code": "not_found",
        "message": "No such cluster dashboard.",
        "details": None,
    }
    # The same answer for a cluster that does not exist and for a path that is not a cluster id.
    for path in (f"/clusters/{uuid.uuid4()}/ray/", "/clusters/not-an-id/ray/"):
        assert client.get(path, headers=bearer(callers["owner"])).json() == answer.json()
    assert SEEN == []


def test_the_clusters_state_is_checked_on_every_request(world, parts):
    client, cluster_id, _, callers, _ = world
    assert client.get(f"/clusters/{cluster_id}/ray/", headers=bearer(callers["owner"])).status_code == 200
    with session_scope(parts.engine) as session:
        session.get(Cluster, cluster_id).state = ClusterState.TERMINATED
    assert client.get(f"/clusters/{cluster_id}/ray/", headers=bearer(callers["owner"])).status_code == 404
    assert len(SEEN) == 1


def test_a_browser_gets_a_pass_for_that_dashboard_alone_and_loses_it_when_signed_out(world, parts):
    client, cluster_id, _, _, cookie = world
    first = client.get(f"/clusters/{cluster_id}/ray/", headers={"Cookie": f"portal_session={cookie}"})
    assert first.status_code == 200
    jar: SimpleCookie = SimpleCookie()
    jar.load(first.headers["set-cookie"])
    issued = jar[proxy_pass.PASS_COOKIE]
    assert issued["path"] == f"/clusters/{cluster_id}/ray/"
    assert issued["httponly"] and issued["secure"] and issued["samesite"].lower() == "none"
    # The sandboxed page's own requests carry only the pass.
    by_pass = {"Cookie": f"{proxy_pass.PASS_COOKIE}={issued.value}"}
    assert client.get(f"/clusters/{cluster_id}/ray/api/nodes", headers=by_pass).status_code == 200
    # Not for another cluster's path, not tampered with, not once the browser session has ended.
    assert client.get(f"/clusters/{uuid.uuid4()}/ray/", headers=by_pass).status_code == 404
    # One hex digit of the signature changed (to another digit: a pass ending in "0" stays itself with "0").
    last = "1" if issued.value.endswith("0") else "0"
    forged = {"Cookie": f"{proxy_pass.PASS_COOKIE}={issued.value[:-1]}{last}"}
    assert client.get(f"/clusters/{cluster_id}/ray/", headers=forged).status_code == 404
    with session_scope(parts.engine) as session:
        for browser in session.exec(select(AuthSession)).all():
            browser.revoked_at = utcnow() - timedelta(seconds=1)
    assert client.get(f"/clusters/{cluster_id}/ray/api/nodes", headers=by_pass).status_code == 404
    assert (
        client.get(f"/clusters/{cluster_id}/ray/", headers={"Cookie": f"portal_session={cookie}"}).status_code
        == 404
    )
    assert len(SEEN) == 2


def test_websockets_reach_the_head_for_the_owner_only(world):
    client, cluster_id, _, callers, _ = world
    with client.websocket_connect(
        f"/clusters/{cluster_id}/ray/ws/logs", headers=bearer(callers["owner"])
    ) as ws:
        ws.send_text("hello")
        assert ws.receive_text() == "head: hello"
    with (
        pytest.raises(Exception) as refused,
        client.websocket_connect(f"/clusters/{cluster_id}/ray/ws/logs", headers=bearer(callers["other"])),
    ):
        pass
    assert getattr(refused.value, "code", None) == 4404


def test_a_head_that_does_not_answer_is_a_502_that_says_so(world, parts):
    client, cluster_id, _, callers, _ = world
    with session_scope(parts.engine) as session:
        session.get(Cluster, cluster_id).dashboard_url = f"http://127.0.0.1:{closed_port()}"
    answer = client.get(f"/clusters/{cluster_id}/ray/", headers=bearer(callers["owner"]))
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "dashboard_unreachable"


def test_users_roles_decide_not_the_token_alone(world, parts):
    """A customer who is no longer a customer (roles are read from the database for a pass) is refused."""
    client, cluster_id, owner_id, _, cookie = world
    with session_scope(parts.engine) as session:
        session.get(User, owner_id).is_active = False
    assert (
        client.get(f"/clusters/{cluster_id}/ray/", headers={"Cookie": f"portal_session={cookie}"}).status_code
        == 404
    )
