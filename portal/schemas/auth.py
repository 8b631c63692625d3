"""Accounts, sign-in, sessions and API keys on the wire."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from portal.models import Role
from portal.schemas.common import DisplayName

Email = Annotated[str, Field(min_length=3, max_length=320, examples=["ada@example.com"])]
# Bounded so nobody can make the server hash megabytes.
Password = Annotated[str, Field(min_length=1, max_length=200)]
Address = Annotated[str, Field(min_length=32, max_length=44, description="Base58 Solana public key")]
Token = Annotated[str, Field(min_length=1, max_length=200)]


class SignupIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: Email
    password: Password
    roles: list[Literal["customer", "provider"]] = Field(default_factory=lambda: ["customer"], max_length=2)


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: Email
    password: Password


class TokensOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class RefreshIn(BaseModel):
    refresh_token: Token


class LogoutIn(BaseModel):
    refresh_token: Token | None = None


class WalletChallengeIn(BaseModel):
    address: Address


class WalletChallengeOut(BaseModel):
    nonce: str
    message: str


class WalletVerifyIn(BaseModel):
    address: Address
    nonce: Annotated[str, Field(min_length=1, max_length=64)]
    signature: Annotated[str, Field(min_length=1, max_length=100, description="Base58 ed25519 signature")]


class BrowserCodeIn(BaseModel):
    code: Annotated[str, Field(min_length=1, max_length=64)]


class UnlockIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: Annotated[str, Field(min_length=1, max_length=128)]


class UserOut(BaseModel):
    id: uuid.UUID
    email: str | None
    display_name: str
    roles: list[Role]
    wallet_address: str | None
    created_at: datetime


class RolesIn(BaseModel):
    """The roles an account is to hold, exactly (an admin's change)."""

    model_config = ConfigDict(extra="forbid")
    roles: Annotated[list[Role], Field(min_length=1, max_length=3)]


class SessionOut(BaseModel):
    id: uuid.UUID
    kind: str
    method: str
    ip: str | None
    user_agent: str
    created_at: datetime
    last_used_at: datetime | None
    current: bool


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: DisplayName
    scopes: Annotated[list[str], Field(min_length=1, max_length=10)]
    expires_in_days: Annotated[int | None, Field(ge=1, le=3650)] = None


class ApiKeyOut(BaseModel):
    id: uuid.UUID
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None


class ApiKeyCreatedOut(BaseModel):
    id: uuid.UUID
    key: str = Field(description="Shown once; store it now.")
    prefix: str
    api_key: ApiKeyOut


class AuditEntryOut(BaseModel):
    id: int
    at: datetime
    actor_kind: str
    actor_id: str | None
    action: str
    target_type: str | None
    target_id: str | None
    ip: str | None
    outcome: str
    request_id: str | None
    details: dict[str, Any]
