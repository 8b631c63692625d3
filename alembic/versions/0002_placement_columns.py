"""placement columns, node start commands, cluster client address, GPU samples, network snapshots

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 08:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

# The GPU catalogue's list prices as this revision knew them (micro-USD per GPU-hour), frozen here so that
# the migration's result never changes with the live catalogue.
UNKNOWN_MODEL_PRICE_MICRO = 300_000
LIST_PRICES_MICRO = {
    "H200-141GB": 3_000_000,
    "H100-80GB": 2_000_000,
    "A100-80GB": 1_200_000,
    "A100-40GB": 1_000_000,
    "L40S-48GB": 900_000,
    "A10-24GB": 450_000,
    "RTX-4090-24GB": 400_000,
    "RTX-3090-24GB": 250_000,
    "T4-16GB": 150_000,
}

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gpu_model", sa.String(length=80), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("gpu_count", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column("hourly_price_micro", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.create_index(
            "ix_devices_placement", ["state", "gpu_model", "hourly_price_micro"], unique=False
        )
    # Devices registered before this revision: their GPUs say what they hold.
    op.execute(
        "UPDATE devices SET gpu_count = (SELECT count(*) FROM gpus WHERE gpus.device_id = devices.id), "
        "gpu_model = COALESCE((SELECT min(model) FROM gpus WHERE gpus.device_id = devices.id), ''), "
        f"hourly_price_micro = COALESCE(price_per_gpu_hour_micro, {UNKNOWN_MODEL_PRICE_MICRO})"
    )
    # Known models at their list price; the portal keeps the column right from here on.
    for name, price in LIST_PRICES_MICRO.items():
        op.execute(
            sa.text(
                "UPDATE devices SET hourly_price_micro = :price "
                "WHERE price_per_gpu_hour_micro IS NULL AND gpu_model = :name"
            ).bindparams(price=price, name=name)
        )
    with op.batch_alter_table("cluster_nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("command_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("rate_micro", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("started_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("clusters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("client_address", sa.String(length=255), nullable=True))
    op.create_table(
        "gpu_samples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Uuid(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("gpu_index", sa.Integer(), nullable=False),
        sa.Column("util_pct", sa.Float(), nullable=False),
        sa.Column("mem_used_mb", sa.Float(), nullable=False),
        sa.Column("temp_c", sa.Float(), nullable=False),
        sa.Column("power_w", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_gpu_samples_device_id_devices"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gpu_samples")),
    )
    with op.batch_alter_table("gpu_samples", schema=None) as batch_op:
        batch_op.create_index("ix_gpu_samples_device_at", ["device_id", "at"], unique=False)
    op.create_table(
        "network_snapshots",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("gpu_model", sa.String(length=80), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=False),
        sa.Column("gpus_online", sa.Integer(), nullable=False),
        sa.Column("gpus_hired", sa.Integer(), nullable=False),
        sa.Column("util_avg", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_network_snapshots")),
    )
    with op.batch_alter_table("network_snapshots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_network_snapshots_at"), ["at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("network_snapshots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_network_snapshots_at"))
    op.drop_table("network_snapshots")
    with op.batch_alter_table("gpu_samples", schema=None) as batch_op:
        batch_op.drop_index("ix_gpu_samples_device_at")
    op.drop_table("gpu_samples")
    with op.batch_alter_table("clusters", schema=None) as batch_op:
        batch_op.drop_column("client_address")
    with op.batch_alter_table("cluster_nodes", schema=None) as batch_op:
        batch_op.drop_column("started_at")
        batch_op.drop_column("command_id")
        batch_op.drop_column("rate_micro")
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_index("ix_devices_placement")
        batch_op.drop_column("hourly_price_micro")
        batch_op.drop_column("gpu_count")
        batch_op.drop_column("gpu_model")
