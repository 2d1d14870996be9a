"""The audit log: the one way an entry is written, the hash chain that links the entries, the
check that finds a changed or removed one, and the read side (pages and the CSV export).

Every entry is a link of a chain (decision 51): ``seq`` counts 1, 2, 3, … without gaps,
``prev_hash`` is the previous entry's ``hash`` (:data:`GENESIS` before the first), and
``hash`` is SHA-256 over :func:`entry_hash`'s canonical encoding of ``seq``, ``prev_hash`` and
the entry's fields. The one-row ``audit_head`` table holds the newest ``seq`` and ``hash``:
:func:`record_audit` updates it first, so appends take turns on its row lock (PostgreSQL) or
the database's write lock (SQLite), from any thread or process, and each append commits with
the change it records, in the caller's transaction. A deleted tail shows as a head that names
entries no longer there.

The chain proves the log was not changed *behind the controller's back by someone who cannot
also rewrite every later entry and the head*: a database superuser can. docs/audit.md says how
a deployment anchors the head elsewhere.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    bindparam,
    func,
    insert,
    select,
    update,
)

from kioskfleet.controller.db import RawJSON
from kioskfleet.controller.models import Audit, AuditHead
from kioskfleet.controller.public import ActorKind, AuditList

_AUDIT = Audit.__table__  # type: ignore[attr-defined]
_HEAD = AuditHead.__table__  # type: ignore[attr-defined]

#: the ``prev_hash`` of the first entry
GENESIS: Final = "0" * 64
#: names the encoding :func:`entry_hash` hashes; a new encoding would be a new version
_FORMAT: Final = b"kioskfleet-audit-v1\n"

#: the actor of the controller's own, automatic actions (with ``actor_kind="controller"``)
CONTROLLER: Final = "controller"
#: identities no account may be named after (people.RESERVED_NAMES), and their kinds
_RESERVED_KINDS: Final[dict[str, ActorKind]] = {
    CONTROLLER: "controller",
    "bootstrap": "bootstrap",
    "anonymous": "anonymous",
}

# an append's three statements, built once: building and keying a statement per call cost
# more than executing it (bench/audit.py)
_ADVANCE: Final = (
    update(_HEAD)
    .where(_HEAD.c.id == 1)
    .values(seq=_HEAD.c.seq + 1)
    .returning(_HEAD.c.seq, _HEAD.c.hash)
)
_INSERT: Final = insert(_AUDIT)
_SET_HEAD: Final = update(_HEAD).where(_HEAD.c.id == 1).values(hash=bindparam("new_hash"))


def canonical_json(value: Any) -> str:
    """``value`` as one canonical JSON text: keys sorted, no spaces, ASCII only (so any
    Python string encodes), no NaN or infinity (JSON has none).

    Raises:
        ValueError: a float that is not finite.
        TypeError: a value JSON cannot hold, or keys that cannot be sorted together.
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def entry_hash(
    *,
    seq: int,
    prev_hash: str,
    at: float,
    actor: str,
    actor_kind: str,
    source: str | None,
    action: str,
    target: str,
    outcome: str,
    details_json: str,
) -> str:
    """SHA-256 (hex) of one entry: a version line, then its fields as a canonical JSON array,
    then its details as canonical JSON, a newline between (compact JSON holds none, so the
    parts cannot run into each other). ``at`` is encoded by Python's shortest round-trip
    float repr, which reads back from both databases' double columns unchanged."""
    fields = canonical_json(
        [seq, prev_hash, float(at), actor, actor_kind, source, action, target, outcome]
    )
    data = _FORMAT + fields.encode("ascii") + b"\n" + details_json.encode("ascii")
    return hashlib.sha256(data).hexdigest()


