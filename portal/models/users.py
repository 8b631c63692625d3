"""People and their credentials."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from portal.models.base import created_at_field, id_field, json_field, timestamp_field


class Role(StrEnum):
    CUSTOMER = "customer"
    PROVIDER = "provider"
    ADMIN = "admin"


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: uuid.UUID = id_field()
    # Null for accounts made by signing in with a Solana wallet.
    email: str | None = Field(default=None, sa_type=sa.String(320), unique=True, index=True)
    display_name: str = Field(default="", sa_type=sa.String(120))
    # argon2id hash; null for accounts that only sign in with OAuth or a wallet.
    password_hash: str | None = Field(default=None, sa_type=sa.String(200))
    wallet_address: str | None = Field(default=None, sa_type=sa.String(64), unique=True)
    is_active: bool = Field(default=True)
    created_at: datetime = created_at_field()
    last_login_at: datetime | None = timestamp_field()


class UserRole(SQLModel, table=True):
    __tablename__ = "user_roles"

    user_id: uuid.UUID = Field(foreign_key="users.id", primary_key=True, ondelete="CASCADE")
    role: str = Field(sa_type=sa.String(16), primary_key=True)
    granted_at: datetime = created_at_field()


class ApiKey(SQLModel, table=True):
    """A customer's programmatic credential; only a keyed hash of the key is kept."""

    __tablename__ = "api_keys"

    id: uuid.UUID = id_field()
    user_id: uuid.UUID = Field(foreign_key="users.id", index=True, ondelete="CASCADE")
    name: str = Field(sa_type=sa.String(80))
    prefix: str = Field(sa_type=sa.String(16), unique=True, index=True)
    key_hash: str = Field(sa_type=sa.String(128), unique=True, index=True)
    scopes: list[str] = json_field(list)
    created_at: datetime = created_at_field()
    last_used_at: datetime | None = timestamp_field()
    expires_at: datetime | None = timestamp_field()
    revoked_at: datetime | None = timestamp_field()
