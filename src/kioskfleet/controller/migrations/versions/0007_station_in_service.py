"""station in service: the technician's flag from the birth and ``service_state`` events

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # server default true: every existing station is in service until it says otherwise (a
    # birth without the flag, from an older agent, means in service too)
    op.add_column(
        "station",
        sa.Column("in_service", sa.Boolean(), nullable=False, server_default=sa.true()),
    )


def downgrade() -> None:
    with op.batch_alter_table("station") as batch:
        batch.drop_column("in_service")
