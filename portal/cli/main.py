"""``portal``: run the portal, its task workers and its database migrations."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from portal import frontend_build
from portal.cli import connect, customer
from portal.config import PROJECT_ROOT, Environment, MeshKind, Settings, SettingsError, load_settings
from portal.infra import serving

app = typer.Typer(help="GPU Portal: an open GPU marketplace.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
demo_app = typer.Typer(help="Demo data for a local portal.", no_args_is_help=True)
app.add_typer(db_app, name="db")
admin_app = typer.Typer(help="Portal administrators.", no_args_is_help=True)
ledger_app = typer.Typer(help="The books.", no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")
app.add_typer(demo_app, name="demo")
app.add_typer(admin_app, name="admin")
# Customer commands: they talk to a portal over its API, so they need no server settings.
app.command("login")(customer.login)
app.command("logout")(customer.logout)
app.add_typer(customer.clusters_app, name="clusters")
assert connect.connect_cluster  # `portal clusters connect` registers itself on clusters_app
app.add_typer(customer.jobs_app, name="jobs")

BUN_PACKAGE_DIR = PROJECT_ROOT / ".tools" / "node_modules" / "@oven"


def fail(message: str) -> typer.Exit:
    typer.secho(f"portal: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except SettingsError as error:
        raise fail(str(error)) from None


def reflex_environment(settings: Settings) -> dict[str, str]:
    """Environment for Reflex that keeps it offline and its caches inside the project."""
    env = dict(os.environ)
    env.setdefault("REFLEX_TELEMETRY_ENABLED", "false")
    env.setdefault("REFLEX_CHECK_LATEST_VERSION", "0")
    env.setdefault("REFLEX_HTTP_CLIENT_BIND_ADDRESS", "0.0.0.0")
    env.setdefault("REFLEX_DIR", str(PROJECT_ROOT / ".reflex"))
    env.setdefault("BUN_INSTALL_CACHE_DIR", str(PROJECT_ROOT / ".bun-cache"))
    if "REFLEX_BUN_PATH" not in env:
        for bun in sorted(BUN_PACKAGE_DIR.glob("bun-linux-*/bin/bun")):
            env["REFLEX_BUN_PATH"] = str(bun)
            break
    if settings.redis_url:
        # Reflex starts two web workers a core (one when state lives in process, without Redis); Granian
        # advises no more than the cores. One more than the cores served the most heartbeats
        # (bench/heartbeats.py).
        env.setdefault("GRANIAN_WORKERS", str((os.cpu_count() or 1) + 1))
    return env


@app.command()
def run(
    port: Annotated[int | None, typer.Option(help="Port for pages and API (default PORTAL_PORT).")] = None,
    demo: Annotated[
        bool | None,
        typer.Option(help="Create the demo accounts and print their logins (default: in development only)."),
    ] = None,
) -> None:
    """Apply migrations, seed the demo accounts and serve the portal (Reflex production mode)."""
    settings = settings_or_exit()
    if port is not None:
        os.environ["PORTAL_PORT"] = str(port)
        settings = settings_or_exit()
    from portal.infra import migrations

    # What a start does before serving, timed (one line): a second start skips what is current.
    steps = StepTimer()
    migrated = migrations.upgrade_unless_current(settings.sqlalchemy_url, settings.data_dir / SCHEMA_STAMP)
    steps.done("schema migrated" if migrated else "schema current")
    env = reflex_environment(settings)
    welcome = settings.environment is Environment.DEVELOPMENT if demo is None else demo
    if welcome:
        seed_demo_accounts(settings)
        steps.done("demo accounts")
        typer.echo(
            f"Demo accounts ready (their logins follow once the portal serves; kept in {settings.data_dir})"
        )
        # Three local agents with simulated GPUs (two for a cluster, one to heal it), unless told
        # otherwise (PORTAL_DEMO_AGENTS=0).
        env.setdefault("PORTAL_DEMO_AGENTS", "3")
        # Payouts within minutes of a demo cluster running, rather than at $10 once an hour.
        env.setdefault("PORTAL_PAYOUT_THRESHOLD_MICRO", "100000")
        env.setdefault("PORTAL_SETTLEMENT_INTERVAL_S", "30")
    # Processes behind one load balancer serve one build, made for the public URL's port.
    if frontend_build.is_current(frontend_build.fingerprint(env, settings.pages_port)):
        steps.done("pages current")
    else:
        _build_pages(env, settings.pages_port)
        steps.done("pages built")
    typer.echo(f"Ready to serve: {steps}")
    typer.secho(f"Starting the portal on {settings.base_url} (Ctrl-C stops it)", fg=typer.colors.GREEN)
    if settings.mesh is MeshKind.NEBULA:
        _start_overlay_node()
    if welcome:
        _welcome_once_serving(settings)
    os.chdir(PROJECT_ROOT)
    serving.allow_connections(settings.max_connections)
    args = frontend_build.serve_command(settings.host, settings.port)
    env[frontend_build.SERVE_PAGES] = "1"
    _serve_here(args, env)


def _serve_here(args: list[str], env: dict[str, str]) -> NoReturn:
    """``reflex run`` in this very process, as if exec'd: the modules this start imported (SQLAlchemy, the
    models, the services) serve the app's import too, about a second of CPU less than a new interpreter's.
    Ctrl-C reaches Reflex directly and it stops what it started."""
    from portal.config import get_settings

    os.environ.clear()
    os.environ.update(env)
    get_settings.cache_clear()  # read again with what the environment now says (the demo's agents, say)
    sys.argv = args
    from reflex.reflex import cli

    cli.main(args=args[1:], prog_name="reflex")
    raise SystemExit(0)


SCHEMA_STAMP = "schema-head"  # in the data dir: the migrations' head the database was last brought to


class StepTimer:
    """Seconds taken by each step of a start, shown as ``what 0.4 s, other 1.2 s``."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []
        self._since = time.monotonic()

    def done(self, what: str) -> None:
        now = time.monotonic()
        self.steps.append((what, now - self._since))
        self._since = now

    def __str__(self) -> str:
        return ", ".join(f"{what} {seconds:.1f} s" for what, seconds in self.steps)