def record_audit(
    *,
    conn: Connection,
    at: float,
    actor: str,
    source: str | None,
    action: str,
    target: str,
    details: Mapping[str, Any],
    outcome: str,
    actor_kind: ActorKind = "person",
) -> int:
    """Append one entry to the audit chain, inside the caller's transaction (the change and its
    entry commit together, or neither); its ``seq``. The only way any code writes an entry.

    ``actor`` is who (an account, a token's name, a station, :data:`CONTROLLER`), ``source``
    from where (the client's address; None for the controller's own actions). The head row is
    updated first: from here to the commit, other appends wait, so keep the rest of the
    transaction short.

    Raises:
        ValueError: ``details`` holds a float that is not finite.
        TypeError: ``details`` holds what JSON cannot.
        LookupError: the database has no audit head (not migrated).
    """
    details_json = canonical_json(details)
    # the reserved names are identities of their own (no account may take them): a call site
    # that passes only the name still records the right kind
    actor_kind = _RESERVED_KINDS.get(actor, actor_kind)
    head = conn.execute(_ADVANCE).first()
    if head is None:
        raise LookupError("the database has no audit_head row: run the migrations")
    seq, prev_hash = int(head.seq), str(head.hash)
    fields: dict[str, Any] = {
        "at": float(at),
        "actor": actor,
        "actor_kind": actor_kind,
        "source": source,
        "action": action,
        "target": target,
        "outcome": outcome,
    }
    digest = entry_hash(seq=seq, prev_hash=prev_hash, details_json=details_json, **fields)
    conn.execute(
        _INSERT,
        {
            "seq": seq,
            "prev_hash": prev_hash,
            "hash": digest,
            "details": RawJSON(details_json),
            **fields,
        },
    )
    conn.execute(_SET_HEAD, {"new_hash": digest})
    return seq


def row_hash(row: Any) -> str:
    """The hash an entry read back from the table should carry."""
    return entry_hash(
        seq=row.seq,
        prev_hash=row.prev_hash,
        at=row.at,
        actor=row.actor,
        actor_kind=row.actor_kind,
        source=row.source,
        action=row.action,
        target=row.target,
        outcome=row.outcome,
        details_json=canonical_json(row.details),
    )


# -- verification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What :func:`verify_chain` found: how many entries it checked, the head, and the first
    broken link (None: intact)."""

    entries: int
    head_seq: int | None
    broken_seq: int | None = None
    reason: str | None = None

    @property
    def intact(self) -> bool:
        """Whether every link held."""
        return self.broken_seq is None


def verify_chain(*, conn: Connection, batch: int = 1000) -> Verdict:
    """Walk the chain from its first entry and stop at the first broken link: a changed entry
    (its hash does not match its content), a removed one (a gap in ``seq``, or a
    ``prev_hash`` naming an entry that is not the one before it), or a removed tail (the head
    names more entries than there are)."""
    head = conn.execute(select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == 1)).first()
    if head is None:
        return Verdict(0, None, 0, "the audit head row is missing")
    expected, prev_hash, count = 1, GENESIS, 0
    rows = conn.execution_options(yield_per=batch).execute(select(_AUDIT).order_by(_AUDIT.c.seq))
    for row in rows:
        problem = _link_problem(row, expected, prev_hash)
        if problem is not None:
            rows.close()
            return Verdict(count, head.seq, *problem)
        expected, prev_hash, count = row.seq + 1, row.hash, count + 1
    if (head.seq, head.hash) != (expected - 1, prev_hash):
        return Verdict(
            count,
            head.seq,
            expected,
            f"the chain ends at entry {expected - 1}, but its head names entry {head.seq} "
            f"({head.hash[:12]}…): entries after {expected - 1} were removed or the head changed",
        )
    return Verdict(count, head.seq)


def _link_problem(row: Any, expected: int, prev_hash: str) -> tuple[int, str] | None:
    """(seq, why) if ``row`` does not continue the chain as the entry ``expected``."""
    if row.seq != expected:
        return expected, f"entry {expected} is missing (the next entry is {row.seq})"
    if row.prev_hash != prev_hash:
        return row.seq, (
            f"entry {row.seq} follows a different entry {row.seq - 1} than the one stored "
            "(it was replaced or removed)"
        )
    if row_hash(row) != row.hash:
        return row.seq, f"entry {row.seq} was changed: its content does not match its hash"
    return None


def head_seq(*, conn: Connection) -> int:
    """The newest entry's ``seq`` (0: none yet), for ``/metrics`` and the log."""
    seq = conn.execute(select(_HEAD.c.seq).where(_HEAD.c.id == 1)).scalar()
    return int(seq or 0)


