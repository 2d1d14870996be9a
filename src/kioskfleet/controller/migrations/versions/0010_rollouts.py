"""rollouts, their stations' progress, and how far the runner read the events

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollout",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("release", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("release_info", sa.JSON(), nullable=False),
        sa.Column("target", sa.JSON(), nullable=False),
        sa.Column("waves", sa.JSON(), nullable=False),
        sa.Column("failure_threshold", sa.Float(), nullable=False),
        sa.Column("success_threshold", sa.Float(), nullable=True),
        sa.Column("on_failure", sa.String(length=16), nullable=False),
        sa.Column("canary", sa.Boolean(), nullable=False),
        sa.Column("start_at", sa.Float(), nullable=True),
        sa.Column("deadline", sa.Float(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("accepted_wave", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("reverts", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_rollout_state", "rollout", ["state"])
    op.create_table(
        "rollout_station",
        sa.Column("rollout_id", sa.String(length=32), nullable=False),
        sa.Column("station", sa.String(length=64), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("progress", sa.String(length=16), nullable=False),
        sa.Column("error", sa.String(length=1000), nullable=True),
        sa.Column("command_id", sa.String(length=32), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("rollout_id", "station"),
    )
    op.create_index("ix_rollout_station_station", "rollout_station", ["station"])
    op.create_table(
        "rollout_cursor",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("rollout_cursor")
    op.drop_index("ix_rollout_station_station", table_name="rollout_station")
    op.drop_table("rollout_station")
    op.drop_index("ix_rollout_state", table_name="rollout")
    op.drop_table("rollout")