def _start_overlay_node() -> None:
    """``portal mesh-node`` beside the server (it ends with it): without it the portal cannot reach heads
    on the overlay. It says itself why when it cannot start (no TUN device, say)."""
    invoked = Path(sys.argv[0])
    portal = str(invoked) if invoked.name == "portal" else "portal"
    subprocess.Popen([portal, "mesh-node", "--watch-parent"], cwd=PROJECT_ROOT)


def _welcome_once_serving(settings: Settings) -> None:
    """The banner (``portal.cli.banner``), printed by a small process of its own once the portal answers:
    this process becomes the server next. Same process group, so Ctrl-C ends it too."""
    invoked = Path(sys.argv[0])
    portal = str(invoked) if invoked.name == "portal" else "portal"  # the command as the user ran it
    subprocess.Popen(
        [sys.executable, "-m", "portal.cli.banner", settings.base_url, str(settings.data_dir), portal],
        cwd=PROJECT_ROOT,
    )


def _build_pages(env: dict[str, str], port: int) -> None:
    typer.secho("Building the pages (once after each change of the app)...", fg=typer.colors.GREEN)
    started = time.monotonic()
    if not frontend_build.build(env, port):
        raise fail("the pages could not be built (Reflex's output above says why)")
    typer.echo(f"Pages built in {time.monotonic() - started:.0f} s")


@app.command()
def build(
    port: Annotated[
        int | None,
        typer.Option(
            help="Port the pages call the API back on (default PORTAL_PORT, or PORTAL_PUBLIC_URL's port "
            "when that is http:// on another port)."
        ),
    ] = None,
) -> None:
    """Build the pages for production now (an image build does), so that ``portal run`` starts at once."""
    settings = settings_or_exit()
    _build_pages(reflex_environment(settings), port or settings.pages_port)


