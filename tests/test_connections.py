"""How many requests one `portal run` holds in flight (``portal/infra/serving.py``). Every agent
holds one, its long-poll. With Granian's defaults, as Reflex starts it, one process held about 1,000
(backlog / workers per web worker) and a new request past that waited for a long-poll to end, the CPU idle:
1,200 long-polls to one process, then a request that must be answered while they wait."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from portal.config import get_settings
from portal.infra.db import build_engine, session_scope
from tests.conftest import RunningPortal, start_portal, stop_process_group
from tests.factories import device_token_for, make_provider

pytestmark = pytest.mark.slow

LONG_POLLS = 1_200  # past the 1,024 Granian's defaults admit in flight to one process
POLL_WAIT_S = 20


@pytest.fixture
def portal(tmp_path) -> Iterator[RunningPortal]:
    # One web worker (no Redis), as the embedded default runs; every poll comes from this one address.
    env = {
        "PORTAL_RATE_LIMIT_PER_MINUTE": "100000",
        "PORTAL_SECRET_KEY": get_settings().signing_key(),  # the device token made here must hash the same
    }
    running = start_portal(tmp_path / "portal", "--no-demo", env=env)
    try:
        yield running
    finally:
        stop_process_group(running.process)


def test_more_long_polls_than_granians_default_leave_room_for_a_new_request(portal: RunningPortal):
    engine = build_engine(portal.database_url)
    with session_scope(engine) as session:
        token = device_token_for(session, make_provider(session))
    engine.dispose()
    url = httpx.URL(portal.url)
    poll = (
        f"GET /api/v1/worker/commands?wait={POLL_WAIT_S} HTTP/1.1\r\nHost: {url.host}\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()
    polls: list[socket.socket] = []
    try:
        for _ in range(LONG_POLLS):
            held = socket.create_connection((url.host, url.port), timeout=10)
            held.sendall(poll)
            polls.append(held)
        time.sleep(2)  # taken in, waiting for a command that never comes
        # Without the room (checked with PORTAL_MAX_CONNECTIONS=1024 here) this waits for the polls to end
        # and times out.
        answer = httpx.get(portal.url + "/api/v1/readyz", timeout=POLL_WAIT_S / 2)
        assert answer.status_code == 200
        unanswered = 0
        for held in polls:
            held.setblocking(False)
            try:
                held.recv(1)  # an answer, or the connection closed
            except BlockingIOError:
                unanswered += 1
        assert unanswered == LONG_POLLS  # the request did not get its turn from a poll that ended
    finally:
        for held in polls:
            held.close()
