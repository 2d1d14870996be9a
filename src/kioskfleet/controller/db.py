"""Database engine, migrations, and the few statements where the dialects differ."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.dml import Insert
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


def insert_ignore(engine: Engine, table: Table) -> Insert:
    """``INSERT … ON CONFLICT DO NOTHING`` for this engine's dialect."""
    if engine.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if engine.dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise ValueError(f"unsupported database dialect {engine.dialect.name!r}")