@app.command()
def worker(
    processes: Annotated[
        int | None, typer.Option(help="Worker processes (default PORTAL_WORKER_PROCESSES).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="Threads per process (default PORTAL_WORKER_THREADS).")
    ] = None,
) -> None:
    """Run Dramatiq task workers against RabbitMQ (PORTAL_BROKER_URL)."""
    settings = settings_or_exit()
    if settings.uses_embedded_broker:
        raise fail(
            "portal worker needs PORTAL_BROKER_URL=amqp://...; "
            "without it the task worker runs inside `portal run`"
        )
    dramatiq = shutil.which("dramatiq", path=str(Path(sys.executable).parent)) or "dramatiq"
    args = [
        dramatiq,
        "tasks",
        "--processes",
        str(processes or settings.worker_processes),
        "--threads",
        str(threads or settings.worker_threads),
    ]
    os.chdir(PROJECT_ROOT)
    os.execv(args[0], args)


@app.command()
def mesh(
    port: Annotated[int, typer.Option(help="Nebula's UDP port (open it to the internet).")] = 4242,
    host: Annotated[str, typer.Option(help="The address to listen on.")] = "0.0.0.0",
    overlay_ip: Annotated[
        str | None, typer.Option(help="Which of PORTAL_LIGHTHOUSES this is (default: the first).")
    ] = None,
    cert_hours: Annotated[
        int, typer.Option(min=1, help="Its certificate's lifetime; renewed at half of it.")
    ] = 720,
) -> None:
    """Run a lighthouse and relay of the overlay (PORTAL_MESH=nebula), certified by the portal's CA. It
    refuses the certificates the portal revoked, re-reading them from the database every 30 s."""
    import signal

    from sqlalchemy.exc import SQLAlchemyError

    from portal.infra.db import build_engine
    from portal.services.errors import DomainError
    from portal.services.mesh import lighthouse

    settings = settings_or_exit()
    engine = build_engine(settings.sqlalchemy_url, settings=settings)

    def refresh_blocklist() -> bool:
        try:
            return lighthouse.refresh_blocklist(engine, prepared.config_path)
        except SQLAlchemyError as error:
            # The database away must not take the overlay down: the last blocklist stays.
            typer.secho(
                f"portal: blocklist not re-read ({type(error).__name__}); the last one stays", err=True
            )
            return False

    try:
        prepared = lighthouse.prepare(
            settings, overlay_ip=overlay_ip, listen_port=port, listen_host=host, hours=cert_hours
        )
        refresh_blocklist()
        process = lighthouse.run_nebula(prepared.config_path)
    except DomainError as error:
        raise fail(error.message) from None
    typer.secho(
        f"Lighthouse and relay {prepared.lighthouse.overlay_ip} on UDP {host}:{port} "
        f"(listed as {prepared.lighthouse.public_address}); Ctrl-C stops it",
        fg=typer.colors.GREEN,
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: process.terminate())
    renew_at = time.monotonic() + cert_hours * 3600 / 2
    while True:
        try:
            code = process.wait(timeout=lighthouse.BLOCKLIST_EVERY_S)
            break
        except subprocess.TimeoutExpired:
            pass
        reload = refresh_blocklist()
        if time.monotonic() >= renew_at:
            try:
                lighthouse.renew(settings, prepared)
                reload, renew_at = True, time.monotonic() + cert_hours * 3600 / 2
            except DomainError as error:
                typer.secho(f"portal: not renewed, retried in a minute: {error.message}", err=True)
                renew_at = time.monotonic() + 60
        if reload:
            process.send_signal(signal.SIGHUP)
    raise typer.Exit(code=0 if code in (0, -signal.SIGTERM) else 1)


@app.command("mesh-node")
def mesh_node(
    tun: Annotated[
        str, typer.Option(help="The TUN device to make (at most 15 characters).")
    ] = "nebula-portal",
    port: Annotated[int, typer.Option(help="Nebula's UDP port (0: any free one).")] = 0,
    watch_parent: Annotated[bool, typer.Option(hidden=True)] = False,
) -> None:
    """Run the portal's own node on the overlay (PORTAL_MESH=nebula): how the portal reaches heads across
    NATs. Needs a TUN device: root, or CAP_NET_ADMIN and /dev/net/tun. ``portal run`` starts it itself."""
    import signal
    import threading

    from gpu_pool.mesh import MeshError
    from portal.services.errors import DomainError
    from portal.services.mesh.portal_node import PortalNode

    settings = settings_or_exit()
    try:
        node = PortalNode(settings, tun_device=tun, listen_port=port)
        node.start()
    except (DomainError, MeshError) as error:
        raise fail(f"the portal's overlay node did not start: {getattr(error, 'message', error)}") from None
    typer.secho(
        f"The portal's overlay node {settings.portal_overlay_ip} is up on {tun}; Ctrl-C stops it",
        fg=typer.colors.GREEN,
    )
    done, parent = threading.Event(), os.getppid()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    # Started by `portal run`: it ends with the portal, even when only the portal was signalled.
    while not done.wait(1.0):
        if watch_parent and os.getppid() != parent:
            break
    node.stop()


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Upgrade the schema (default: to the newest revision)."""
    settings = settings_or_exit()
    from portal.infra import migrations

    migrations.upgrade(settings.sqlalchemy_url, revision)
    typer.echo(f"database at revision {migrations.current_revision(settings.sqlalchemy_url)}")


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision, or 'base' for empty.")],
) -> None:
    """Downgrade the schema to a revision."""
    settings = settings_or_exit()
    from portal.infra import migrations

    migrations.downgrade(settings.sqlalchemy_url, revision)
    typer.echo(f"database at revision {migrations.current_revision(settings.sqlalchemy_url) or 'base'}")


@db_app.command("current")
def db_current() -> None:
    """Print the schema revision of the database and the newest one."""
    settings = settings_or_exit()
    from portal.infra import migrations

    typer.echo(f"current: {migrations.current_revision(settings.sqlalchemy_url) or 'base'}")
    typer.echo(f"head:    {migrations.head_revision()}")


def seed_demo_accounts(settings: Settings) -> list:
    from portal.infra.db import build_engine, session_scope
    from portal.services.demo import demo_deposit, seed_demo

    engine = build_engine(settings.sqlalchemy_url)
    try:
        with session_scope(engine) as session:
            logins = seed_demo(session, settings.data_dir)
            demo_deposit(session, settings)
            return logins
    finally:
        engine.dispose()


def print_demo_logins(logins: list, settings: Settings) -> None:
    typer.secho(f"Demo logins (kept in {settings.data_dir / 'demo_logins.json'}):", bold=True)
    for login in logins:
        typer.echo(f"  {login.role:<9} {login.email:<32} {login.password}")


@demo_app.command("kill-agent")
def demo_kill_agent(
    device: Annotated[str, typer.Argument(help="The demo device's name, e.g. demo-rig-2.")],
) -> None:
    """Kill a local demo agent and its Ray node at once, as if its machine died: watch its cluster heal."""
    settings = settings_or_exit()
    from sqlmodel import select

    from portal.demo_agents import kill_agent
    from portal.infra.db import build_engine, session_scope
    from portal.models import Device

    engine = build_engine(settings.sqlalchemy_url)
    try:
        with session_scope(engine) as session:
            found = session.exec(select(Device.token_hash).where(Device.name == device)).all()
    finally:
        engine.dispose()
    if len(found) != 1:
        raise fail(f"no single device named {device!r}")
    killed = kill_agent(found[0])
    if not killed:
        raise fail(f"no agent of {device} runs on this machine")
    typer.echo(f"killed the agent of {device} and its Ray node (pids {', '.join(map(str, killed))})")


@demo_app.command("seed")
def demo_seed() -> None:
    """Create the demo admin, customer (with credits) and provider; print their logins."""
    settings = settings_or_exit()
    print_demo_logins(seed_demo_accounts(settings), settings)


@admin_app.command("create")
def admin_create(
    email: Annotated[str, typer.Argument(help="The admin's email; an existing account is made admin.")],
    password: Annotated[
        str | None,
        typer.Option(
            help="Password for a new account (prompted, hidden, when not given).",
            envvar="PORTAL_ADMIN_PASSWORD",
        ),
    ] = None,
) -> None:
    """Create an admin account, or give an existing account the admin role."""
    settings = settings_or_exit()
    from portal.infra.db import build_engine, session_scope
    from portal.services.accounts import users
    from portal.services.errors import DomainError

    engine = build_engine(settings.sqlalchemy_url)
    try:
        with session_scope(engine) as session:
            existing = users.get_user_by_email(session, email)
            if existing is None and password is None:
                password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
            user = users.make_admin(session, email=email, password=password)
    except DomainError as error:
        raise fail(error.message) from None
    finally:
        engine.dispose()
    typer.echo(f"{user.email} is an admin ({'existing account' if existing else 'new account'})")


@ledger_app.command("check")
def ledger_check() -> None:
    """Recompute every balance from the ledger entries: exit 0 when the books balance, 1 with the problems."""
    settings = settings_or_exit()
    from portal.infra.db import build_engine, session_scope
    from portal.services.money.ledger import verify_books

    engine = build_engine(settings.sqlalchemy_url)
    try:
        with session_scope(engine) as session:
            problems = verify_books(session)
    finally:
        engine.dispose()
    for problem in problems:
        typer.secho(f"portal: {problem}", err=True, fg=typer.colors.RED)
    if problems:
        raise typer.Exit(code=1)
    typer.echo("The books balance: every entry sums to zero and no personal account is negative.")


@app.command("config")
def show_config() -> None:
    """Print every setting with its environment variable and current value (secrets masked)."""
    settings = settings_or_exit()
    for name in Settings.model_fields:
        value = getattr(settings, name)
        shown = "********" if "secret" in name and value is not None else value
        typer.echo(f"PORTAL_{name.upper():<28} {shown}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
