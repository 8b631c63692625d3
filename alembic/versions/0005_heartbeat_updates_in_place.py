"""heartbeat updates in place: no index on devices.last_heartbeat_at, free room in each page

Every flush updates the row of each device that beat (thousands a second at swarm scale). With no index on
the column that changes, PostgreSQL updates the row in place (a heap-only tuple) instead of adding an entry
to each of the table's indexes; the free room a lower fill factor leaves in each page is what lets it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 21:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_devices_last_heartbeat_at"))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE devices SET (fillfactor = 80)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE devices RESET (fillfactor)")
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_devices_last_heartbeat_at"), ["last_heartbeat_at"], unique=False)
