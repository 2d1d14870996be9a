"""Durable outbox: every telemetry, events and reply message is written here before it is
published, and forgotten only when the controller confirms it stored it (CONTRACT §3 ``ack``).

One SQLite file can hold the outboxes of many stations (the fleet simulator runs thousands of
stations and cannot afford a file each), so every row is keyed by station. The same file keeps
each station's session counter and sequence number, so both survive restarts.

Durability: WAL journal; ``synchronous=FULL`` on a kiosk (a committed message survives power
loss), ``NORMAL`` in the simulator (survives a process kill, which is what it is tested for).

Bound: when a station holds more than ``max_messages``, telemetry is thinned first (every other
telemetry row of the oldest half is dropped), events and replies only when no telemetry is left.
Dropped seq ranges are declared in the next queued message (``dropped``), so the controller can
account for them and acks and gap detection stay exact. See docs/decisions.md.

Commands: each command id a station has taken is recorded with its reply (``command``), so a
redelivered command is answered from its record and never executed twice, also across
restarts; a record is kept until its command's ``expires_at`` plus :data:`COMMAND_MARGIN`
(after that a redelivery is expired anyway). Small per-station settings that must survive a
restart (the ``in_service`` flag) live in ``setting``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Kind = Literal["telemetry", "events", "reply"]
Synchronous = Literal["FULL", "NORMAL"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS station (
    station TEXT PRIMARY KEY,
    session INTEGER NOT NULL,
    next_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS message (
    station TEXT NOT NULL,
    session INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    keep INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (station, session, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dropped (
    station TEXT NOT NULL,
    session INTEGER NOT NULL,
    from_seq INTEGER NOT NULL,
    to_seq INTEGER NOT NULL,
    kind TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS command (
    station TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    keep_until REAL NOT NULL,
    -- NULL while the command runs; then ok / error / expired / rejected
    status TEXT,
    result TEXT,
    error TEXT,
    PRIMARY KEY (station, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS setting (
    station TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (station, name)
) WITHOUT ROWID;
"""

#: seconds a command's record outlives its ``expires_at`` (the kiosk's and the controller's
#: clocks may disagree; past it, a redelivery is refused as expired, never run)
COMMAND_MARGIN = 3600.0
#: a record is kept at most this long, whatever ``expires_at`` says (a bound on the table)
COMMAND_MAX_KEEP = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class Entry:
    """A queued message."""

    session: int
    seq: int
    kind: Kind


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """A command this station has taken, and its reply once it has one."""

    id: str
    name: str
    #: None while the command runs (or when the agent stopped while running it)
    status: str | None
    result: Any = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DroppedRange:
    """Consecutive messages of one session and kind that the bound forced out."""

    session: int
    from_seq: int
    to_seq: int
    kind: str


class OutboxStore:
    """One SQLite file shared by the outboxes of one or many stations.

    Thread-safe (one connection behind a lock): the agent uses it from its event loop, the
    fleet simulator from one loop for all stations.
    """

    def __init__(self, path: str | Path, *, synchronous: Synchronous = "FULL") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)

    def outbox(self, station: str, *, max_messages: int = 20_000) -> StationOutbox:
        """The outbox of one station in this store."""
        return StationOutbox(self, station, max_messages=max_messages)

    def close(self) -> None:
        """Close the file (checkpointing the WAL)."""
        with self._lock:
            self._db.close()

    def _tx(self) -> _Tx:
        return _Tx(self)


class _Tx:
    """``with store._tx() as db:`` — one IMMEDIATE transaction under the store's lock."""

    def __init__(self, store: OutboxStore) -> None:
        self._store = store

    def __enter__(self) -> sqlite3.Connection:
        self._store._lock.acquire()
        self._store._db.execute("BEGIN IMMEDIATE")
        return self._store._db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self._store._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self._store._lock.release()


#: ranges declared per message at most (the wire allows 64)
MAX_DECLARED = 32

PayloadBuilder = Callable[[int, int, list[DroppedRange]], bytes]


