"""kiosk identity: enrolment tokens, issued station certificates, revoked stations

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "enrolment_token",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("station", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("used_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_sha256"),
    )
    op.create_index("ix_enrolment_token_station", "enrolment_token", ["station"])
    op.create_table(
        "station_certificate",
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("station", sa.String(length=64), nullable=False),
        sa.Column("not_before", sa.Float(), nullable=False),
        sa.Column("not_after", sa.Float(), nullable=False),
        sa.Column("issued_at", sa.Float(), nullable=False),
        sa.Column("via", sa.String(length=16), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("serial"),
    )
    op.create_index("ix_station_certificate_station", "station_certificate", ["station"])
    op.create_table(
        "station_revocation",
        sa.Column("station", sa.String(length=64), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=False),
        sa.Column("revoked_by", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.PrimaryKeyConstraint("station"),
    )


def downgrade() -> None:
    op.drop_table("station_revocation")
    op.drop_index("ix_station_certificate_station", table_name="station_certificate")
    op.drop_table("station_certificate")
    op.drop_index("ix_enrolment_token_station", table_name="enrolment_token")
    op.drop_table("enrolment_token")
