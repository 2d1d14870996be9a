"""notification outbox: notifications stored with their alert change, sent later

Revision ID: 0005
Revises: 0003 (to become 0004 once the telemetry partitioning migration is merged)
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notification",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alert_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("receiver", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("sent_at", sa.Float(), nullable=True),
        sa.Column("given_up_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    pending = sa.text("sent_at IS NULL AND given_up_at IS NULL")
    op.create_index(
        "ix_notification_pending",
        "notification",
        ["next_attempt_at"],
        sqlite_where=pending,
        postgresql_where=pending,
    )
    op.create_index(
        "ix_notification_receiver_alert", "notification", ["receiver", "alert_id", "id"]
    )
    op.create_index("ix_notification_created", "notification", ["created_at"])


def downgrade() -> None:
    op.drop_table("notification")