class StationOutbox:
    """The queue, session counter and sequence of one station.

    ``session`` grows at every connect and never repeats, also when the file is lost:
    :meth:`new_session` takes max(last + 1, Unix time in ms). ``seq`` is stamped when a
    message is queued, starts at 1 in each session, and is shared by all kinds.
    """

    def __init__(self, store: OutboxStore, station: str, *, max_messages: int) -> None:
        self._store = store
        self.station = station
        self.max_messages = max_messages
        with store._tx() as db:
            row = db.execute(
                "SELECT session, next_seq FROM station WHERE station = ?", (station,)
            ).fetchone()
            if row is None:
                self._session, self._next_seq = 0, 1
            else:
                self._session, self._next_seq = int(row[0]), int(row[1])
            self._count = int(
                db.execute("SELECT COUNT(*) FROM message WHERE station = ?", (station,)).fetchone()[
                    0
                ]
            )

    @property
    def session(self) -> int:
        """The current session (0 before the first connect ever)."""
        return self._session

    def __len__(self) -> int:
        return self._count

    def new_session(self, now_ms: int | None = None) -> int:
        """Start a new session (at every MQTT connect) and persist it before it is used."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        session = max(self._session + 1, now_ms)
        with self._store._tx() as db:
            db.execute(
                "INSERT INTO station (station, session, next_seq) VALUES (?, ?, 1) "
                "ON CONFLICT(station) DO UPDATE SET session = excluded.session, next_seq = 1",
                (self.station, session),
            )
        self._session, self._next_seq = session, 1
        return session

    def enqueue(self, kind: Kind, build: PayloadBuilder) -> Entry:
        """Stamp the next seq, build the payload with it and store it durably.

        ``build(session, seq, dropped)`` returns the payload; ``dropped`` lists ranges this
        message must declare. The message and the end of those declarations commit together.
        """
        if self._session == 0:
            self.new_session()
        with self._store._tx() as db:
            rows = db.execute(
                "SELECT rowid, session, from_seq, to_seq, kind FROM dropped WHERE station = ? "
                "ORDER BY session, from_seq LIMIT ?",
                (self.station, MAX_DECLARED),
            ).fetchall()
            dropped = [DroppedRange(*row[1:]) for row in rows]
            session, seq = self._session, self._next_seq
            payload = build(session, seq, dropped)
            db.execute(
                "INSERT INTO message (station, session, seq, kind, payload, keep) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (self.station, session, seq, kind, payload, 1 if dropped else 0),
            )
            # declarations travel at most MAX_DECLARED per message; the rest ride the next ones
            db.executemany("DELETE FROM dropped WHERE rowid = ?", [(row[0],) for row in rows])
            db.execute("UPDATE station SET next_seq = ? WHERE station = ?", (seq + 1, self.station))
            self._next_seq = seq + 1
            self._count += 1
            if self._count > self.max_messages:
                self._count -= _thin(db, self.station, self._count - self.max_messages)
        return Entry(session, seq, kind)

    def entries(self) -> Iterator[Entry]:
        """Every queued message, oldest first."""
        with self._store._lock:
            rows = self._store._db.execute(
                "SELECT session, seq, kind FROM message WHERE station = ? ORDER BY session, seq",
                (self.station,),
            ).fetchall()
        return (Entry(int(s), int(q), k) for s, q, k in rows)

    def payload(self, entry: Entry) -> bytes | None:
        """The stored payload of ``entry`` (None once it is confirmed or dropped)."""
        with self._store._lock:
            row = self._store._db.execute(
                "SELECT payload FROM message WHERE station = ? AND session = ? AND seq = ?",
                (self.station, entry.session, entry.seq),
            ).fetchone()
        return None if row is None else bytes(row[0])

    def declare_lost(self, session: int, seqs: list[int]) -> None:
        """Record seqs of ``session`` this station cannot send (its local state was lost); the
        next queued messages declare them, so the controller's gap closes."""
        victims = sorted((session, seq, "lost") for seq in seqs)
        with self._store._tx() as db:
            for sess, first, last, kind in _ranges(victims):
                db.execute(
                    "INSERT INTO dropped (station, session, from_seq, to_seq, kind) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (self.station, sess, first, last, kind),
                )

    # -- commands: at most once ------------------------------------------------------------------
    def claim_command(
        self, command_id: str, name: str, expires_at: float, now: float | None = None
    ) -> CommandRecord | None:
        """Record ``command_id`` as taken, unless it already is.

        Returns None when the id is new (the caller runs the command, then calls
        :meth:`finish_command`), otherwise the existing record (answer from it; do not run).
        Records whose time is up are forgotten here, which bounds the table.
        """
        now = time.time() if now is None else now
        keep_until = min(expires_at, now + COMMAND_MAX_KEEP) + COMMAND_MARGIN
        with self._store._tx() as db:
            db.execute(
                "DELETE FROM command WHERE station = ? AND keep_until < ?", (self.station, now)
            )
            row = db.execute(
                "SELECT id, name, status, result, error FROM command WHERE station = ? AND id = ?",
                (self.station, command_id),
            ).fetchone()
            if row is not None:
                return _record(row)
            db.execute(
                "INSERT INTO command (station, id, name, keep_until) VALUES (?, ?, ?, ?)",
                (self.station, command_id, name, keep_until),
            )
        return None

    def command(self, command_id: str) -> CommandRecord | None:
        """The record of ``command_id``, if this station has taken it."""
        with self._store._lock:
            row = self._store._db.execute(
                "SELECT id, name, status, result, error FROM command WHERE station = ? AND id = ?",
                (self.station, command_id),
            ).fetchone()
        return None if row is None else _record(row)

    def finish_command(
        self, command_id: str, status: str, result: Any = None, error: str | None = None
    ) -> None:
        """Store a command's reply (``result`` must be JSON-serialisable)."""
        with self._store._tx() as db:
            db.execute(
                "UPDATE command SET status = ?, result = ?, error = ? WHERE station = ? AND id = ?",
                (status, json.dumps(result), error, self.station, command_id),
            )

    # -- settings ----------------------------------------------------------------------------------
    def setting(self, name: str) -> str | None:
        """A persisted per-station setting (None when never set)."""
        with self._store._lock:
            row = self._store._db.execute(
                "SELECT value FROM setting WHERE station = ? AND name = ?", (self.station, name)
            ).fetchone()
        return None if row is None else str(row[0])

    def set_setting(self, name: str, value: str) -> None:
        """Persist a per-station setting (durably, before this returns)."""
        with self._store._tx() as db:
            db.execute(
                "INSERT INTO setting (station, name, value) VALUES (?, ?, ?) "
                "ON CONFLICT(station, name) DO UPDATE SET value = excluded.value",
                (self.station, name, value),
            )

    def confirm(self, session: int, seq: int) -> int:
        """Forget every message of ``session`` up to ``seq``; returns how many went."""
        with self._store._tx() as db:
            cur = db.execute(
                "DELETE FROM message WHERE station = ? AND session = ? AND seq <= ?",
                (self.station, session, seq),
            )
            gone = cur.rowcount
        self._count -= gone
        return gone


