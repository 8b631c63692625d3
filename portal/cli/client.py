"""The customer API over HTTP, for the ``portal`` CLI and for scripts: sign-in, clusters, jobs and quotes.

Every failure is an ``ApiError`` carrying the API's error envelope (status, code, message, details); a portal
that cannot be reached is its subclass ``PortalUnreachable``. Signed-in credentials live in a file only its
owner can read, ``$XDG_CONFIG_HOME/gpu-portal/credentials.json``; ``PORTAL_API_KEY`` (with ``PORTAL_URL``)
overrides it for scripts and CI.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, NotRequired, TypedDict, TypeVar, cast

import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_incrementing

from portal import __version__

API_PREFIX = "/api/v1"
# A deploy answered "busy" (503 placement_busy: others were booking the same GPUs; nothing was changed) is
# sent again this many times in all, a second more apart each time.
BUSY_ATTEMPTS = 4
BUSY_PAUSE_S = 1.0
CREDENTIALS_FILE = "credentials.json"
T = TypeVar("T")


# --- wire shapes (portal/schemas/clusters.py); times are ISO 8601 strings, money integer micro-USD ------


class Tokens(TypedDict):
    access_token: str
    refresh_token: str
    token_type: str
    expires_in: int


class Account(TypedDict):
    id: str
    email: str | None
    display_name: str
    roles: list[str]


class Event(TypedDict):
    id: int
    at: str
    kind: str
    message: str


class Node(TypedDict):
    id: str
    device_id: str
    device_name: str
    role: str
    state: str
    state_reason: str
    gpu_count: int
    rate_micro: int
    ray_node_id: str | None
    simulated: bool
    joined_at: str | None
    ended_at: str | None


class Cluster(TypedDict):
    id: str
    name: str
    purpose: str
    state: str
    state_reason: str
    gpu_model: str
    gpu_count: int
    countries: list[str]
    connectivity_tier: str | None
    duration_hours: int
    price_per_gpu_hour_micro: int
    ray_address: str | None
    client_address: str | None
    dashboard_url: str | None
    created_at: str
    started_at: str | None
    expires_at: str | None
    ended_at: str | None
    spent_micro: int
    escrow_micro: int
    simulated: bool
    nodes: list[Node]
    events: list[Event]


class ClusterRequest(TypedDict):
    """What to rent: the body of ``POST /clusters`` (without ``name``, of ``POST /market/quote``)."""

    name: NotRequired[str]
    gpu_model: str
    gpu_count: int
    duration_hours: int
    purpose: NotRequired[str]
    countries: NotRequired[list[str]]
    connectivity_tier: NotRequired[str]
    max_price_per_gpu_hour_micro: NotRequired[int]
    min_workers: NotRequired[int]
    max_workers: NotRequired[int]


class Quote(TypedDict):
    available: bool
    price_per_hour_micro: int
    total_micro: int
    fee_micro: int
    breakdown: list[dict[str, Any]]
    reason: str
    alternatives: list[dict[str, Any]]


class Job(TypedDict):
    id: str
    cluster_id: str
    entrypoint: str
    runtime_env: dict[str, Any]
    ray_submission_id: str | None
    status: str
    message: str
    created_at: str
    started_at: str | None
    ended_at: str | None


class JobLogs(TypedDict):
    job_id: str
    status: str
    logs: str


class Page(TypedDict, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


# --- errors ----------------------------------------------------------------------------------------


class ApiError(Exception):
    """An answer other than success, as the API's error envelope says it: ``{"error": {code, message,
    details}}``; ``status`` 0 when no answer came at all."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            envelope = response.json()["error"]
            return cls(
                response.status_code, str(envelope["code"]), str(envelope["message"]), envelope.get("details")
            )
        except (ValueError, KeyError, TypeError):
            # Not the portal's envelope: a proxy's error page, or a URL that is not a GPU Portal.
            phrase = response.reason_phrase or "error"
            return cls(
                response.status_code,
                "http_error",
                f"{response.url} answered {response.status_code} {phrase}.",
            )


class PortalUnreachable(ApiError):
    def __init__(self, portal_url: str, error: Exception) -> None:
        reason = str(error) or type(error).__name__
        super().__init__(0, "unreachable", f"Cannot reach the portal at {portal_url}: {reason}.")


# --- credentials -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """Either a signed-in session (access and refresh token) or an API key, for one portal."""

    portal_url: str
    access_token: str | None = None
    refresh_token: str | None = None
    api_key: str | None = None
    # Credentials from the environment are never written back (an API key is not refreshed anyway).
    from_environment: bool = False

    def with_tokens(self, tokens: Tokens) -> Credentials:
        return replace(self, access_token=tokens["access_token"], refresh_token=tokens["refresh_token"])


