"""Customer commands of ``portal``: sign in, rent Ray clusters and run jobs on them, through the portal's API.

They speak HTTP only (``portal.cli.client``) and never import the server's modules, so they start quickly
and work against any portal. Exit codes: 0 done, 1 the portal refused (or the cluster or job failed), 2 a
local problem (bad input, not signed in, portal unreachable).
"""

from __future__ import annotations

import json
import os
import shlex
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from portal.cli.client import (
    ApiError,
    Cluster,
    ClusterRequest,
    Credentials,
    CredentialsError,
    Event,
    PortalClient,
    PortalUnreachable,
    Tokens,
    credentials_path,
    delete_credentials,
    load_credentials,
    normalize_portal_url,
    save_credentials,
    stored_credentials,
)

clusters_app = typer.Typer(help="Rent Ray clusters: create, list, get, extend, delete.", no_args_is_help=True)
jobs_app = typer.Typer(help="Run jobs on your Ray clusters and read their output.", no_args_is_help=True)

# How often a waiting command asks the portal again; the tests shorten them.
CLUSTER_POLL_S = 0.5
LOG_POLL_S = 1.0
UP_STATES = {"running", "degraded"}
ENDED_STATES = {"failed", "terminating", "terminated", "expired"}
FINAL_JOB_STATUSES = {"succeeded", "failed", "stopped"}
MICRO_PER_USD = Decimal(1_000_000)
LAST_EVENTS = 10


# The API's choices, for --help and early errors. Not imported from portal.models, which would load the
# server's ORM on every command; tests/test_customer_cli.py checks that they agree.
class Tier(StrEnum):
    ULTRA_HIGH = "ultra_high"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class Purpose(StrEnum):
    GENERAL = "general"
    TRAIN = "train"
    INFERENCE = "inference"


class State(StrEnum):
    PENDING = "pending"
    PROVISIONING = "provisioning"
    RUNNING = "running"
    DEGRADED = "degraded"
    TERMINATING = "terminating"
    TERMINATED = "terminated"
    FAILED = "failed"
    EXPIRED = "expired"


JsonOption = Annotated[bool, typer.Option("--json", help="Print what the API answered, as JSON.")]
ClusterId = Annotated[uuid.UUID, typer.Argument(help="The cluster's id, as `portal clusters list` shows it.")]
JobId = Annotated[uuid.UUID, typer.Argument(help="The job's id, as `portal jobs list` shows it.")]


# --- output ----------------------------------------------------------------------------------------


def console(*, stderr: bool = False) -> Console:
    # No markup: names, events and logs come from others and may hold [brackets] rich would interpret.
    shown = Console(stderr=stderr, markup=False, highlight=False)
    if not shown.is_terminal and "COLUMNS" not in os.environ:
        shown.width = 200  # piped output feeds scripts and grep: 80 columns would fold the ids
    return shown


