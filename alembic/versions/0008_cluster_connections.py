"""cluster connections: a customer's machine on their cluster's overlay network

``portal clusters connect`` gives the customer's machine a certificate for the cluster's group alone, at an
overlay address of its own kept for the cluster's life: one row per cluster and customer, the address
unique (devices never take addresses from the connections' part of the overlay).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 17:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cluster_connections",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("cluster_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("overlay_ip", sa.String(length=45), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["cluster_id"], ["clusters.id"]),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("cluster_id", "user_id", name="uq_cluster_connections_cluster_user"),
        sa.UniqueConstraint("overlay_ip"),
    )
    op.create_index("ix_cluster_connections_cluster_id", "cluster_connections", ["cluster_id"])


def downgrade() -> None:
    op.drop_index("ix_cluster_connections_cluster_id", table_name="cluster_connections")
    op.drop_table("cluster_connections")
