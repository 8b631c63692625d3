"""device commands indexed by completion time, for retention

Retention (``services/retention.py``) deletes agents' commands answered more than
``PORTAL_RETENTION_DEVICE_COMMANDS_DAYS`` ago, oldest first, a batch per transaction: each batch reads the
index from its oldest end instead of scanning the table (one to three commands a device a day).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 06:10:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("device_commands", schema=None) as batch_op:
        batch_op.create_index("ix_device_commands_completed_at", ["completed_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("device_commands", schema=None) as batch_op:
        batch_op.drop_index("ix_device_commands_completed_at")
