"""alerts, their history, silences and maintenance windows

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_UNRESOLVED = sa.text("state != 'resolved'")


def upgrade() -> None:
    op.create_table(
        "alert",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("district", sa.String(length=64), nullable=True),
        sa.Column("site", sa.String(length=128), nullable=True),
        sa.Column("site_type", sa.String(length=64), nullable=True),
        sa.Column("station", sa.String(length=64), nullable=True),
        sa.Column("device", sa.String(length=64), nullable=True),
        sa.Column("condition", sa.String(length=64), nullable=False),
        sa.Column("of", sa.String(length=64), nullable=True),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("opened_at", sa.Float(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("stations", sa.JSON(), nullable=False),
        sa.Column("acknowledged_at", sa.Float(), nullable=True),
        sa.Column("acknowledged_by", sa.String(length=200), nullable=True),
        sa.Column("resolved_at", sa.Float(), nullable=True),
        sa.Column("resolution", sa.String(length=16), nullable=True),
        sa.Column("resolved_by", sa.String(length=200), nullable=True),
        sa.Column("suppressed_by", sa.String(length=200), nullable=True),
        sa.Column("awaiting_clear", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("team", sa.String(length=64), nullable=True),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("next_escalation_at", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "uq_alert_unresolved_subject",
        "alert",
        ["subject"],
        unique=True,
        sqlite_where=_UNRESOLVED,
        postgresql_where=_UNRESOLVED,
    )
    op.create_index("ix_alert_state_opened", "alert", ["state", "opened_at"])
    op.create_index("ix_alert_station_state", "alert", ["station", "state"])
    op.create_index("ix_alert_district_state", "alert", ["district", "state"])
    op.create_index("ix_alert_opened", "alert", ["opened_at"])
    op.create_index("ix_alert_updated", "alert", ["updated_at"])
    op.create_table(
        "alert_history",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alert_id", sa.String(length=32), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("by", sa.String(length=200), nullable=True),
        sa.Column("note", sa.String(length=2000), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_alert_history_alert_at", "alert_history", ["alert_id", "at"])
    op.create_table(
        "silence",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("matchers", sa.JSON(), nullable=False),
        sa.Column("author", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("starts_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_silence_expires", "silence", ["expires_at"])
    op.create_table(
        "maintenance",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("station", sa.String(length=64), nullable=False),
        sa.Column("by", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("starts_at", sa.Float(), nullable=False),
        sa.Column("until", sa.Float(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_maintenance_station_until", "maintenance", ["station", "until"])


def downgrade() -> None:
    op.drop_index("ix_maintenance_station_until", table_name="maintenance")
    op.drop_table("maintenance")
    op.drop_index("ix_silence_expires", table_name="silence")
    op.drop_table("silence")
    op.drop_index("ix_alert_history_alert_at", table_name="alert_history")
    op.drop_table("alert_history")
    for name in (
        "ix_alert_updated",
        "ix_alert_opened",
        "ix_alert_district_state",
        "ix_alert_station_state",
        "ix_alert_state_opened",
        "uq_alert_unresolved_subject",
    ):
        op.drop_index(name, table_name="alert")
    op.drop_table("alert")
