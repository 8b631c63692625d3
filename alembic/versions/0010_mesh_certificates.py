"""mesh certificates: every overlay certificate the CA issues, so revoked ones are blocklisted

A device's or a customer's connection's certificate, by its Nebula fingerprint, with the cluster whose group
it carries; ``revoked_at`` is set when the device is blocked or removed, or the cluster ends. Lighthouses and
agents blocklist the revoked ones until they expire (the index on ``expires_at`` finds those).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mesh_certificates",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.Uuid(), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("cluster_id", sa.Uuid(), nullable=True),
        sa.Column("groups", sa.String(length=512), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["cluster_id"], ["clusters.id"], name=op.f("fk_mesh_certificates_cluster_id_clusters")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_mesh_certificates_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mesh_certificates")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_mesh_certificates_fingerprint")),
    )
    op.create_index("ix_mesh_certificates_device_id", "mesh_certificates", ["device_id"])
    op.create_index("ix_mesh_certificates_cluster_id", "mesh_certificates", ["cluster_id"])
    op.create_index("ix_mesh_certificates_expires_at", "mesh_certificates", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_mesh_certificates_expires_at", table_name="mesh_certificates")
    op.drop_index("ix_mesh_certificates_cluster_id", table_name="mesh_certificates")
    op.drop_index("ix_mesh_certificates_device_id", table_name="mesh_certificates")
    op.drop_table("mesh_certificates")
