"""Database engine, migrations, and the few statements where the dialects differ."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import JSON, Connection, Engine, Table, UniqueConstraint, event, exc
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import create_engine

MIGRATIONS = Path(__file__).parent / "migrations"


class RawJSON(str):
    """JSON text already encoded (by pydantic's serializer, much cheaper than encoding the
    dumped dicts again): a JSON column stores it as it is."""

    __slots__ = ()


def _to_json(value: Any) -> str:
    return value if isinstance(value, RawJSON) else json.dumps(value)


def make_engine(url: str) -> Engine:
    """An engine for ``url``: SQLite (WAL, FULL sync: acked means on disk) or PostgreSQL."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            json_serializer=_to_json,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # the controller acks a message to its station only after this commit
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(
        url, pool_size=10, max_overflow=10, pool_pre_ping=True, json_serializer=_to_json
    )


def migrate(engine: Engine) -> None:
    """Bring the schema up to the newest migration (never drops a deployment's data)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        if connection.dialect.name == "postgresql":
            ensure_telemetry_partitions(connection, time.time())


# -- telemetry partitions (PostgreSQL; decision 29) ---------------------------------------------
DAY = 86400
#: days of partitions kept ready beyond today's, so a batch near midnight never waits for one
PARTITIONS_AHEAD = 2
_PARTITION_NAME = re.compile(r"^telemetry_p(\d{8})$")


def partition_name(day: int) -> str:
    """Name of the partition of UTC day ``day`` (days since the epoch)."""
    return "telemetry_p" + datetime.fromtimestamp(day * DAY, UTC).strftime("%Y%m%d")


def telemetry_partitions(conn: Connection) -> dict[int, str]:
    """The day partitions ``telemetry`` has: day (since the epoch) → table name; the DEFAULT
    partition is not among them."""
    names = conn.exec_driver_sql(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'telemetry'::regclass"
    ).scalars()
    days: dict[int, str] = {}
    for name in names:
        match = _PARTITION_NAME.match(name)
        if match:
            when = datetime.strptime(match.group(1), "%Y%m%d").replace(tzinfo=UTC)
            days[int(when.timestamp()) // DAY] = name
    return days


def ensure_telemetry_partitions(
    conn: Connection, now: float, ahead: int = PARTITIONS_AHEAD
) -> list[str]:
    """Create the partitions of today and the ``ahead`` days after it that are missing; the
    names created. Cheap when they exist (one catalogue query)."""
    have = telemetry_partitions(conn)
    today = int(now // DAY)
    created = []
    for day in range(today, today + ahead + 1):
        if day not in have:
            created.append(create_day_partition(conn, day))
    return created


def create_day_partition(conn: Connection, day: int) -> str:
    """Create and attach the partition of UTC day ``day``; its name.

    Rows of that day which the DEFAULT partition took meanwhile (a clock far off, a partition
    not made in time) move into it first: a new partition may not overlap rows of DEFAULT.
    """
    name = partition_name(day)
    start, end = day * DAY, (day + 1) * DAY
    conn.exec_driver_sql(f"CREATE TABLE {name} (LIKE telemetry INCLUDING DEFAULTS)")
    conn.exec_driver_sql(
        f"WITH moved AS (DELETE FROM telemetry_default WHERE received_at >= {start} "
        f"AND received_at < {end} RETURNING *) INSERT INTO {name} SELECT * FROM moved"
    )
    conn.exec_driver_sql(
        f"ALTER TABLE telemetry ATTACH PARTITION {name} FOR VALUES FROM ({start}) TO ({end})"
    )
    return name


def drop_day_partition(conn: Connection, name: str) -> None:
    """Detach and drop one day partition of ``telemetry`` (its rows are gone for good)."""
    conn.exec_driver_sql(f"ALTER TABLE telemetry DETACH PARTITION {name}")
    conn.exec_driver_sql(f"DROP TABLE {name}")


class BulkRows:
    """Many rows written in one go, the fastest way each dialect has.

    The rows go to the driver as tuples (JSON columns encoded once, here), not through
    SQLAlchemy's per-row parameter processing. SQLite: one ``executemany`` (in-process, each
    row costs little). PostgreSQL: the rows are copied (``COPY … FROM STDIN``) into a temporary
    staging table, then one ``INSERT … SELECT`` or ``UPDATE … FROM`` moves them; a statement
    per row would cost a parse, a plan and a round of the protocol each (docs/decisions.md,
    decision 17).

    Each staging table is emptied at commit (``ON COMMIT DELETE ROWS``), so a table is written
    through :meth:`insert_ignore` or :meth:`update` at most once per transaction.
    """

    def __init__(self, engine: Engine) -> None:
        self.dialect = engine.dialect.name
        if self.dialect not in ("postgresql", "sqlite"):
            raise ValueError(f"unsupported database dialect {self.dialect!r}")

    def insert(self, conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows`` (all with the same keys); a taken unique key fails the transaction."""
        self._insert(conn, table, rows, ignore=False)

    def insert_ignore(self, conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows`` (all with the same keys); a row whose unique key is taken is skipped.

        A table without a unique key on this dialect (``telemetry`` on PostgreSQL, where the
        seq ledgers alone keep duplicates out) is copied straight in."""
        self._insert(conn, table, rows, ignore=True)

    def _insert(
        self, conn: Connection, table: Table, rows: list[dict[str, Any]], *, ignore: bool
    ) -> None:
        if not rows:
            return
        columns = list(rows[0])
        self.insert_tuples(conn, table, columns, _tuples(table, rows, columns), ignore=ignore)

    def insert_tuples(
        self,
        conn: Connection,
        table: Table,
        columns: list[str],
        rows: list[tuple[Any, ...]],
        *,
        ignore: bool,
    ) -> None:
        """Insert ``rows``, tuples in ``columns`` order with JSON columns already JSON text
        (the ingest writer builds telemetry rows so: no dict per row, nothing encoded twice);
        with ``ignore``, a row whose unique key is taken is skipped."""
        if not rows:
            return
        names = ", ".join(f'"{c}"' for c in columns)
        # no unique key on this dialect (partitioned telemetry on PostgreSQL): nothing to skip
        ignore = ignore and self._has_unique_key(table)
        conflict = " ON CONFLICT DO NOTHING" if ignore else ""
        if self.dialect == "sqlite":
            marks = ", ".join("?" * len(columns))
            conn.exec_driver_sql(
                f'INSERT INTO "{table.name}" ({names}) VALUES ({marks}){conflict}', rows
            )
        elif not ignore:
            self._copy(conn, f'"{table.name}"', rows, columns)
        else:
            stage = self._stage(conn, table, "ins", rows, columns)
            conn.exec_driver_sql(
                f'INSERT INTO "{table.name}" ({names}) SELECT {names} FROM {stage}{conflict}'
            )

    def _has_unique_key(self, table: Table) -> bool:
        """Whether ``table`` has a unique key on this dialect (one declared for another dialect
        only, ``models.only_on``, does not count)."""
        return any(
            isinstance(constraint, UniqueConstraint)
            and constraint.info.get("dialect", self.dialect) == self.dialect
            for constraint in table.constraints
        )

    def update(
        self,
        conn: Connection,
        table: Table,
        keys: tuple[str, ...],
        rows: list[dict[str, Any]],
        *,
        stage: str = "upd",
    ) -> None:
        """Update the rows found by ``keys`` (columns each row carries) with the row's other
        columns; all rows carry the same columns, and no two the same key. A second update
        of the same table in one transaction names a ``stage`` of its own (PostgreSQL's
        staging table)."""
        if not rows:
            return
        values = [c for c in rows[0] if c not in keys]
        if self.dialect == "sqlite":
            sets = ", ".join(f'"{c}" = ?' for c in values)
            match = " AND ".join(f'"{k}" = ?' for k in keys)
            conn.exec_driver_sql(
                f'UPDATE "{table.name}" SET {sets} WHERE {match}',
                _tuples(table, rows, [*values, *keys]),
            )
            return
        columns = list(rows[0])
        staged = self._stage(conn, table, stage, _tuples(table, rows, columns), columns)
        sets = ", ".join(f'"{c}" = s."{c}"' for c in values)
        match = " AND ".join(f't."{k}" = s."{k}"' for k in keys)
        conn.exec_driver_sql(
            f'UPDATE "{table.name}" AS t SET {sets} FROM {staged} AS s WHERE {match}'
        )

    def _stage(
        self,
        conn: Connection,
        table: Table,
        use: str,
        rows: list[tuple[Any, ...]],
        columns: list[str],
    ) -> str:
        """Copy ``rows`` into this transaction's staging table for ``table``; its name."""
        stage = f"_kf_{use}_{table.name}"
        conn.exec_driver_sql(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "
            f'SELECT * FROM "{table.name}" WITH NO DATA'
        )
        self._copy(conn, stage, rows, columns)
        return stage

    @staticmethod
    def _copy(
        conn: Connection, target: str, rows: list[tuple[Any, ...]], columns: list[str]
    ) -> None:
        """``COPY`` ``rows`` (tuples in ``columns`` order, JSON as text) into ``target``; the
        driver's errors come out as SQLAlchemy's, as from any other statement."""
        names = ", ".join(f'"{c}"' for c in columns)
        statement = f"COPY {target} ({names}) FROM STDIN"
        dbapi = conn.dialect.loaded_dbapi
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            with cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row(row)
        except dbapi.Error as err:
            raise exc.DBAPIError.instance(statement, None, err, dbapi.Error) from err
        finally:
            cursor.close()


def _tuples(table: Table, rows: list[dict[str, Any]], columns: list[str]) -> list[tuple[Any, ...]]:
    """``rows`` as tuples in ``columns`` order, JSON columns as JSON text (NULL stays NULL)."""
    as_json = [isinstance(table.c[c].type, JSON) for c in columns]
    if not any(as_json):
        return [tuple(row[c] for c in columns) for row in rows]
    pairs = list(zip(columns, as_json, strict=True))
    return [
        tuple(_to_json(row[c]) if encode and row[c] is not None else row[c] for c, encode in pairs)
        for row in rows
    ]
