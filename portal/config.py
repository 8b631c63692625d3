"""The portal's one settings object.

Every setting is read from an environment variable with the ``PORTAL_`` prefix (or a ``.env`` file).
Left unset, each external service falls back to its embedded, in-process equivalent, so a fresh clone
runs with nothing else installed; production points them at real services by URL.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import re
import secrets
import tempfile
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

ENV_PREFIX = "PORTAL_"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class LogFormat(StrEnum):
    JSON = "json"
    TEXT = "text"


class MeshKind(StrEnum):
    NONE = "none"  # every node on loopback, as on one host
    NEBULA = "nebula"


_HOST_PORT = re.compile(
    r"^(?:(?P<name>[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
    r"[A-Za-z0-9])?)*)|\[(?P<ipv6>[0-9A-Fa-f:.]+)\]):(?P<port>[0-9]{1,5})$"
)


class Lighthouse(BaseModel):
    """A Nebula lighthouse: its address on the overlay and where nodes reach it on the internet."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    overlay_ip: ipaddress.IPv4Address
    public_address: str = Field(description="host:port of its UDP listener, e.g. 203.0.113.7:4242.")

    @field_validator("public_address")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        found = _HOST_PORT.match(value) if len(value) <= 260 else None
        if found is None or not 1 <= int(found["port"]) <= 65535:
            raise ValueError(f"{value[:80]!r} is not host:port, e.g. 203.0.113.7:4242 or lh.example.com:4242")
        if found["ipv6"] is not None:
            try:
                ipaddress.IPv6Address(found["ipv6"])
            except ValueError:
                raise ValueError(f"{value[:80]!r} has no valid IPv6 address in its brackets") from None
        return value


class SettingsError(Exception):
    """A setting is missing or malformed; the message is one line naming the variable."""


