"""device overlay: each device's address on the Nebula overlay, and where it stands on it

The portal is the overlay's certificate authority and allocates each device one address from
PORTAL_OVERLAY_CIDR, kept for every certificate after; the unique index is what makes two concurrent
allocations of one address fail (the loser retries with another). ``mesh_state`` starts at "none" (never
certified); ``mesh_relayed`` is unknown (NULL) until the agent reports its tunnels.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 14:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("overlay_ip", sa.String(length=45), nullable=True))
        batch_op.add_column(
            sa.Column("mesh_state", sa.String(length=16), nullable=False, server_default="none")
        )
        batch_op.add_column(sa.Column("mesh_relayed", sa.Boolean(), nullable=True))
        batch_op.add_column(
            sa.Column("mesh_certificate_expires_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.create_index(batch_op.f("ix_devices_overlay_ip"), ["overlay_ip"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_devices_overlay_ip"))
        batch_op.drop_column("mesh_certificate_expires_at")
        batch_op.drop_column("mesh_relayed")
        batch_op.drop_column("mesh_state")
        batch_op.drop_column("overlay_ip")
