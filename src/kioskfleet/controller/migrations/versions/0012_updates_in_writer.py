"""rollout progress written by the ingest writer (no cursor over the events any more); the
maintenance window a station's birth states

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table("rollout_cursor")
    op.add_column("station", sa.Column("maintenance_window", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("station") as batch:
        batch.drop_column("maintenance_window")
    op.create_table(
        "rollout_cursor",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
