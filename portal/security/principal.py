"""Who is calling: a signed-in user, a customer API key or a worker agent's device token."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum

from portal.models import Role


class PrincipalKind(StrEnum):
    USER = "user"
    API_KEY = "api_key"
    DEVICE = "device"


@dataclass(frozen=True)
class Principal:
    kind: PrincipalKind
    user_id: uuid.UUID
    roles: frozenset[Role] = frozenset()
    # API keys carry scopes; signed-in users may do whatever their roles allow.
    scopes: frozenset[str] | None = None
    session_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None
    device_id: uuid.UUID | None = None

    @property
    def id(self) -> str:
        """A stable id for rate limits and the audit log."""
        if self.kind is PrincipalKind.DEVICE:
            return f"device:{self.device_id}"
        if self.kind is PrincipalKind.API_KEY:
            return f"api_key:{self.api_key_id}"
        return f"user:{self.user_id}"

    def has_scope(self, scope: str) -> bool:
        return self.scopes is None or scope in self.scopes


@dataclass(frozen=True)
class RequestOrigin:
    """Where a request came from, for throttling and the audit log."""

    ip: str | None = None
    user_agent: str = ""
