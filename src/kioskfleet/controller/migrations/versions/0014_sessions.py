"""sessions: console logins (web sessions), pending OpenID Connect logins, provider identities

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "web_session",
        sa.Column("id_sha256", sa.String(length=64), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("via", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("seen_at", sa.Float(), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(["account"], ["account.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id_sha256"),
    )
    op.create_index("ix_web_session_account", "web_session", ["account"])
    op.create_table(
        "oidc_login",
        sa.Column("state_sha256", sa.String(length=64), nullable=False),
        sa.Column("nonce", sa.String(length=128), nullable=False),
        sa.Column("code_verifier", sa.String(length=128), nullable=False),
        sa.Column("back", sa.String(length=500), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("state_sha256"),
    )
    op.create_table(
        "oidc_identity",
        sa.Column("issuer", sa.String(length=500), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["account"], ["account.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("issuer", "subject"),
    )
    op.create_index("ix_oidc_identity_account", "oidc_identity", ["account"])


def downgrade() -> None:
    op.drop_index("ix_oidc_identity_account", table_name="oidc_identity")
    op.drop_table("oidc_identity")
    op.drop_table("oidc_login")
    op.drop_index("ix_web_session_account", table_name="web_session")
    op.drop_table("web_session")
