"""device isolation: how the device runs customers' code, and when its last rental was wiped

``isolation`` is what the agent reports at registration: "container" (every Ray node in a container of its
own, wiped after the rental) or "none" (on the host, development only; a production portal does not hire
such devices). ``container_engine`` and ``worker_image`` say which engine and image run the rentals;
``last_wipe_at`` is when the agent last confirmed a rental's wipe (NULL: never).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 17:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("isolation", sa.String(length=16), nullable=False, server_default="none")
        )
        batch_op.add_column(
            sa.Column("container_engine", sa.String(length=16), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("worker_image", sa.String(length=255), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("last_wipe_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("last_wipe_at")
        batch_op.drop_column("worker_image")
        batch_op.drop_column("container_engine")
        batch_op.drop_column("isolation")