def fail(message: str, code: int = 2) -> typer.Exit:
    """``portal: message`` in red on stderr, as the server commands say it; the caller raises the Exit."""
    typer.secho(f"portal: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=code)


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


def usd(micro: int) -> str:
    return f"{(Decimal(micro) / MICRO_PER_USD).quantize(Decimal('0.01'), ROUND_HALF_UP):,} USD"


def local_time(text: str | None, pattern: str = "%Y-%m-%d %H:%M") -> str:
    if not text:
        return "-"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:  # the API's times are UTC, even where the database dropped the zone
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone().strftime(pattern)


def nodes_label(count: int) -> str:
    return f"{count} node" if count == 1 else f"{count} nodes"


def gpus_label(cluster: Cluster) -> str:
    label = f"{cluster['gpu_count']} x {cluster['gpu_model']}"
    return f"{label} (simulated)" if cluster["simulated"] else label


def event_line(event: Event) -> str:
    return f"{local_time(event['at'], '%H:%M:%S')}  {event['kind']:<13} {event['message']}"


# --- calling the portal ----------------------------------------------------------------------------


def report(error: ApiError) -> typer.Exit:
    if isinstance(error, PortalUnreachable):
        return fail(error.message)
    exit_ = fail(error.message, code=1)
    if error.status == 401:
        typer.echo("Sign in again with `portal login --portal URL` (or check PORTAL_API_KEY).", err=True)
    available = error.details.get("available") if isinstance(error.details, dict) else None
    if available:
        typer.echo("Available now:", err=True)
        for offer in available:
            price = offer.get("min_price_per_gpu_hour_micro")
            countries = ", ".join(offer.get("countries", []))
            typer.echo(
                f"  {offer.get('gpu_model')}: {offer.get('gpus')} GPUs in {countries}"
                + (f", from {usd(price)} per GPU-hour" if price else ""),
                err=True,
            )
    return exit_


@contextmanager
def reporting_errors() -> Iterator[None]:
    """API errors as one line (and exit 1), an unreachable portal as one line (and exit 2); no tracebacks."""
    try:
        yield
    except ApiError as error:
        raise report(error) from None


def keeping_rotated_tokens(credentials: Credentials) -> Callable[[Tokens], None]:
    def keep(tokens: Tokens) -> None:
        try:
            save_credentials(credentials.with_tokens(tokens))
        except OSError as error:
            # The old refresh token is spent now; reusing it would end the session on the portal.
            typer.echo(
                f"portal: could not save the refreshed sign-in ({error}); sign in again next time.", err=True
            )

    return keep


@contextmanager
def signed_in() -> Iterator[PortalClient]:
    try:
        credentials = load_credentials()
    except CredentialsError as error:
        raise fail(str(error)) from None
    if credentials is None:
        raise fail("Not signed in: run `portal login --portal URL` (or set PORTAL_API_KEY and PORTAL_URL).")
    on_tokens = None if credentials.from_environment else keeping_rotated_tokens(credentials)
    with reporting_errors(), PortalClient(credentials, on_tokens=on_tokens) as client:
        yield client


# --- sign-in ---------------------------------------------------------------------------------------


def login(
    portal: Annotated[
        str | None,
        typer.Option(
            "--portal",
            help="The portal's address, e.g. https://portal.example.com (default: the last one).",
            envvar="PORTAL_URL",
        ),
    ] = None,
    email: Annotated[str | None, typer.Option(help="Your account's email (prompted when not given).")] = None,
    password: Annotated[
        str | None,
        typer.Option(help="Prompted, hidden, when not given: the prompt keeps it out of shell history."),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", help="Sign in with an API key (gpk_...) instead of a password.")
    ] = None,
) -> None:
    """Sign in to a portal; the session is kept in ~/.config/gpu-portal, readable by you only."""
    try:
        previous = stored_credentials()
    except CredentialsError:
        previous = None  # a broken file is replaced by this sign-in
    chosen = portal or (previous.portal_url if previous else "")
    if not chosen:
        raise fail("Give the portal's address: --portal https://portal.example.com")
    try:
        portal_url = normalize_portal_url(chosen)
    except CredentialsError as error:
        raise fail(str(error)) from None
    if api_key and (email or password):
        raise fail("Sign in with either --api-key or --email and --password, not both.")
    with reporting_errors():
        if api_key:
            credentials = Credentials(portal_url=portal_url, api_key=api_key.strip())
            with PortalClient(credentials) as client:
                account = client.me()
        else:
            email = email or typer.prompt("Email")
            password = password or typer.prompt("Password", hide_input=True)
            with PortalClient(Credentials(portal_url=portal_url)) as client:
                client.login(email, password)
                account = client.me()
                credentials = client.credentials
    try:
        path = save_credentials(credentials)
    except OSError as error:
        raise fail(f"Signed in, but could not save the credentials: {error}") from None
    typer.echo(f"Signed in to {portal_url} as {account['email'] or account['display_name']}.")
    typer.echo(f"Credentials saved in {path} (readable by you only).")
    if "customer" not in account["roles"]:
        typer.echo(
            "Note: this account has no customer role; the portal will refuse cluster commands.", err=True
        )


def logout() -> None:
    """Sign out: end the session on the portal and delete the stored credentials."""
    try:
        credentials = stored_credentials()
    except CredentialsError:
        credentials = None  # unreadable: deleting it is all that can be done
    if credentials is not None and credentials.refresh_token:
        try:
            with PortalClient(credentials) as client:
                client.logout()
        except ApiError as error:
            typer.echo(
                f"The portal did not end the session ({error.message}); removing it here anyway.", err=True
            )
    if delete_credentials():
        typer.echo(f"Signed out; removed {credentials_path()}.")
    else:
        typer.echo("Not signed in.")
    if os.environ.get("PORTAL_API_KEY"):
        typer.echo("PORTAL_API_KEY is still set in this shell and still signs commands in.", err=True)


# --- clusters --------------------------------------------------------------------------------------


def micro_from_usd(value: float) -> int:
    micro = int((Decimal(str(value)) * MICRO_PER_USD).to_integral_value(ROUND_DOWN))
    if micro <= 0:
        raise fail("--max-price is in USD per GPU-hour and must be above 0.")
    return micro


def status_line(cluster: Cluster, started: float) -> str:
    joined = sum(node["state"] == "joined" for node in cluster["nodes"])
    reason = f": {cluster['state_reason']}" if cluster["state_reason"] else ""
    return (
        f"{cluster['name']} is {cluster['state']}{reason} ({joined}/{len(cluster['nodes'])} nodes up, "
        f"{time.monotonic() - started:.0f} s)"
    )


def watch_until_settled(portal: PortalClient, cluster: Cluster, out: Console) -> Cluster:
    """Print each new event as it arrives, under a spinner, until the cluster is up or has ended."""
    started = time.monotonic()
    last_seen = 0

    def show_new_events(current: Cluster) -> None:
        nonlocal last_seen
        for event in current["events"]:
            if event["id"] > last_seen:
                out.print(event_line(event))
                last_seen = event["id"]

    show_new_events(cluster)
    with out.status(status_line(cluster, started)) as spinner:
        while cluster["state"] not in UP_STATES | ENDED_STATES:
            time.sleep(CLUSTER_POLL_S)
            cluster = portal.get_cluster(cluster["id"])
            show_new_events(cluster)
            spinner.update(status_line(cluster, started))
    return cluster


def print_connection(cluster: Cluster, out: Console) -> None:
    out.print(f"Cluster {cluster['name']} is {cluster['state']}: {gpus_label(cluster)}.", style="green")
    out.print(f"Ray client address  {cluster['client_address'] or '-'}")
    out.print(f"Dashboard           {cluster['dashboard_url'] or '-'}")
    out.print(f"Run a job:          portal jobs submit {cluster['id']} -- python script.py")


@clusters_app.command("create")
def create_cluster(
    name: Annotated[str, typer.Option(help="A name to know it by.")],
    gpu_model: Annotated[str, typer.Option(help="The GPU model, e.g. H100-80GB.")],
    gpus: Annotated[int, typer.Option(min=1, help="GPUs in all; the portal packs them onto few devices.")],
    hours: Annotated[int, typer.Option(min=1, help="How long it runs; escrow for it is held at once.")],
    country: Annotated[
        list[str] | None, typer.Option(help="Only devices in this country (ISO code; repeat for more).")
    ] = None,
    tier: Annotated[Tier | None, typer.Option(help="The slowest connectivity tier accepted.")] = None,
    max_price: Annotated[float | None, typer.Option(help="The most USD per GPU-hour to pay.")] = None,
    purpose: Annotated[Purpose | None, typer.Option(help="What it is for (default general).")] = None,
    autoscale: Annotated[
        tuple[int, int] | None,
        typer.Option(
            metavar="MIN MAX",
            help="Grow and shrink with the Ray load between MIN and MAX one-GPU workers.",
        ),
    ] = None,
    wait: Annotated[bool, typer.Option(help="Show its progress until it runs (or fails).")] = True,
    as_json: JsonOption = False,
) -> None:
    """Rent GPUs as a Ray cluster; by default wait, showing progress, until it runs."""
    request: ClusterRequest = {
        "name": name,
        "gpu_model": gpu_model,
        "gpu_count": gpus,
        "duration_hours": hours,
    }
    if country:
        request["countries"] = [code.strip().upper() for code in country]
    if tier is not None:
        request["connectivity_tier"] = tier.value
    if max_price is not None:
        request["max_price_per_gpu_hour_micro"] = micro_from_usd(max_price)
    if purpose is not None:
        request["purpose"] = purpose.value
    if autoscale is not None:
        request["min_workers"], request["max_workers"] = autoscale
    # With --json, stdout carries the JSON alone and the progress goes to stderr.
    out = console(stderr=as_json)
    with signed_in() as portal:
        cluster = portal.create_cluster(request)
        out.print(f"Cluster {cluster['name']} ({cluster['id']}) created: {cluster['state']}.")
        out.print(
            f"{gpus_label(cluster)} for {cluster['duration_hours']} h at "
            f"{usd(cluster['price_per_gpu_hour_micro'])} per GPU-hour; "
            f"{usd(cluster['escrow_micro'])} in escrow."
        )
        if wait:
            try:
                cluster = watch_until_settled(portal, cluster, out)
            except KeyboardInterrupt:
                out.print(f"Stopped watching; the cluster carries on: portal clusters get {cluster['id']}")
                raise typer.Exit(130) from None
    if as_json:
        print_json(cluster)
    if cluster["state"] in ENDED_STATES:
        message = (
            f"cluster {cluster['name']} is {cluster['state']}: {cluster['state_reason'] or 'no reason given'}"
        )
        exit_ = fail(message, code=1)
        for event in cluster["events"][-5:]:
            typer.echo(f"  {event_line(event)}", err=True)
        raise exit_
    if wait and not as_json:
        print_connection(cluster, out)
    elif not wait and not as_json:
        out.print(f"Follow it with: portal clusters get {cluster['id']}")


@clusters_app.command("list")
def list_clusters(
    state: Annotated[State | None, typer.Option(help="Only clusters in this state.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="At most this many, newest first.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """Your clusters, newest first."""
    with signed_in() as portal:
        page = portal.list_clusters(state=state.value if state else None, limit=limit)
    if as_json:
        print_json(page)
        return
    if not page["items"]:
        typer.echo(
            f"No {state.value} clusters." if state else "No clusters yet: portal clusters create --help"
        )
        return
    table = Table("ID", "NAME", "STATE", "GPUS", "PER GPU-HOUR", "SPENT", "ENDS", box=None, pad_edge=False)
    for cluster in page["items"]:
        table.add_row(
            cluster["id"],
            cluster["name"],
            cluster["state"],
            gpus_label(cluster),
            usd(cluster["price_per_gpu_hour_micro"]),
            usd(cluster["spent_micro"]),
            local_time(cluster["expires_at"]),
        )
    console().print(table)
    if page["total"] > len(page["items"]):
        typer.echo(f"Showing {len(page['items'])} of {page['total']}; see more with --limit.", err=True)


@clusters_app.command("get")
def get_cluster(cluster_id: ClusterId, as_json: JsonOption = False) -> None:
    """A cluster: state, nodes, Ray addresses, money and its latest events."""
    with signed_in() as portal:
        cluster = portal.get_cluster(cluster_id)
    if as_json:
        print_json(cluster)
        return
    out = console()
    facts = Table.grid(padding=(0, 2))
    for label, value in [
        ("Cluster", f"{cluster['name']} ({cluster['id']})"),
        ("State", cluster["state"] + (f": {cluster['state_reason']}" if cluster["state_reason"] else "")),
        ("GPUs", f"{gpus_label(cluster)} on {nodes_label(len(cluster['nodes']))}, {cluster['purpose']}"),
        (
            "Price",
            f"{usd(cluster['price_per_gpu_hour_micro'])} per GPU-hour for {cluster['duration_hours']} h",
        ),
        ("Spent", f"{usd(cluster['spent_micro'])}; {usd(cluster['escrow_micro'])} still in escrow"),
        ("Created", local_time(cluster["created_at"])),
        ("Ends", local_time(cluster["expires_at"]) if cluster["expires_at"] else "counted from when it runs"),
        ("Ray client", cluster["client_address"] or "-"),
        ("Dashboard", cluster["dashboard_url"] or "-"),
        ("Ray address", cluster["ray_address"] or "-"),
    ]:
        facts.add_row(label, value)
    out.print(facts)
    if cluster["nodes"]:
        nodes = Table(
            "ROLE", "DEVICE", "GPUS", "STATE", "PER GPU-HOUR", title="Nodes", box=None, pad_edge=False
        )
        for node in cluster["nodes"]:
            device = node["device_name"] + (" (simulated)" if node["simulated"] else "")
            nodes.add_row(
                node["role"], device, str(node["gpu_count"]), node["state"], usd(node["rate_micro"])
            )
        out.print(nodes)
    if cluster["events"]:
        out.print(f"Last events ({min(LAST_EVENTS, len(cluster['events']))} of {len(cluster['events'])}):")
        for event in cluster["events"][-LAST_EVENTS:]:
            out.print(f"  {event_line(event)}")


@clusters_app.command("extend")
def extend_cluster(
    cluster_id: ClusterId,
    hours: Annotated[int, typer.Option(min=1, help="Hours to add; escrow for them is held at once.")],
    as_json: JsonOption = False,
) -> None:
    """Let a cluster run longer."""
    with signed_in() as portal:
        cluster = portal.extend_cluster(cluster_id, hours)
    if as_json:
        print_json(cluster)
        return
    ends = f"until {local_time(cluster['expires_at'])}" if cluster["expires_at"] else "once it runs"
    typer.echo(
        f"Cluster {cluster['name']} now runs {cluster['duration_hours']} h in all, {ends}; "
        f"{usd(cluster['escrow_micro'])} in escrow."
    )


@clusters_app.command("delete")
def delete_cluster(
    cluster_id: ClusterId,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask first.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Terminate a cluster; what is left of its escrow is returned."""
    with signed_in() as portal:
        if not yes:
            cluster = portal.get_cluster(cluster_id)
            typer.confirm(
                f"Terminate {cluster['name']} ({cluster['state']}, {gpus_label(cluster)})?", abort=True
            )
        cluster = portal.delete_cluster(cluster_id)
    if as_json:
        print_json(cluster)
        return
    typer.echo(f"Cluster {cluster['name']} is {cluster['state']}; unused escrow is returned to your balance.")


# --- jobs ------------------------------------------------------------------------------------------


def entrypoint_of(words: list[str]) -> str:
    """One argument is a shell command as given; several (after ``--``) are quoted back into one."""
    return words[0] if len(words) == 1 else shlex.join(words)


def runtime_env_of(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise fail(f"--runtime-env is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise fail('--runtime-env must be a JSON object, e.g. \'{"pip": ["torch"]}\'.')
    return value


def new_output(shown: str, logs: str) -> str:
    """What ``logs`` adds to what was shown already."""
    if logs.startswith(shown):
        return logs[len(shown) :]
    # The portal keeps only the end of a long log, so its start moves on: find where, within what was shown,
    # the log now starts; what follows the overlap is new.
    probe = logs[:200]
    at = shown.find(probe)
    while at >= 0:
        overlap = shown[at:]
        if logs.startswith(overlap):
            return logs[len(overlap) :]
        at = shown.find(probe, at + 1)
    return logs


def follow_logs(portal: PortalClient, cluster_id: uuid.UUID | str, job_id: uuid.UUID | str) -> str:
    """Print the job's output as it grows until the job ends; returns its final status."""
    shown = ""
    while True:
        answer = portal.job_logs(cluster_id, job_id)
        typer.echo(new_output(shown, answer["logs"]), nl=False)
        shown = answer["logs"]
        if answer["status"] in FINAL_JOB_STATUSES:
            return answer["status"]
        time.sleep(LOG_POLL_S)


def end_with_job_status(portal: PortalClient, cluster_id: uuid.UUID | str, job_id: str, status: str) -> None:
    if status == "succeeded":
        typer.echo(f"Job {job_id} succeeded.", err=True)
        return
    message = portal.get_job(cluster_id, job_id)["message"]
    raise fail(f"job {job_id} {status}" + (f": {message}" if message else ""), code=1)


@jobs_app.command("submit")
def submit_job(
    cluster_id: ClusterId,
    entrypoint: Annotated[
        list[str], typer.Argument(help="The shell command to run; put it after -- when it has options.")
    ],
    runtime_env: Annotated[
        str | None, typer.Option(help='Ray runtime environment as JSON, e.g. \'{"pip": ["torch"]}\'.')
    ] = None,
    follow: Annotated[
        bool, typer.Option(help="Print its output until it ends; exit 1 unless it succeeds.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Run a job on a running cluster (through Ray's Jobs API)."""
    env = runtime_env_of(runtime_env)
    with signed_in() as portal:
        job = portal.submit_job(cluster_id, entrypoint_of(entrypoint), env)
        if as_json:
            print_json(job)
        else:
            typer.echo(f"Job {job['id']} submitted: {job['status']}.", err=follow)
        if follow:
            end_with_job_status(portal, cluster_id, job["id"], follow_logs(portal, cluster_id, job["id"]))
        elif not as_json:
            typer.echo(f"Its output: portal jobs logs {cluster_id} {job['id']} --follow")


@jobs_app.command("list")
def list_jobs(cluster_id: ClusterId, as_json: JsonOption = False) -> None:
    """The cluster's jobs, newest first."""
    with signed_in() as portal:
        page = portal.list_jobs(cluster_id)
    if as_json:
        print_json(page)
        return
    if not page["items"]:
        typer.echo("No jobs on this cluster yet.")
        return
    table = Table("ID", "STATUS", "SUBMITTED", "ENTRYPOINT", "MESSAGE", box=None, pad_edge=False)
    for job in page["items"]:
        table.add_row(
            job["id"], job["status"], local_time(job["created_at"]), job["entrypoint"], job["message"]
        )
    console().print(table)


@jobs_app.command("logs")
def job_logs(
    cluster_id: ClusterId,
    job_id: JobId,
    follow: Annotated[bool, typer.Option(help="Keep printing new output until the job ends.")] = False,
) -> None:
    """A job's output so far (or, with --follow, as it comes)."""
    with signed_in() as portal:
        if follow:
            end_with_job_status(portal, cluster_id, str(job_id), follow_logs(portal, cluster_id, job_id))
            return
        answer = portal.job_logs(cluster_id, job_id)
    typer.echo(answer["logs"], nl=False)
    typer.echo(f"Job {job_id} is {answer['status']}.", err=True)