# -- read side ------------------------------------------------------------------------------


def _where(
    filters: Mapping[str, str | None], start: float | None, end: float | None
) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = [
        _AUDIT.c[column] == value for column, value in filters.items() if value is not None
    ]
    if start is not None:
        where.append(_AUDIT.c.at >= start)
    if end is not None:
        where.append(_AUDIT.c.at < end)
    return where


def _utc(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


def _item(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "seq": row.seq,
        "at": _utc(row.at),
        "actor": row.actor,
        "actor_kind": row.actor_kind,
        "source": row.source,
        "action": row.action,
        "target": row.target,
        "details": row.details or {},
        "outcome": row.outcome,
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    }


def list_audit(
    *,
    conn: Connection,
    filters: Mapping[str, str | None],
    start: float | None,
    end: float | None,
    limit: int,
    offset: int,
) -> AuditList:
    """Audit entries, newest first. ``filters`` maps ``action``, ``target``, ``actor``,
    ``actor_kind`` to the value it must have (None: free); ``start`` ≤ ``at`` < ``end``."""
    where = _where(filters, start, end)
    query: Select[Any] = select(_AUDIT).where(*where)
    total = int(conn.execute(select(func.count()).select_from(_AUDIT).where(*where)).scalar_one())
    rows = conn.execute(query.order_by(_AUDIT.c.seq.desc()).limit(limit).offset(offset))
    return AuditList.model_validate({"items": [_item(row) for row in rows], "total": total})


#: the CSV export's columns, in order
CSV_COLUMNS: Final = (
    "seq",
    "at",
    "actor",
    "actor_kind",
    "source",
    "action",
    "target",
    "outcome",
    "details",
    "prev_hash",
    "hash",
)
#: a cell starting with one of these is a formula to a spreadsheet (CSV injection)
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: str) -> str:
    """A text cell a spreadsheet shows as text: a leading ``'`` where it would compute."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def _csv_record(row: Any) -> list[str]:
    return [
        str(row.seq),
        _utc(row.at).isoformat().replace("+00:00", "Z"),
        _cell(row.actor),
        row.actor_kind,
        _cell(row.source or ""),
        _cell(row.action),
        _cell(row.target),
        _cell(row.outcome),
        json.dumps(row.details or {}, ensure_ascii=False, sort_keys=True),
        row.prev_hash,
        row.hash,
    ]


def export_csv(
    *,
    conn: Connection,
    filters: Mapping[str, str | None],
    start: float | None,
    end: float | None,
    batch: int = 500,
) -> Iterator[str]:
    """Every matching entry as CSV, oldest first, in chunks: a UTF-8 byte order mark and the
    header first (so a spreadsheet in a Chinese locale reads it as UTF-8), then ``batch`` rows
    per chunk, read as they are sent (an export of a million entries is not held in memory)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    yield "\ufeff" + out.getvalue()
    query = select(_AUDIT).where(*_where(filters, start, end)).order_by(_AUDIT.c.seq)
    result = conn.execution_options(yield_per=batch).execute(query)
    for part in result.partitions():
        out.seek(0)
        out.truncate()
        writer.writerows(_csv_record(row) for row in part)
        yield out.getvalue()


__all__ = [
    "CONTROLLER",
    "CSV_COLUMNS",
    "GENESIS",
    "ActorKind",
    "Verdict",
    "canonical_json",
    "entry_hash",
    "export_csv",
    "head_seq",
    "list_audit",
    "record_audit",
    "row_hash",
    "verify_chain",
]
