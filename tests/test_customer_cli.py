"""The customer CLI (``portal login``, ``portal clusters ...``, ``portal jobs ...``) against the real API
served over loopback on the ``parts`` fixture's SQLite database.

The cluster's progress is driven in a background thread at the service level, as the provisioning actor and
the agents would drive it (see ``tests/test_clusters.py``); Ray's Jobs API on the cluster's head is played
by a small fake head, served over loopback too.
"""

import json
import os
import stat
import subprocess
import threading
import typing
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Body, FastAPI
from sqlmodel import select
from typer.testing import CliRunner, Result

from portal.api.app import create_api
from portal.cli import client
from portal.cli import customer as customer_cli
from portal.cli.client import PortalClient
from portal.cli.main import app
from portal.infra.db import session_scope
from portal.models import Cluster, ClusterState, ConnectivityTier, Role, User
from portal.parts import AppParts
from portal.schemas.clusters import ClusterSpecIn
from portal.services.money import ledger
from portal.services.rentals import placement
from tests.conftest import VENV_BIN, closed_port, wait_until
from tests.factories import api_key_for, make_user
from tests.servers import ServerThread
from tests.test_clusters import FakeHead, advance, agent_answers, market_with, nodes, run_to_running

PASSWORD = "customer-pass-123"
CREDIT_MICRO = 100_000_000


@dataclass
class Customer:
    id: uuid.UUID
    email: str


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(customer_cli, "CLUSTER_POLL_S", 0.05)
    monkeypatch.setattr(customer_cli, "LOG_POLL_S", 0.05)


@pytest.fixture
def portal_url(parts: AppParts) -> Iterator[str]:
    with ServerThread(create_api(parts)) as url:
        yield url


@pytest.fixture
def config_home(tmp_path: Path) -> Path:
    return tmp_path / "config"


@pytest.fixture
def cli(config_home: Path) -> Callable[..., Result]:
    """``portal ARGS`` in this process, with its own config directory and no credentials from outside."""
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, **env: str | None) -> Result:
        base = {"XDG_CONFIG_HOME": str(config_home), "PORTAL_API_KEY": None, "PORTAL_URL": None}
        return runner.invoke(app, list(args), input=input, env={**base, **env})

    return invoke


@pytest.fixture
def customer(parts: AppParts) -> Customer:
    with session_scope(parts.engine) as session:
        user = make_user(session, Role.CUSTOMER, password=PASSWORD)
        ledger.grant_credits(
            session, user_id=user.id, amount_micro=CREDIT_MICRO, reason="test", idempotency_key=f"t:{user.id}"
        )
        return Customer(user.id, user.email)


@pytest.fixture
def signed_in(cli: Callable[..., Result], portal_url: str, customer: Customer) -> Customer:
    result = cli("login", "--portal", portal_url, "--email", customer.email, "--password", PASSWORD)
    assert result.exit_code == 0, result.output
    return customer


def stored(config_home: Path) -> dict[str, str]:
    return json.loads((config_home / "gpu-portal" / "credentials.json").read_text())


def clusters_in_db(parts: AppParts) -> list[Cluster]:
    with session_scope(parts.engine) as session:
        return list(session.exec(select(Cluster)).all())


# --- sign-in ---------------------------------------------------------------------------------------


def test_login_keeps_tokens_in_a_private_file_and_logout_ends_the_session(
    cli, portal_url, customer, config_home
):
    refused = cli("login", "--portal", portal_url, "--email", customer.email, "--password", "wrong-password")
    assert refused.exit_code == 1 and "portal: " in refused.stderr
    assert not (config_home / "gpu-portal" / "credentials.json").exists()

    # The password is prompted for, hidden, when not given.
    result = cli("login", "--portal", portal_url + "/", "--email", customer.email, input=PASSWORD + "\n")

    assert result.exit_code == 0, result.output
    assert f"Signed in to {portal_url} as {customer.email}" in result.stdout
    path = config_home / "gpu-portal" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    saved = stored(config_home)
    assert set(saved) == {"portal_url", "access_token", "refresh_token"}
    assert saved["portal_url"] == portal_url
    assert PASSWORD not in path.read_text()
    assert saved["access_token"] not in result.output and saved["refresh_token"] not in result.output

    signed_out = cli("logout")
    assert signed_out.exit_code == 0 and "Signed out" in signed_out.stdout
    assert not path.exists()
    # The portal ended the session too: the refresh token that was on disk is worthless now.
    reply = httpx.post(f"{portal_url}/api/v1/auth/refresh", json={"refresh_token": saved["refresh_token"]})
    assert reply.status_code == 401
    assert cli("clusters", "list").exit_code == 2


