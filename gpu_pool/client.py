"""The agent's HTTP client for the portal's worker API (the only way the agent talks to the portal)."""

from __future__ import annotations

from typing import Any

import httpx


class PortalError(Exception):
    pass


class TokenRefused(PortalError):
    """The portal does not accept this device token (revoked, rotated or never valid): stop for good."""


class PortalUnavailable(PortalError):
    """The portal cannot be reached or failed; worth retrying."""


class Rejected(PortalError):
    """The portal answered 4xx to what the agent sent: a bug or a version mismatch, not worth retrying."""

    def __init__(self, message: str, *, status: int = 400, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class PortalClient:
    def __init__(self, portal_url: str, token: str, *, timeout_s: float = 10) -> None:
        self.portal_url, self.token = portal_url.rstrip("/"), token
        self.base = self.portal_url + "/api/v1/worker"
        self._http = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s)

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        try:
            response = self._http.request(
                method, self.base + path, json=body, params=params, timeout=timeout_s or self._http.timeout
            )
        except httpx.HTTPError as error:
            raise PortalUnavailable(f"{type(error).__name__}: {error}") from error
        if response.status_code in (401, 403):
            message = response.json().get("error", {}).get("message", response.text)
            raise TokenRefused(message)
        if response.status_code == 429 or response.status_code >= 500:
            raise PortalUnavailable(f"portal answered {response.status_code}")
        if response.status_code >= 400:
            raise Rejected(
                f"{response.status_code}: {response.text[:500]}",
                status=response.status_code,
                code=_error_code(response),
            )
        return response.json() if response.content else None

    def register(self, report: dict) -> dict:
        return self._call("POST", "/register", body=report)

    def heartbeat(self, gpus: list[dict], ray: dict, mesh: dict | None = None) -> dict:
        body: dict[str, Any] = {"gpus": gpus, "ray": ray}
        if mesh is not None:  # only agents on the overlay say how they stand on it
            body["mesh"] = mesh
        return self._call("POST", "/heartbeat", body=body)

    def mesh_certificate(self, public_key: str) -> dict:
        """A certificate for this agent's Nebula public key; Rejected with code ``mesh_off`` (409) when the
        portal runs without the overlay."""
        return self._call("POST", "/mesh/certificate", body={"public_key": public_key})

    def poll_commands(self, wait_s: int) -> list[dict]:
        return self._call("GET", "/commands", params={"wait": wait_s}, timeout_s=wait_s + 10)

    def command_result(self, command_id: str, ok: bool, detail: str) -> None:
        self._call("POST", f"/commands/{command_id}/result", body={"ok": ok, "detail": detail[:2000]})

    def challenge(self) -> dict:
        return self._call("GET", "/challenge")

    def answer_challenge(self, challenge_id: str, body: dict) -> dict:
        return self._call("POST", f"/challenge/{challenge_id}", body=body, timeout_s=60)

    def close(self) -> None:
        self._http.close()


def _error_code(response: httpx.Response) -> str | None:
    try:
        code = response.json().get("error", {}).get("code")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, str) else None
