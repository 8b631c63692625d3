"""Solana settlement: batched payouts (signature shared, blockhash kept), deposit accounts and deposits

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 11:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("payouts", schema=None) as batch_op:
        # Several payouts share one transaction now: the signature is no longer unique.
        batch_op.drop_constraint("uq_payouts_tx_signature", type_="unique")
        batch_op.create_index(batch_op.f("ix_payouts_tx_signature"), ["tx_signature"], unique=False)
        batch_op.add_column(
            sa.Column("state_reason", sa.String(length=500), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("blockhash", sa.String(length=64), nullable=True))

    op.create_table(
        "deposit_accounts",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("owner_address", sa.String(length=64), nullable=False),
        sa.Column("token_account", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_deposit_accounts_user_id_users")),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_deposit_accounts")),
        sa.UniqueConstraint("owner_address", name=op.f("uq_deposit_accounts_owner_address")),
        sa.UniqueConstraint("token_account", name=op.f("uq_deposit_accounts_token_account")),
    )
    op.create_table(
        "deposits",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("token_account", sa.String(length=64), nullable=False),
        sa.Column("amount_micro", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=24), nullable=False),
        sa.Column("state_reason", sa.String(length=500), nullable=False),
        sa.Column("tx_signature", sa.String(length=100), nullable=True),
        sa.Column("blockhash", sa.String(length=64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(length=1000), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_deposits_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deposits")),
    )
    with op.batch_alter_table("deposits", schema=None) as batch_op:
        batch_op.create_index("ix_deposits_user_created", ["user_id", "created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_deposits_state"), ["state"], unique=False)
        batch_op.create_index(batch_op.f("ix_deposits_tx_signature"), ["tx_signature"], unique=False)


def downgrade() -> None:
    op.drop_table("deposits")
    op.drop_table("deposit_accounts")
    with op.batch_alter_table("payouts", schema=None) as batch_op:
        batch_op.drop_column("blockhash")
        batch_op.drop_column("state_reason")
        batch_op.drop_index(batch_op.f("ix_payouts_tx_signature"))
        batch_op.create_unique_constraint("uq_payouts_tx_signature", ["tx_signature"])
