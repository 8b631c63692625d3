"""Certificates the overlay's CA issued, so that revoked ones can be blocklisted until they expire."""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from portal.models.base import UTCDateTime, id_field, timestamp_field


class MeshCertificate(SQLModel, table=True):
    """One certificate the CA signed for a device or for a customer's connection (``portal clusters
    connect``); the portal's node and the lighthouses are not recorded (they are never revoked).

    ``fingerprint`` is Nebula's (sha256 of the certificate's raw bytes, as ``pki.blocklist`` wants it). A
    revoked certificate is blocklisted until ``expires_at``; after that Nebula refuses it anyway.
    """

    __tablename__ = "mesh_certificates"

    id: uuid.UUID = id_field()
    fingerprint: str = Field(sa_type=sa.String(64), unique=True)
    # No foreign key: a removed device's row goes, its certificates stay blocklisted until they expire.
    device_id: uuid.UUID | None = Field(default=None, index=True)
    # A customer's connection: its owner (the cluster names which connection).
    user_id: uuid.UUID | None = Field(default=None, foreign_key="users.id")
    # The cluster whose group the certificate carries, if any.
    cluster_id: uuid.UUID | None = Field(default=None, foreign_key="clusters.id", index=True)
    groups: str = Field(sa_type=sa.String(512))  # comma-separated, as nebula-cert -groups takes them
    issued_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    revoked_at: datetime | None = timestamp_field()
