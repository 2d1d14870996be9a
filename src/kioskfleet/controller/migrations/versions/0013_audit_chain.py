"""the audit log becomes a hash chain: who (and what kind of principal), seq, prev_hash, hash,
and the one-row head

Existing entries are chained here, in the order they were written (``id``), from the genesis
hash: the chain vouches for them from this migration on, not before (decision 51). Their
``actor_kind`` is read from the actor names the controller used before identities:
``station:…`` a station, ``rollout:…`` and ``demo`` the controller, ``bootstrap-admin`` the
bootstrap token, anything else a person.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

from kioskfleet.controller.auditlog import GENESIS, canonical_json, entry_hash

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_NEW = ("seq", "actor_kind", "prev_hash", "hash")


def _kind(actor: str) -> str:
    if actor.startswith("station:"):
        return "station"
    if actor.startswith("rollout:") or actor == "demo":
        return "controller"
    if actor == "bootstrap-admin":
        return "bootstrap"
    return "person"


def _chain(conn: sa.Connection) -> tuple[int, str]:
    """Link the existing entries, oldest first; the head (seq, hash)."""
    audit = sa.table(
        "audit",
        *(sa.column(name) for name in ("id", "at", "actor", "source", "action", "target")),
        sa.column("outcome"),
        sa.column("details", sa.JSON()),
        *(sa.column(name) for name in _NEW),
    )
    rows = conn.execute(sa.select(audit).order_by(audit.c.id)).all()
    prev_hash, updates = GENESIS, []
    for seq, row in enumerate(rows, start=1):
        fields: dict[str, Any] = {
            "at": row.at,
            "actor": row.actor,
            "actor_kind": _kind(row.actor),
            "source": row.source,
            "action": row.action,
            "target": row.target,
            "outcome": row.outcome,
        }
        digest = entry_hash(
            seq=seq, prev_hash=prev_hash, details_json=canonical_json(row.details), **fields
        )
        updates.append(
            {
                "row_id": row.id,
                "seq": seq,
                "actor_kind": fields["actor_kind"],
                "prev_hash": prev_hash,
                "hash": digest,
            }
        )
        prev_hash = digest
    if updates:
        conn.execute(
            audit.update()
            .where(audit.c.id == sa.bindparam("row_id"))
            .values(
                seq=sa.bindparam("seq"),
                actor_kind=sa.bindparam("actor_kind"),
                prev_hash=sa.bindparam("prev_hash"),
                hash=sa.bindparam("hash"),
            ),
            updates,
        )
    return len(rows), prev_hash


def upgrade() -> None:
    op.add_column("audit", sa.Column("seq", sa.BigInteger(), nullable=True))
    op.add_column("audit", sa.Column("actor_kind", sa.String(length=16), nullable=True))
    op.add_column("audit", sa.Column("prev_hash", sa.String(length=64), nullable=True))
    op.add_column("audit", sa.Column("hash", sa.String(length=64), nullable=True))
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    seq, digest = _chain(op.get_bind())
    op.bulk_insert(head, [{"id": 1, "seq": seq, "hash": digest}])
    with op.batch_alter_table("audit") as batch:
        batch.alter_column("seq", existing_type=sa.BigInteger(), nullable=False)
        batch.alter_column("actor_kind", existing_type=sa.String(length=16), nullable=False)
        batch.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=False)
        batch.alter_column("hash", existing_type=sa.String(length=64), nullable=False)
        batch.create_index("ux_audit_seq", ["seq"], unique=True)


def downgrade() -> None:
    op.drop_table("audit_head")
    with op.batch_alter_table("audit") as batch:
        batch.drop_index("ux_audit_seq")
        for name in _NEW:
            batch.drop_column(name)