def _record(row: tuple[Any, ...]) -> CommandRecord:
    command_id, name, status, result, error = row
    return CommandRecord(
        str(command_id),
        str(name),
        None if status is None else str(status),
        None if result is None else json.loads(result),
        None if error is None else str(error),
    )


def _thin(db: sqlite3.Connection, station: str, excess: int) -> int:
    """Drop at least ``excess`` messages of ``station``: telemetry first, every other row of the
    oldest half, then whatever is oldest. Records the dropped ranges. Returns how many went."""
    telemetry = [
        (int(s), int(q))
        for s, q in db.execute(
            "SELECT session, seq FROM message WHERE station = ? AND kind = 'telemetry' "
            "AND keep = 0 ORDER BY session, seq",
            (station,),
        )
    ]
    victims: list[tuple[int, int, str]] = []
    if telemetry:
        oldest_half = telemetry[: max(2, len(telemetry) // 2)]
        # every other row keeps the series' shape while halving its resolution
        victims = [(s, q, "telemetry") for s, q in oldest_half[::2]]
        if len(victims) < excess:
            chosen = set(victims)
            rest = [(s, q, "telemetry") for s, q in telemetry if (s, q, "telemetry") not in chosen]
            victims += rest[: excess - len(victims)]
    if len(victims) < excess:
        others = db.execute(
            "SELECT session, seq, kind FROM message WHERE station = ? AND kind != 'telemetry' "
            "AND keep = 0 ORDER BY session, seq LIMIT ?",
            (station, excess - len(victims)),
        ).fetchall()
        victims += [(int(s), int(q), str(k)) for s, q, k in others]
    victims.sort()
    db.executemany(
        "DELETE FROM message WHERE station = ? AND session = ? AND seq = ?",
        [(station, s, q) for s, q, _ in victims],
    )
    for session, first, last, kind in _ranges(victims):
        db.execute(
            "INSERT INTO dropped (station, session, from_seq, to_seq, kind) VALUES (?, ?, ?, ?, ?)",
            (station, session, first, last, kind),
        )
    return len(victims)


def _ranges(victims: list[tuple[int, int, str]]) -> Iterator[tuple[int, int, int, str]]:
    """Group sorted (session, seq, kind) triples into runs of consecutive seqs."""
    run: list[int] | None = None  # session, first, last
    run_kind = ""
    for session, seq, kind in victims:
        if run is not None and run[0] == session and run[2] + 1 == seq and run_kind == kind:
            run[2] = seq
            continue
        if run is not None:
            yield run[0], run[1], run[2], run_kind
        run, run_kind = [session, seq, seq], kind
    if run is not None:
        yield run[0], run[1], run[2], run_kind
