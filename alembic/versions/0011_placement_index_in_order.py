"""placement index in placement's order: state, model, price, reliability desc, GPUs desc, id

The candidates query orders ready devices of one model by price, then reliability (highest first), GPU count
(highest first) and id, and takes the first 64 that fit. The index on (state, gpu_model, hourly_price_micro)
gave the price order only, so PostgreSQL read and sorted every device tied at the cheapest price: a model
whose devices mostly take its list price had all of them read, 333,334 rows and 1 s for one placement among
1,000,000 devices (``python -m bench.placement``). With the whole order in the index the scan stops at the
first 64 devices that pass the filters.

The heartbeat flush updates none of these columns, so its updates stay in place (heap-only, migration 0005).
Building the index locks the devices table against writes while it runs (seconds at 1,000,000 devices).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_index("ix_devices_placement")
        batch_op.create_index(
            "ix_devices_placement",
            [
                "state",
                "gpu_model",
                "hourly_price_micro",
                sa.text("reliability DESC"),
                sa.text("gpu_count DESC"),
                "id",
            ],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_index("ix_devices_placement")
        batch_op.create_index(
            "ix_devices_placement", ["state", "gpu_model", "hourly_price_micro"], unique=False
        )