def _require_scheme(value: str | None, schemes: tuple[str, ...], hint: str) -> str | None:
    if value is None or value == "":
        return None
    if not value.startswith(schemes):
        raise ValueError(f"must start with {' or '.join(schemes)} ({hint})")
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", validate_default=True
    )

    environment: Environment = Environment.DEVELOPMENT
    data_dir: Path = Field(
        default=PROJECT_ROOT / "data", description="Where the embedded database and keys live."
    )
    database_url: str | None = Field(
        default=None,
        description="sqlite:///path or postgresql+psycopg://user@host/db; unset: SQLite in data_dir.",
    )
    redis_url: str | None = Field(default=None, description="redis://host:port/db; unset: in-process cache.")
    broker_url: str | None = Field(
        default=None,
        description="amqp://user:pass@host:port/vhost; unset: in-process broker and worker threads.",
    )
    prometheus_url: str | None = Field(
        default=None, description="http://host:9090; unset: built-in sample store."
    )
    solana_rpc_url: str | None = Field(
        default=None, description="Solana JSON-RPC URL; unset: in-process LiteSVM."
    )
    solana_mint: str | None = Field(
        default=None,
        description="Base58 SPL mint customers deposit and providers are paid in (USDC-like); unset: a local "
        "mint on LiteSVM.",
    )
    solana_token_decimals: Annotated[int, Field(ge=0, le=12)] = Field(
        default=6, description="The mint's decimals; with 6, one token unit is one micro-USD."
    )
    solana_treasury_keypair: SecretStr | None = Field(
        default=None, description="The treasury keypair as base58 or a JSON byte array (solana-keygen)."
    )
    solana_treasury_keypair_file: Path | None = Field(
        default=None, description="A solana-keygen JSON file with the treasury keypair."
    )
    solana_explorer_url: str = Field(
        default="https://explorer.solana.com/tx/{signature}?cluster=custom",
        description="Link to a transaction, with {signature} in it.",
    )
    payout_threshold_micro: Annotated[int, Field(ge=1)] = Field(
        default=10_000_000, description="Providers are paid once their unpaid earnings reach this."
    )
    settlement_interval_s: Annotated[int, Field(ge=5, le=86_400)] = Field(
        default=3600, description="How often due payouts are made and sent."
    )
    deposit_scan_interval_s: Annotated[int, Field(ge=2, le=3600)] = Field(
        default=15, description="How often deposit accounts are checked for new funds."
    )
    payout_batch_size: Annotated[int, Field(ge=1, le=20)] = Field(
        default=10, description="Transfers packed into one transaction (fewer when it would not fit)."
    )
    secret_key: SecretStr | None = Field(
        default=None, description="Signs tokens; unset in development: generated once into data_dir."
    )
    host: str = Field(default="127.0.0.1", description="Address the portal listens on.")
    port: Annotated[int, Field(ge=1, le=65535)] = 3000
    public_url: str = Field(default="", description="How users reach the portal; default http://host:port.")
    max_connections: Annotated[int, Field(ge=64, le=1_000_000)] = Field(
        default=10_000,
        description="Requests one portal process holds in flight at once, its web workers together (an "
        "agent holds one: its long-poll); past it a new connection waits.",
    )
    db_pool_size: Annotated[int, Field(ge=1, le=200)] = 5
    db_pool_overflow: Annotated[int, Field(ge=0, le=200)] = 5
    db_transaction_pooler: bool = Field(
        default=False,
        description="PostgreSQL is reached through a pooler in transaction mode (PgBouncer): no server-side "
        "prepared statements, as a transaction's statements may meet another server connection next time.",
    )
    log_level: str = "INFO"
    log_format: LogFormat | None = Field(
        default=None, description="json or text; unset: text on a terminal, JSON otherwise."
    )
    cache_prefix: str = Field(
        default="portal:", description="Prefix of every cache key (share one Redis safely)."
    )
    embedded_worker_threads: Annotated[int, Field(ge=1, le=64)] = 2
    worker_processes: Annotated[int, Field(ge=1, le=64)] = 2
    worker_threads: Annotated[int, Field(ge=1, le=256)] = 8
    readiness_timeout_s: Annotated[float, Field(gt=0, le=30)] = 2.0
    access_token_ttl_s: Annotated[int, Field(ge=60, le=86_400)] = 900
    refresh_token_ttl_days: Annotated[int, Field(ge=1, le=365)] = 30
    rate_limit_per_minute: Annotated[int, Field(ge=1)] = Field(
        default=600,
        description="Requests a minute allowed from one IP address, and again from one principal.",
    )
    login_max_failures: Annotated[int, Field(ge=1, le=100)] = Field(
        default=5,
        description="Wrong passwords for one account from one address before it waits (15 s, doubling).",
    )
    login_lockout_s: Annotated[int, Field(ge=1, le=86_400)] = Field(
        default=900, description="The longest wait, and the window failures are counted in."
    )
    login_account_max_failures: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=100,
        description="Wrong passwords for one account from all addresses before it locks for everyone "
        "(the owner is emailed an unlock link).",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token /metrics requires (Prometheus' credentials_file); required in production.",
    )
    smtp_url: str | None = Field(
        default=None,
        description="smtp://[user:pass@]host:port, smtp+starttls:// or smtps://; unset: no email is sent.",
    )
    mail_from: str = Field(
        default="", description="Sender of the portal's email; default portal@<public_url's host>."
    )
    max_body_bytes: Annotated[int, Field(ge=1024)] = 1_048_576
    admin_ip_allowlist: list[str] = Field(
        default_factory=list, description="CIDRs allowed on admin routes, as a JSON list; empty: any address."
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="CIDRs of reverse proxies whose X-Forwarded-For names the client, as a JSON list; empty: "
        "the peer is the client.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to call the API from a browser; default: public_url.",
    )
    demo_agents: Annotated[int, Field(ge=0, le=16)] = Field(
        default=0,
        description="Local agents with simulated GPUs the portal starts (development, embedded only).",
    )
    heartbeat_interval_s: Annotated[int, Field(ge=1, le=300)] = Field(
        default=5, description="How often agents heartbeat; a device is offline after 3 missed."
    )
    verification_deadline_s: Annotated[int | None, Field(ge=1, le=3600)] = Field(
        default=None,
        description="Time allowed for a proof-of-compute round; default 60 s simulated, 120 s GPU.",
    )
    reverify_after_h: Annotated[int, Field(ge=1, le=24 * 90)] = Field(
        default=24, description="Idle devices prove their compute again after this many hours."
    )
    metering_interval_s: Annotated[int, Field(ge=5, le=3600)] = Field(
        default=30, description="How often running clusters are charged for their uptime."
    )
    platform_fee_bps: Annotated[int, Field(ge=0, le=5000)] = Field(
        default=1000, description="The platform's share of every charge, in basis points (1000 = 10%)."
    )
    node_start_timeout_s: Annotated[int, Field(ge=10, le=3600)] = Field(
        default=120, description="Time a device has to start its Ray node before another replaces it."
    )
    ray_gcs_ports: str = Field(
        default="20000-29999",
        description="first-last: ports the portal gives Ray heads' GCS on their device's host, so every "
        "node of a cluster can start at once (kept below Linux's ephemeral ports, which nodes take for "
        "the rest).",
    )
    autoscale_idle_timeout_s: Annotated[int, Field(ge=10, le=86_400)] = Field(
        default=120, description="An autoscaled cluster releases a worker idle this long (min_workers stay)."
    )
    max_node_replacements: Annotated[int, Field(ge=0, le=20)] = Field(
        default=3, description="Devices tried in place of failed ones before a deploy fails."
    )
    # What the database keeps (services/retention.py): each window in days, rows older go in batches.
    retention_batch_rows: Annotated[int, Field(ge=100, le=100_000)] = Field(
        default=5_000,
        description="Rows deleted per transaction when pruning (a backlog never holds a long lock).",
    )
    retention_gpu_samples_days: Annotated[int, Field(ge=1, le=365)] = Field(
        default=7, description="GPU samples of the portal's own store (no Prometheus); charts show 7 days."
    )
    retention_state_transitions_days: Annotated[int, Field(ge=31, le=3650)] = Field(
        default=90,
        description="Moves of devices, clusters and nodes (each device's newest before the window is kept; "
        "payouts' forever); reliability reads 30 days.",
    )
    retention_fault_events_days: Annotated[int, Field(ge=31, le=3650)] = Field(
        default=90, description="Fault events; reliability counts the last 30 days."
    )
    retention_hearing_gaps_days: Annotated[int, Field(ge=1, le=3650)] = Field(
        default=30, description="Times the portal heard no agent; liveness reads the last hour."
    )
    retention_cluster_events_days: Annotated[int, Field(ge=1, le=3650)] = Field(
        default=90,
        description="Logs of clusters ended this long ago (the cluster's row keeps how it ended).",
    )
    retention_device_commands_days: Annotated[int, Field(ge=1, le=3650)] = Field(
        default=7, description="Agents' commands answered this long ago (those live nodes still read stay)."
    )
    retention_auth_sessions_days: Annotated[int, Field(ge=1, le=3650)] = Field(
        default=30,
        description="Sign-in sessions (and their refresh tokens) expired or revoked this long ago.",
    )
    retention_mesh_certificates_days: Annotated[int, Field(ge=1, le=3650)] = Field(
        default=7, description="Overlay certificates expired this long ago (off the blocklist since)."
    )
    retention_audit_log_days: Annotated[int, Field(ge=365, le=36_500)] = Field(
        default=400, description="The audit log: a compliance record, kept a year at least."
    )
    mesh: MeshKind = Field(
        default=MeshKind.NONE,
        description="nebula: devices and the portal join one Nebula overlay, the portal its certificate "
        "authority; none: everything on loopback, as on one host.",
    )
    overlay_cidr: str = Field(
        default="100.64.0.0/10",
        description="The overlay's IPv4 network; the portal's node takes its first host, devices the rest.",
    )
    mesh_cert_hours: Annotated[int, Field(ge=1, le=24 * 7)] = Field(
        default=12, description="Lifetime of a device's overlay certificate; agents renew before it ends."
    )
    lighthouses: list[Lighthouse] = Field(
        default_factory=list,
        description='The overlay\'s lighthouses, as a JSON list of {"overlay_ip", "public_address"}.',
    )
    mesh_ca_key: SecretStr | None = Field(
        default=None,
        description="The overlay CA's private key (nebula-cert ca's ca.key, PEM); unset: generated once into "
        "data_dir.",
    )
    mesh_ca_key_file: Path | None = Field(default=None, description="A file holding the CA's private key.")
    mesh_ca_cert: str | None = Field(
        default=None, description="The overlay CA's certificate (PEM), given with its key."
    )
    mesh_ca_cert_file: Path | None = Field(default=None, description="A file holding the CA's certificate.")
    oauth_github_client_id: str | None = None
    oauth_github_client_secret: SecretStr | None = None
    oauth_google_client_id: str | None = None
    oauth_google_client_secret: SecretStr | None = None
    oidc_name: str = Field(default="oidc", pattern=r"^[a-z][a-z0-9_-]{1,30}$")
    oidc_discovery_url: str | None = Field(
        default=None, description="https://issuer/.well-known/openid-configuration"
    )
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: str | None) -> str | None:
        return _require_scheme(
            value, ("sqlite://", "postgresql+psycopg://"), "psycopg 3 driver for PostgreSQL"
        )

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        return _require_scheme(value, ("redis://", "rediss://", "unix://"), "a Redis URL")

    @field_validator("broker_url")
    @classmethod
    def _broker_scheme(cls, value: str | None) -> str | None:
        return _require_scheme(value, ("amqp://", "amqps://"), "a RabbitMQ URL")

    @field_validator("admin_ip_allowlist", "trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not an IP network such as 10.0.0.0/8") from None
        return value

    @field_validator("smtp_url")
    @classmethod
    def _smtp_scheme(cls, value: str | None) -> str | None:
        return _require_scheme(value, ("smtp://", "smtps://", "smtp+starttls://"), "an SMTP URL")

    @field_validator("metrics_token")
    @classmethod
    def _metrics_token_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < 16:
            raise ValueError("must be at least 16 characters (openssl rand -hex 32)")
        return value

    @field_validator("prometheus_url", "solana_rpc_url", "oidc_discovery_url")
    @classmethod
    def _http_scheme(cls, value: str | None) -> str | None:
        return _require_scheme(value, ("http://", "https://"), "an HTTP URL")

    @field_validator("solana_mint")
    @classmethod
    def _mint_address(cls, value: str | None) -> str | None:
        if not value:
            return None
        from solders.pubkey import Pubkey

        try:
            Pubkey.from_string(value)
        except ValueError:
            raise ValueError("must be a base58 Solana address") from None
        return value

    @field_validator("solana_explorer_url")
    @classmethod
    def _explorer_link(cls, value: str) -> str:
        if "{signature}" not in value:
            raise ValueError("must contain {signature}")
        return value

    @field_validator("mesh", mode="before")
    @classmethod
    def _mesh_unset_is_none(cls, value: object) -> object:
        return MeshKind.NONE if value is None or (isinstance(value, str) and not value.strip()) else value

    @field_validator("overlay_cidr")
    @classmethod
    def _overlay_network(cls, value: str) -> str:
        try:
            network = ipaddress.ip_network(value.strip())
        except ValueError as error:
            raise ValueError(f"{value[:60]!r} is not an IPv4 network like 100.64.0.0/10 ({error})") from None
        if network.version != 4:
            raise ValueError("must be an IPv4 network (Nebula 1.6 carries IPv4 on the overlay)")
        if network.prefixlen > 29:
            raise ValueError("must be a /29 or larger: the portal's node and the devices need addresses")
        return str(network)

    @field_validator("ray_gcs_ports")
    @classmethod
    def _port_range(cls, value: str) -> str:
        first, sep, last = value.strip().partition("-")
        if not (sep and first.isdigit() and last.isdigit() and 1024 <= int(first) <= int(last) <= 65535):
            raise ValueError(f"{value[:40]!r} is not a port range like 20000-29999 within 1024-65535")
        return f"{int(first)}-{int(last)}"

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @model_validator(mode="after")
    def _production_needs_a_secret(self) -> Settings:
        if self.environment is Environment.PRODUCTION and self.secret_key is None:
            raise ValueError("PORTAL_SECRET_KEY must be set when PORTAL_ENVIRONMENT=production")
        if self.environment is Environment.PRODUCTION and self.metrics_token is None:
            # /metrics names every online device, its host and GPUs, and the payout totals.
            raise ValueError("PORTAL_METRICS_TOKEN must be set when PORTAL_ENVIRONMENT=production")
        return self

    @model_validator(mode="after")
    def _real_chain_needs_mint_and_treasury(self) -> Settings:
        if self.solana_rpc_url and self.solana_mint is None:
            raise ValueError("PORTAL_SOLANA_MINT must be set when PORTAL_SOLANA_RPC_URL is")
        if self.solana_rpc_url and not (self.solana_treasury_keypair or self.solana_treasury_keypair_file):
            raise ValueError(
                "PORTAL_SOLANA_TREASURY_KEYPAIR or PORTAL_SOLANA_TREASURY_KEYPAIR_FILE must be set when "
                "PORTAL_SOLANA_RPC_URL is"
            )
        return self

    @model_validator(mode="after")
    def _mesh_addresses_and_authority(self) -> Settings:
        reserved = {self.overlay_network.network_address, self.overlay_network.broadcast_address}
        reserved.add(self.portal_overlay_ip)
        for lighthouse in self.lighthouses:
            if lighthouse.overlay_ip not in self.overlay_network:
                raise ValueError(
                    f"PORTAL_LIGHTHOUSES: {lighthouse.overlay_ip} is outside PORTAL_OVERLAY_CIDR "
                    f"{self.overlay_cidr}"
                )
            if lighthouse.overlay_ip in reserved:
                raise ValueError(
                    f"PORTAL_LIGHTHOUSES: {lighthouse.overlay_ip} is taken (the overlay's network or "
                    "broadcast address, the portal's node, or another lighthouse)"
                )
            reserved.add(lighthouse.overlay_ip)
        if self.mesh_ca_key is not None and self.mesh_ca_key_file is not None:
            raise ValueError("set PORTAL_MESH_CA_KEY or PORTAL_MESH_CA_KEY_FILE, not both")
        if self.mesh_ca_cert is not None and self.mesh_ca_cert_file is not None:
            raise ValueError("set PORTAL_MESH_CA_CERT or PORTAL_MESH_CA_CERT_FILE, not both")
        key_given = self.mesh_ca_key is not None or self.mesh_ca_key_file is not None
        cert_given = self.mesh_ca_cert is not None or self.mesh_ca_cert_file is not None
        if key_given != cert_given:
            raise ValueError(
                "the overlay CA's key and certificate go together: set PORTAL_MESH_CA_KEY(_FILE) and "
                "PORTAL_MESH_CA_CERT(_FILE), or neither (one is generated into PORTAL_DATA_DIR)"
            )
        return self

    @property
    def ray_gcs_port_range(self) -> range:
        first, last = self.ray_gcs_ports.split("-")
        return range(int(first), int(last) + 1)

    @property
    def overlay_network(self) -> ipaddress.IPv4Network:
        network = ipaddress.ip_network(self.overlay_cidr)
        assert isinstance(network, ipaddress.IPv4Network)  # the validator allows IPv4 only
        return network

    @property
    def portal_overlay_ip(self) -> ipaddress.IPv4Address:
        """The portal's own node on the overlay: the network's first host."""
        return self.overlay_network.network_address + 1

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'portal.db'}"

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    @property
    def pages_port(self) -> int:
        """The port the built pages call the API back on (their event websocket): the public URL's when
        users reach the portal over plain HTTP on another port, as through a load balancer in front of
        several processes, else this process's own. Over HTTPS the pages take the page's own port whatever
        they were built with, so the build stays this process's (the image's, made ahead)."""
        public = urlsplit(self.public_url)
        if public.scheme != "http":
            return self.port
        try:
            return public.port or 80
        except ValueError:
            return self.port

    @property
    def allowed_origins(self) -> list[str]:
        if self.cors_origins:
            return self.cors_origins
        origins = [self.base_url]
        if not self.public_url and self.host == "127.0.0.1":
            # The same loopback portal, as browsers may name it.
            origins.append(f"http://localhost:{self.port}")
        return origins

    @property
    def uses_embedded_broker(self) -> bool:
        return self.broker_url is None

    def signing_key(self) -> str:
        """The secret key, generated once into ``data_dir`` for development installs (read once)."""
        return self._signing_key

    @functools.cached_property
    def _signing_key(self) -> str:
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        return made_once(self.data_dir / "secret_key", lambda: secrets.token_urlsafe(48)).strip()


