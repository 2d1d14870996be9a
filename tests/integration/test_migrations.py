"""Migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import func, select
from sqlmodel import SQLModel

from kioskfleet.controller import models
from kioskfleet.controller.db import (
    DAY,
    MIGRATIONS,
    make_engine,
    migrate,
    telemetry_partitions,
)

_TELEMETRY = models.Telemetry.__table__  # type: ignore[attr-defined]


def test_migrated_schema_matches_the_models(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    migrate(engine)  # upgrading an up-to-date database changes nothing
    with engine.connect() as conn:
        # the telemetry partitions are the controller's, and SQLite-only keys only count there
        context = MigrationContext.configure(
            conn, opts=models.comparison_filters(conn.dialect.name)
        )
        diff = compare_metadata(context, SQLModel.metadata)
    engine.dispose()
    assert diff == []


@pytest.mark.postgres
def test_telemetry_becomes_partitioned_and_keeps_every_row(pg_url: str) -> None:
    """From 0003 (one plain table) to day partitions: every row, id and value kept; rows of
    a clock far off go to DEFAULT; new ids continue after the old ones."""
    engine = make_engine(pg_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0003")
    now = time.time()
    received = [now - 29 * DAY, now - 3 * DAY + 0.5, now - 1.25, now, 4_102_444_800.0, 1e9]
    rows = [
        {
            "station": f"wx-m-{i % 3:02d}",
            "session": 5,
            "seq": i,
            "ts": at - 2,
            "received_at": at,
            "host": {"cpu_percent": i / 3, "note": "tab\there"},
            "devices": {"printer": {"state": "online"}},
            "counters": {"prints": i},
        }
        for i, at in enumerate(received * 50)
    ]
    with engine.begin() as conn:
        conn.execute(_TELEMETRY.insert(), rows)
        before = conn.execute(select(_TELEMETRY).order_by(_TELEMETRY.c.id)).all()
    migrate(engine)
    with engine.connect() as conn:
        after = conn.execute(select(_TELEMETRY).order_by(_TELEMETRY.c.id)).all()
        kind = conn.exec_driver_sql(
            "SELECT relkind FROM pg_class WHERE relname = 'telemetry'"
        ).scalar_one()
        days = telemetry_partitions(conn)
        in_default = conn.exec_driver_sql("SELECT count(*) FROM telemetry_default").scalar_one()
    assert [tuple(r) for r in after] == [tuple(r) for r in before] and len(after) == 300
    assert kind == "p"
    today = int(now // DAY)
    assert {today - 29, today - 3, today, today + 1, today + 2} <= set(days)
    assert in_default == 100  # year 2100 and 2001: no day partition of their own
    with engine.begin() as conn:
        conn.execute(_TELEMETRY.insert(), [{**rows[0], "seq": 999}])
        newest = conn.execute(select(func.max(_TELEMETRY.c.id))).scalar_one()
    assert newest == max(r.id for r in before) + 1
    engine.dispose()
