"""station birth session: a birth counts once per session

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("station", sa.Column("birth_session", sa.BigInteger(), nullable=True))
    # what was stored so far came from births (or was replaced by one at the next): take the
    # current session's birth as applied, so a retained birth seen again changes nothing
    op.execute("UPDATE station SET birth_session = session")


def downgrade() -> None:
    with op.batch_alter_table("station") as batch:
        batch.drop_column("birth_session")