def made_once(path: Path, make: Callable[[], str]) -> str:
    """The text of a private file (mode 600) made on first use by whichever process comes first.

    Processes sharing data_dir (portals and task workers) may all come first at once: each writes what it
    made to a file of its own beside ``path`` and links that into place, where only the first link lands,
    so they all read one text and none reads a file half written."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, staged = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as file:
                file.write(make())
            with contextlib.suppress(FileExistsError):
                os.link(staged, path)
        finally:
            os.unlink(staged)
    return path.read_text()


def describe_validation_error(error: ValidationError) -> str:
    """One line naming the first bad variable, e.g. ``PORTAL_PORT: Input should be ...``."""
    first = error.errors()[0]
    location = [str(part) for part in first["loc"]]
    message = first["msg"].removeprefix("Value error, ")
    if not location:
        return f"invalid settings: {message}"
    return f"invalid setting {ENV_PREFIX}{location[0].upper()}: {message}"


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error)) from None
    except SourceError as error:  # a list or object setting that is not JSON
        found = re.search(r'field "(\w+)"', str(error))
        name = f"{ENV_PREFIX}{found[1].upper()}" if found else "a setting"
        raise SettingsError(f"invalid setting {name}: not valid JSON (a JSON list is expected)") from None


@functools.cache
def get_settings() -> Settings:
    return load_settings()
