"""Sign-in state: sessions (one per signed-in browser or client), their refresh tokens, linked identities."""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from portal.models.base import UTCDateTime, created_at_field, id_field, timestamp_field


class AuthSession(SQLModel, table=True):
    """One sign-in: a browser or an API client. Its refresh tokens form one rotation family."""

    __tablename__ = "auth_sessions"
    __table_args__ = (sa.Index("ix_auth_sessions_user_created", "user_id", "created_at"),)

    id: uuid.UUID = id_field()
    user_id: uuid.UUID = Field(foreign_key="users.id", ondelete="CASCADE")
    kind: str = Field(default="api", sa_type=sa.String(16))  # "browser" or "api"
    method: str = Field(default="password", sa_type=sa.String(16))  # password, wallet, oauth:<provider>
    # Keyed hash of the browser's HttpOnly cookie secret (browser sessions only).
    cookie_hash: str | None = Field(default=None, sa_type=sa.String(128), unique=True)
    ip: str | None = Field(default=None, sa_type=sa.String(64))
    user_agent: str = Field(default="", sa_type=sa.String(300))
    created_at: datetime = created_at_field()
    last_used_at: datetime | None = timestamp_field()
    expires_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = timestamp_field()
    revoked_reason: str = Field(default="", sa_type=sa.String(120))


class RefreshToken(SQLModel, table=True):
    __tablename__ = "refresh_tokens"

    id: int | None = Field(default=None, primary_key=True)
    session_id: uuid.UUID = Field(foreign_key="auth_sessions.id", index=True, ondelete="CASCADE")
    token_hash: str = Field(sa_type=sa.String(128), unique=True, index=True)
    created_at: datetime = created_at_field()
    # Set when the token is exchanged; a second exchange is reuse and revokes the whole session.
    used_at: datetime | None = timestamp_field()


class OAuthIdentity(SQLModel, table=True):
    __tablename__ = "oauth_identities"
    __table_args__ = (
        sa.UniqueConstraint("provider", "subject", name="uq_oauth_identities_provider_subject"),
    )

    id: int | None = Field(default=None, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", index=True, ondelete="CASCADE")
    provider: str = Field(sa_type=sa.String(40))
    subject: str = Field(sa_type=sa.String(255))
    email: str = Field(default="", sa_type=sa.String(320))
    created_at: datetime = created_at_field()
