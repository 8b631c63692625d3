"""hearing gaps: times the portal heard no agent, which never count as a device's silence

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 12:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "hearing_gaps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hearing_gaps")),
    )
    with op.batch_alter_table("hearing_gaps", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hearing_gaps_ended_at"), ["ended_at"], unique=False)


def downgrade() -> None:
    op.drop_table("hearing_gaps")