def test_an_expired_access_token_is_refreshed_once_and_the_rotated_pair_saved(
    cli, signed_in, config_home, portal_url
):
    before = stored(config_home)
    path = config_home / "gpu-portal" / "credentials.json"
    path.write_text(json.dumps({**before, "access_token": "expired-or-garbage"}))

    result = cli("clusters", "list")

    assert result.exit_code == 0, result.output
    assert "No clusters yet" in result.stdout
    after = stored(config_home)
    assert after["access_token"] not in ("expired-or-garbage", before["access_token"])
    assert after["refresh_token"] != before["refresh_token"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert cli("clusters", "list").exit_code == 0  # the saved pair works on its own
    # With nothing left to refresh with, the command says to sign in again.
    path.write_text(json.dumps({**after, "access_token": "x", "refresh_token": "y"}))
    ended = cli("clusters", "list")
    assert ended.exit_code == 1 and "Sign in again" in ended.stderr


def test_an_api_key_from_the_environment_needs_no_login(parts, portal_url, customer, config_home):
    with session_scope(parts.engine) as session:
        key = api_key_for(session, session.get(User, customer.id))
    # Through the installed `portal` script, as a CI job runs it.
    result = subprocess.run(
        [str(VENV_BIN / "portal"), "clusters", "list", "--json"],
        env={
            **os.environ,
            "PORTAL_API_KEY": key,
            "PORTAL_URL": portal_url,
            "XDG_CONFIG_HOME": str(config_home),
        },
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["total"] == 0
    assert not (config_home / "gpu-portal").exists()


def test_login_with_an_api_key_stores_the_key_privately(cli, parts, portal_url, customer, config_home):
    with session_scope(parts.engine) as session:
        key = api_key_for(session, session.get(User, customer.id))

    result = cli("login", "--portal", portal_url, "--api-key", key)

    assert result.exit_code == 0, result.output
    assert key not in result.output
    assert stored(config_home) == {"portal_url": portal_url, "api_key": key}
    assert stat.S_IMODE((config_home / "gpu-portal" / "credentials.json").stat().st_mode) == 0o600
    assert cli("clusters", "list").exit_code == 0
    refused = cli("login", "--portal", portal_url, "--api-key", "gpk_not-a-key")
    assert refused.exit_code == 1 and "The API key is invalid" in refused.stderr
    assert stored(config_home)["api_key"] == key  # a refused sign-in leaves the working one in place


def test_an_unreachable_portal_or_no_sign_in_is_one_clear_line(cli):
    unreachable = cli(
        "clusters", "list", PORTAL_API_KEY="gpk_x", PORTAL_URL=f"http://127.0.0.1:{closed_port()}"
    )
    assert unreachable.exit_code == 2
    assert unreachable.stderr.startswith("portal: Cannot reach the portal at http://127.0.0.1:")
    assert len(unreachable.stderr.strip().splitlines()) == 1 and "Traceback" not in unreachable.output
    not_signed_in = cli("clusters", "get", str(uuid.uuid4()))
    assert not_signed_in.exit_code == 2 and "Not signed in" in not_signed_in.stderr
    bad_url = cli("login", "--portal", "portal.example.com", "--api-key", "gpk_x")
    assert bad_url.exit_code == 2 and "http:// or https://" in bad_url.stderr


# --- clusters --------------------------------------------------------------------------------------


def test_create_list_get_extend_and_delete_a_cluster(cli, signed_in, parts):
    with session_scope(parts.engine) as session:
        market_with(session, [1, 1])

    created = cli(
        "clusters", "create", "--name", "demo", "--gpu-model", "H100-80GB", "--gpus", "2", "--hours", "2",
        "--country", "de", "--max-price", "2.5", "--no-wait",
    )  # fmt: skip

    assert created.exit_code == 0, created.output
    (cluster,) = clusters_in_db(parts)
    assert cluster.owner_id == signed_in.id and cluster.countries == ["DE"]
    assert f"Cluster demo ({cluster.id}) created: pending." in created.stdout
    assert "2 x H100-80GB (simulated) for 2 h at 2.00 USD per GPU-hour; 8.00 USD in escrow." in created.stdout

    listed = cli("clusters", "list")
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.stdout.splitlines() if str(cluster.id) in line)
    assert "demo" in row and "pending" in row and "(simulated)" in row
    assert json.loads(cli("clusters", "list", "--json").stdout)["items"][0]["id"] == str(cluster.id)
    assert "No running clusters." in cli("clusters", "list", "--state", "running").stdout

    shown = cli("clusters", "get", str(cluster.id))
    assert shown.exit_code == 0, shown.output
    assert "8.00 USD still in escrow" in shown.stdout and "counted from when it runs" in shown.stdout
    assert shown.stdout.count("(simulated)") == 3  # the cluster's GPUs and each node's device
    assert "USD held in escrow for 2 h" in shown.stdout  # the latest events

    extended = cli("clusters", "extend", str(cluster.id), "--hours", "3")
    assert extended.exit_code == 0, extended.output
    assert "now runs 5 h in all" in extended.stdout and "20.00 USD in escrow" in extended.stdout
    # The API commits before it answers: what it said is already in the database.
    assert clusters_in_db(parts)[0].duration_hours == 5

    kept = cli("clusters", "delete", str(cluster.id), input="n\n")
    assert kept.exit_code == 1 and clusters_in_db(parts)[0].state == ClusterState.PENDING
    deleted = cli("clusters", "delete", str(cluster.id), "--yes")
    assert deleted.exit_code == 0, deleted.output

    assert "Cluster demo is terminating" in deleted.stdout
    assert clusters_in_db(parts)[0].state == ClusterState.TERMINATING

    unknown = cli("clusters", "get", str(uuid.uuid4()))
    assert unknown.exit_code == 1 and unknown.stderr.strip() == "portal: No such cluster."


def test_more_gpus_than_the_market_holds_is_refused_with_what_is_available(cli, signed_in, parts):
    with session_scope(parts.engine) as session:
        market_with(session, [1, 1])

    result = cli(
        "clusters", "create", "--name", "big", "--gpu-model", "H100-80GB", "--gpus", "3", "--hours", "1"
    )

    assert result.exit_code == 1
    assert result.stderr.startswith("portal: Not enough capacity")
    assert "Available now:\n  H100-80GB: 2 GPUs in DE, from 2.00 USD per GPU-hour" in result.stderr
    assert clusters_in_db(parts) == []


def test_a_deploy_answered_busy_is_sent_again_and_created_once(cli, signed_in, parts, monkeypatch):
    with session_scope(parts.engine) as session:
        market_with(session, [1])
    monkeypatch.setattr(client, "BUSY_PAUSE_S", 0.01)
    reserve, busy_answers = placement.reserve, []

    def busy_twice(*args: object, **kwargs: object) -> object:
        if len(busy_answers) < 2:  # the third try books
            busy_answers.append(placement.busy())
            raise busy_answers[-1]
        return reserve(*args, **kwargs)

    monkeypatch.setattr(placement, "reserve", busy_twice)
    args = ("clusters", "create", "--name", "b", "--gpu-model", "H100-80GB", "--gpus", "1", "--hours", "1")

    created = cli(*args, "--no-wait")

    assert created.exit_code == 0, created.output
    assert len(busy_answers) == 2 and len(clusters_in_db(parts)) == 1
    busy_answers.clear()
    monkeypatch.setattr(client, "BUSY_ATTEMPTS", 2)
    refused = cli(*args, "--no-wait")
    assert refused.exit_code == 1 and "Other deploys are booking these GPUs" in refused.stderr
    assert len(clusters_in_db(parts)) == 1


def drive_in_background(parts: AppParts, steps: Callable[[uuid.UUID], None]) -> Callable[[], None]:
    """Run ``steps`` on the first cluster the CLI creates, in a thread; the returned call joins it and
    raises what it raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            found = wait_until(
                lambda: clusters_in_db(parts), timeout_s=20, every_s=0.05, what="a cluster the CLI created"
            )
            steps(found[0].id)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join() -> None:
        thread.join(timeout=30)
        if errors:
            raise errors[0]

    return join


def test_create_waits_showing_each_event_until_the_cluster_runs(cli, signed_in, parts, monkeypatch):
    with session_scope(parts.engine) as session:
        market_with(session, [1, 1])
    reads = {"begun": 0, "done": 0}
    get_cluster = PortalClient.get_cluster

    def counted_get_cluster(self: PortalClient, cluster_id: uuid.UUID | str) -> Any:
        reads["begun"] += 1
        try:
            return get_cluster(self, cluster_id)
        finally:
            reads["done"] += 1

    monkeypatch.setattr(PortalClient, "get_cluster", counted_get_cluster)

    def seen_by_the_cli() -> None:
        """The CLI read the cluster again after this step (it reads one at a time)."""
        after = reads["begun"] + 1
        wait_until(lambda: reads["done"] >= after, timeout_s=10, every_s=0.01, what="the CLI reading again")

    def provision(cluster_id: uuid.UUID) -> None:
        # As in tests/test_clusters.py::run_to_running, step by step with the CLI seeing each one.
        head = FakeHead()
        advance(parts.engine, cluster_id, head)
        for node in nodes(parts.engine, cluster_id):
            seen_by_the_cli()
            advance(parts.engine, cluster_id, head)
            agent_answers(parts.engine, node.device_id, node_id=str(node.id))
            head.alive.add(str(node.id))
        seen_by_the_cli()
        assert advance(parts.engine, cluster_id, head) == ClusterState.RUNNING

    joined = drive_in_background(parts, provision)
    result = cli(
        "clusters", "create", "--name", "up", "--gpu-model", "H100-80GB", "--gpus", "2", "--hours", "1"
    )
    joined()

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert sum("booked as head" in line or "booked as worker" in line for line in lines) == 2
    assert sum(" node_joined " in line for line in lines) == 2
    assert "Cluster up is running: 2 x H100-80GB (simulated)." in result.stdout
    assert "Ray client address  ray://127.0.0.1:10001" in result.stdout
    # The dashboard through the portal's proxy, which works from the customer's own machine.
    (cluster,) = clusters_in_db(parts)
    assert f"Dashboard           {parts.settings.base_url}/clusters/{cluster.id}/ray/" in result.stdout
    # Each event once, in order, though the cluster was read many times.
    with session_scope(parts.engine) as session:
        from portal.services.rentals import clusters

        messages = [event.message for event in clusters.events_of(session, cluster.id)]
    shown = [next(m for m in messages if m in line) for line in lines if any(m in line for m in messages)]
    assert shown == messages


def test_create_waits_and_exits_1_with_the_last_events_when_the_deploy_fails(cli, signed_in, parts):
    with session_scope(parts.engine) as session:
        market_with(session, [1, 1, 1])

    def fail_twice(cluster_id: uuid.UUID) -> None:
        # tests/test_clusters.py's settings allow one replacement: the second failure ends the deploy.
        for _ in range(2):
            advance(parts.engine, cluster_id)
            agent_answers(parts.engine, nodes(parts.engine, cluster_id)[-1].device_id, ok=False)
        assert advance(parts.engine, cluster_id) == ClusterState.FAILED

    joined = drive_in_background(parts, fail_twice)
    result = cli(
        "clusters", "create", "--name", "doomed", "--gpu-model", "H100-80GB", "--gpus", "1", "--hours", "1"
    )
    joined()

    assert result.exit_code == 1, result.output
    assert "portal: cluster doomed is failed" in result.stderr
    assert "giving up" in result.stderr and "ray start failed" in result.stdout


# --- jobs ------------------------------------------------------------------------------------------

LOG_LINES = ["loading data\n", "epoch 1 [loss 0.5]\n", "done\n"]


class FakeRayJobs:
    """Ray's Jobs API on a cluster's head: each status poll lets the job print one more line, then it
    succeeds."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.app = FastAPI()
        self.app.post("/api/jobs/")(self.submit)
        self.app.get("/api/jobs/{submission_id}")(self.status)
        self.app.get("/api/jobs/{submission_id}/logs")(self.logs)

    def submit(self, body: dict[str, Any] = Body()) -> dict[str, str]:
        self.jobs[body["submission_id"]] = {**body, "polls": 0}
        return {"submission_id": body["submission_id"]}

    def status(self, submission_id: str) -> dict[str, str]:
        job = self.jobs[submission_id]
        job["polls"] += 1
        return {"status": "SUCCEEDED" if job["polls"] > len(LOG_LINES) else "RUNNING", "message": ""}

    def logs(self, submission_id: str) -> dict[str, str]:
        return {"logs": "".join(LOG_LINES[: self.jobs[submission_id]["polls"]])}


@pytest.fixture
def running_cluster(
    parts: AppParts, portal_url: str
) -> Iterator[tuple[uuid.UUID, dict[str, str], FakeRayJobs]]:
    """A running cluster whose head is a fake Ray, and the environment that signs its owner in by API key."""
    ray = FakeRayJobs()
    with ServerThread(ray.app) as ray_url:
        cluster_id, owner_id, _ = run_to_running(parts.engine, [1], 1)
        with session_scope(parts.engine) as session:
            cluster = session.get(Cluster, cluster_id)
            cluster.dashboard_url = ray_url
            session.add(cluster)
            key = api_key_for(session, session.get(User, owner_id))
        yield cluster_id, {"PORTAL_API_KEY": key, "PORTAL_URL": portal_url}, ray


def test_submit_follows_the_output_until_the_job_succeeds(cli, running_cluster):
    cluster_id, env, ray = running_cluster

    result = cli(
        "jobs", "submit", str(cluster_id), "--follow", "--", "python", "train.py", "--name", "a b", **env
    )

    assert result.exit_code == 0, result.output
    assert result.stdout == "".join(LOG_LINES)  # each line once, the [brackets] as they were
    assert "succeeded" in result.stderr
    (submitted,) = ray.jobs.values()
    assert submitted["entrypoint"] == "python train.py --name 'a b'"
    job_id = submitted["metadata"]["portal_job_id"]

    listed = cli("jobs", "list", str(cluster_id), **env)
    assert listed.exit_code == 0 and job_id in listed.stdout and "succeeded" in listed.stdout
    logs = cli("jobs", "logs", str(cluster_id), job_id, **env)
    assert logs.exit_code == 0 and logs.stdout == "".join(LOG_LINES)


def test_jobs_logs_follow_prints_only_new_output(cli, running_cluster):
    cluster_id, env, ray = running_cluster
    submitted = cli(
        "jobs", "submit", str(cluster_id), "echo hi", "--runtime-env", '{"env_vars": {"A": "1"}}', **env
    )
    assert submitted.exit_code == 0, submitted.output
    (job,) = ray.jobs.values()
    assert job["entrypoint"] == "echo hi" and job["runtime_env"] == {"env_vars": {"A": "1"}}

    followed = cli("jobs", "logs", str(cluster_id), job["metadata"]["portal_job_id"], "--follow", **env)

    assert followed.exit_code == 0, followed.output
    assert followed.stdout == "".join(LOG_LINES)


def test_jobs_on_a_cluster_that_is_not_running_are_refused(cli, signed_in, parts):
    with session_scope(parts.engine) as session:
        market_with(session, [1])
    created = cli(
        "clusters", "create", "--name", "p", "--gpu-model", "H100-80GB", "--gpus", "1", "--hours", "1",
        "--no-wait", "--json",
    )  # fmt: skip
    cluster_id = json.loads(created.stdout)["id"]

    refused = cli("jobs", "submit", cluster_id, "--", "python", "x.py")
    assert refused.exit_code == 1
    assert refused.stderr.strip() == "portal: Jobs run on a running cluster; this one is pending."
    bad_env = cli("jobs", "submit", cluster_id, "python x.py", "--runtime-env", "{pip: torch}")
    assert bad_env.exit_code == 2 and "--runtime-env is not valid JSON" in bad_env.stderr


# --- pieces ----------------------------------------------------------------------------------------


def test_the_cli_choices_are_the_apis():
    assert {t.value for t in customer_cli.Tier} == {t.value for t in ConnectivityTier}
    assert {s.value for s in customer_cli.State} == {s.value for s in ClusterState}
    purposes = typing.get_args(ClusterSpecIn.model_fields["purpose"].annotation)
    assert {p.value for p in customer_cli.Purpose} == set(purposes)


def test_new_output_follows_a_log_whose_start_the_portal_has_dropped():
    assert customer_cli.new_output("", "a\n") == "a\n"
    assert customer_cli.new_output("a\n", "a\nb\n") == "b\n"
    shown = "".join(f"step {i}\n" for i in range(1000))
    assert customer_cli.new_output(shown, shown[3000:] + "step 1000\n") == "step 1000\n"
    assert customer_cli.usd(1_234_565_000) == "1,234.57 USD"


def test_create_with_autoscaling_bounds(cli, signed_in, parts):
    with session_scope(parts.engine) as session:
        market_with(session, [1])
    created = cli(
        "clusters", "create", "--name", "elastic", "--gpu-model", "H100-80GB", "--gpus", "1", "--hours", "1",
        "--autoscale", "0", "3", "--no-wait", "--json",
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    assert (json.loads(created.stdout)["min_workers"], json.loads(created.stdout)["max_workers"]) == (0, 3)
    (cluster,) = clusters_in_db(parts)
    assert (cluster.min_workers, cluster.max_workers) == (0, 3)
    refused = cli(
        "clusters", "create", "--name", "bad", "--gpu-model", "H100-80GB", "--gpus", "1", "--hours", "1",
        "--autoscale", "3", "1", "--no-wait",
    )  # fmt: skip
    assert refused.exit_code != 0 and "min_workers <= max_workers" in refused.output