class CredentialsError(Exception):
    """Stored or given credentials that cannot be used as they are."""


def normalize_portal_url(url: str) -> str:
    """``https://portal.example.com`` from what a user may type (a trailing slash or ``/api/v1``)."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise CredentialsError(f"The portal address must start with http:// or https:// (got {url!r}).")
    return url.removesuffix(API_PREFIX).rstrip("/")


def config_dir(env: Mapping[str, str] = os.environ) -> Path:
    # The XDG spec says relative values are to be ignored.
    base = env.get("XDG_CONFIG_HOME", "")
    return (Path(base) if os.path.isabs(base) else Path.home() / ".config") / "gpu-portal"


def credentials_path(env: Mapping[str, str] = os.environ) -> Path:
    return config_dir(env) / CREDENTIALS_FILE


def stored_credentials(env: Mapping[str, str] = os.environ) -> Credentials | None:
    """What ``portal login`` saved, or None."""
    path = credentials_path(env)
    try:
        data = json.loads(path.read_text())
        return Credentials(
            portal_url=normalize_portal_url(data["portal_url"]),
            access_token=data.get("access_token"),
            refresh_token=data.get("refresh_token"),
            api_key=data.get("api_key"),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, CredentialsError) as error:
        raise CredentialsError(f"Cannot read {path} ({error}); run `portal login` again.") from None


def load_credentials(env: Mapping[str, str] = os.environ) -> Credentials | None:
    """``PORTAL_API_KEY`` (with ``PORTAL_URL``, or the stored portal) over what ``portal login`` saved."""
    stored = stored_credentials(env)
    api_key = env.get("PORTAL_API_KEY", "").strip()
    if not api_key:
        # PORTAL_URL alone does not send stored tokens to another portal.
        return stored
    url = env.get("PORTAL_URL") or (stored.portal_url if stored else "")
    if not url:
        raise CredentialsError("PORTAL_API_KEY is set but PORTAL_URL is not: set it to the portal's address.")
    return Credentials(portal_url=normalize_portal_url(url), api_key=api_key, from_environment=True)


def save_credentials(credentials: Credentials, env: Mapping[str, str] = os.environ) -> Path:
    """Write them readable by their owner only (directory 0700, file 0600), replacing the file at once so a
    reader never sees half of it."""
    directory = config_dir(env)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    data = {
        key: value
        for key, value in {
            "portal_url": credentials.portal_url,
            "access_token": credentials.access_token,
            "refresh_token": credentials.refresh_token,
            "api_key": credentials.api_key,
        }.items()
        if value is not None
    }
    # mkstemp creates the file 0600 from the start: the tokens are never readable by others, even briefly.
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".credentials-", suffix=".json")
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(data, file, indent=2)
        os.replace(temporary, directory / CREDENTIALS_FILE)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return directory / CREDENTIALS_FILE


def delete_credentials(env: Mapping[str, str] = os.environ) -> bool:
    try:
        credentials_path(env).unlink()
    except FileNotFoundError:
        return False
    return True


# --- the client ------------------------------------------------------------------------------------


class PortalClient:
    """The customer routes of one portal. With a refresh token, a 401 refreshes the session once and retries;
    ``on_tokens`` is told the rotated pair (the old refresh token no longer works)."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        on_tokens: Callable[[Tokens], None] | None = None,
        timeout_s: float = 30,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.credentials = credentials
        self.on_tokens = on_tokens
        self._http = httpx.Client(
            base_url=credentials.portal_url + API_PREFIX,
            timeout=timeout_s,
            headers={"User-Agent": f"gpu-portal-cli/{__version__}"},
            transport=transport,
        )

    def __enter__(self) -> PortalClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(
        self, method: str, path: str, body: Any, params: dict[str, Any] | None, *, signed: bool = True
    ) -> httpx.Response:
        secret = self.credentials.api_key or self.credentials.access_token
        headers = {"Authorization": f"Bearer {secret}"} if secret and signed else {}
        try:
            return self._http.request(method, path, json=body, params=params, headers=headers)
        except httpx.HTTPError as error:
            raise PortalUnreachable(self.credentials.portal_url, error) from None

    def _call(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        response = self._send(method, path, body, params)
        if response.status_code == 401 and self.credentials.refresh_token and not self.credentials.api_key:
            self.refresh()
            response = self._send(method, path, body, params)
        if not response.is_success:
            raise ApiError.from_response(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiError(
                response.status_code,
                "not_json",
                f"{response.url} did not answer JSON; is {self.credentials.portal_url} a GPU Portal?",
            ) from None

    # --- sign-in

    def login(self, email: str, password: str) -> Tokens:
        tokens = cast(Tokens, self._call("POST", "/auth/login", {"email": email, "password": password}))
        self.credentials = self.credentials.with_tokens(tokens)
        return tokens

    def refresh(self) -> Tokens:
        """Swap the refresh token for a new pair (the portal rotates it on every use)."""
        body = {"refresh_token": self.credentials.refresh_token}
        response = self._send("POST", "/auth/refresh", body, None, signed=False)
        if not response.is_success:
            raise ApiError.from_response(response)
        tokens = cast(Tokens, response.json())
        self.credentials = self.credentials.with_tokens(tokens)
        if self.on_tokens is not None:
            self.on_tokens(tokens)
        return tokens

    def logout(self) -> None:
        """End the session on the portal too, so the stored refresh token is worthless if it leaked."""
        # Unsigned: the refresh token names the session, and an expired access token would only be refused.
        body = {"refresh_token": self.credentials.refresh_token}
        response = self._send("POST", "/auth/logout", body, None, signed=False)
        if not response.is_success:
            raise ApiError.from_response(response)

    def me(self) -> Account:
        return cast(Account, self._call("GET", "/me"))

    # --- market and clusters

    def quote(self, request: ClusterRequest) -> Quote:
        body = {key: value for key, value in request.items() if key != "name"}
        return cast(Quote, self._call("POST", "/market/quote", body))

    def create_cluster(self, request: ClusterRequest) -> Cluster:
        busy = retry_if_exception(
            lambda error: isinstance(error, ApiError) and error.code == "placement_busy"
        )
        for attempt in Retrying(
            retry=busy,
            stop=stop_after_attempt(BUSY_ATTEMPTS),
            wait=wait_incrementing(start=BUSY_PAUSE_S, increment=BUSY_PAUSE_S),
            reraise=True,
        ):
            with attempt:
                return cast(Cluster, self._call("POST", "/clusters", dict(request)))
        raise AssertionError("unreachable")

    def list_clusters(self, *, state: str | None = None, limit: int = 50, offset: int = 0) -> Page[Cluster]:
        params: dict[str, Any] = {"limit": limit, "offset": offset} | ({"state": state} if state else {})
        return cast(Page[Cluster], self._call("GET", "/clusters", params=params))

    def get_cluster(self, cluster_id: uuid.UUID | str) -> Cluster:
        return cast(Cluster, self._call("GET", f"/clusters/{cluster_id}"))

    def extend_cluster(self, cluster_id: uuid.UUID | str, hours: int) -> Cluster:
        return cast(Cluster, self._call("POST", f"/clusters/{cluster_id}/extend", {"hours": hours}))

    def delete_cluster(self, cluster_id: uuid.UUID | str) -> Cluster:
        return cast(Cluster, self._call("DELETE", f"/clusters/{cluster_id}"))

    def connect_cluster(self, cluster_id: uuid.UUID | str, public_key: str) -> dict[str, Any]:
        """A certificate for this machine's key on the cluster's private network."""
        return cast(
            dict[str, Any], self._call("POST", f"/clusters/{cluster_id}/connect", {"public_key": public_key})
        )

    # --- jobs

    def submit_job(
        self, cluster_id: uuid.UUID | str, entrypoint: str, runtime_env: dict[str, Any] | None = None
    ) -> Job:
        body = {"entrypoint": entrypoint, "runtime_env": runtime_env}
        return cast(Job, self._call("POST", f"/clusters/{cluster_id}/jobs", body))

    def list_jobs(self, cluster_id: uuid.UUID | str, *, limit: int = 50, offset: int = 0) -> Page[Job]:
        params = {"limit": limit, "offset": offset}
        return cast(Page[Job], self._call("GET", f"/clusters/{cluster_id}/jobs", params=params))

    def get_job(self, cluster_id: uuid.UUID | str, job_id: uuid.UUID | str) -> Job:
        return cast(Job, self._call("GET", f"/clusters/{cluster_id}/jobs/{job_id}"))

    def job_logs(self, cluster_id: uuid.UUID | str, job_id: uuid.UUID | str) -> JobLogs:
        return cast(JobLogs, self._call("GET", f"/clusters/{cluster_id}/jobs/{job_id}/logs"))
