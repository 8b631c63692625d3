"""device address: the one host the portal calls for a device (its agent's registered address)

An agent reports where its Ray head's dashboard, GCS and metrics listen; the portal calls those only when
their host is this address (the peer address of the agent's registration, an overlay address once the mesh
assigns one), so no agent can point the portal at a host of its choosing.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 13:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("address", sa.String(length=45), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("address")
