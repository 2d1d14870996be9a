"""Retention: raw telemetry for ``retention_days``, then hourly aggregates.

The fold is pure (:func:`fold`); :func:`apply_retention` is the thin shell around it.

SQLite: old rows are read in chunks, merged into ``telemetry_hourly`` and deleted, one
transaction per chunk. PostgreSQL (decision 29): ``telemetry`` is partitioned by day of
``received_at``; a day partition wholly older than the cutoff is folded by the database itself
(``GROUP BY`` station and hour, the same aggregates :func:`fold` makes), a span of received
time per transaction, and then detached and dropped — no row is deleted one by one. How far
the fold has got survives restarts in the ``counter`` table (``telemetry_folded_until``), in
the transaction of each span, so no row is folded twice. Rows the DEFAULT partition holds
(a clock far off) are folded and deleted the SQLite way.

The seq ledgers keep deduplication exact after the raw rows are gone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    Engine,
    Float,
    String,
    TableClause,
    column,
    delete,
    insert,
    select,
    table,
    update,
)

from kioskfleet.controller.db import (
    DAY,
    BulkRows,
    drop_day_partition,
    ensure_telemetry_partitions,
    telemetry_partitions,
)
from kioskfleet.controller.models import Counter, Telemetry, TelemetryHourly

_T = Telemetry.__table__  # type: ignore[attr-defined]
_H = TelemetryHourly.__table__  # type: ignore[attr-defined]
_C = Counter.__table__  # type: ignore[attr-defined]
#: PostgreSQL's DEFAULT partition of telemetry, read and deleted from like SQLite's table
_DEFAULT = table(
    "telemetry_default",
    column("id", BigInteger),
    column("station", String),
    column("ts", Float),
    column("received_at", Float),
    column("host", JSON),
    column("devices", JSON),
)
#: every raw row received before this (UTC Unix seconds) in a day partition has been folded
FOLDED_UNTIL = "telemetry_folded_until"
#: received time folded per transaction on PostgreSQL: a minute of a 10,000-station fleet
#: reporting every 10 s is 60,000 rows, a couple of seconds of the writer (docs/benchmarks.md)
SPAN = 60

Aggregate = dict[str, Any]


def hour_of(ts: float) -> float:
    """Start of the UTC hour ``ts`` falls in."""
    return float(int(ts) // 3600 * 3600)


def fold(into: Aggregate | None, rows: Iterable[Mapping[str, Any]]) -> Aggregate:
    """Fold telemetry rows (``host``, ``devices``) into an hourly aggregate; pure."""
    agg: Aggregate = into or {"samples": 0, "host": {}, "device_states": {}}
    for row in rows:
        agg["samples"] += 1
        for key, value in (row.get("host") or {}).items():
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            metric = agg["host"].setdefault(key, {"avg": 0.0, "max": value, "n": 0})
            metric["n"] += 1
            metric["avg"] += (value - metric["avg"]) / metric["n"]
            metric["max"] = max(metric["max"], value)
        for slot, status in (row.get("devices") or {}).items():
            state = status.get("state", "unknown") if isinstance(status, dict) else "unknown"
            states = agg["device_states"].setdefault(slot, {})
            states[state] = states.get(state, 0) + 1
    return agg


def merge(a: Aggregate, b: Aggregate) -> Aggregate:
    """Combine two aggregates of the same station and hour; pure."""
    out: Aggregate = {"samples": a["samples"] + b["samples"], "host": {}, "device_states": {}}
    for key in set(a["host"]) | set(b["host"]):
        x, y = a["host"].get(key), b["host"].get(key)
        if x is None or y is None:
            out["host"][key] = dict(x or y)
            continue
        n = x["n"] + y["n"]
        avg = (x["avg"] * x["n"] + y["avg"] * y["n"]) / n
        out["host"][key] = {"avg": avg, "max": max(x["max"], y["max"]), "n": n}
    for slot in set(a["device_states"]) | set(b["device_states"]):
        states: dict[str, int] = dict(a["device_states"].get(slot, {}))
        for state, count in b["device_states"].get(slot, {}).items():
            states[state] = states.get(state, 0) + count
        out["device_states"][slot] = states
    return out


def apply_retention(
    engine: Engine,
    *,
    cutoff: float,
    chunk: int = 5000,
    max_chunks: int | None = None,
    now: float | None = None,
) -> int:
    """Fold raw telemetry received before ``cutoff`` into hourly rows; returns rows folded.

    ``max_chunks`` bounds the work of one call, so the ingest writer can interleave it: a
    chunk is ``chunk`` rows on SQLite; on PostgreSQL spans of received time (:data:`SPAN`)
    until at least ``chunk`` rows are folded. On PostgreSQL each call also creates the
    partitions of the days ahead of ``now`` (default: the clock) that are missing.
    """
    if engine.dialect.name != "postgresql":
        return _fold_rows(engine, _T, cutoff=cutoff, chunk=chunk, max_chunks=max_chunks)
    with engine.begin() as conn:
        ensure_telemetry_partitions(conn, time.time() if now is None else now)
    folded = _fold_rows(engine, _DEFAULT, cutoff=cutoff, chunk=chunk, max_chunks=max_chunks)
    chunks = 0
    while max_chunks is None or chunks < max_chunks:
        chunks += 1
        done = 0
        while done < chunk:
            n = _fold_partition_span(engine, cutoff=cutoff)
            if n is None:
                return folded + done
            done += n
        folded += done
    return folded


def _fold_rows(
    engine: Engine,
    source: TableClause,
    *,
    cutoff: float,
    chunk: int,
    max_chunks: int | None,
) -> int:
    """Fold and delete rows of ``source`` received before ``cutoff``, ``chunk`` at a time."""
    folded = 0
    chunks = 0
    while max_chunks is None or chunks < max_chunks:
        chunks += 1
        with engine.begin() as conn:
            rows = (
                conn.execute(
                    select(
                        source.c.id, source.c.station, source.c.ts, source.c.host, source.c.devices
                    )
                    .where(source.c.received_at < cutoff)
                    .order_by(source.c.id)
                    .limit(chunk)
                )
                .mappings()
                .all()
            )
            if not rows:
                return folded
            groups: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
            for row in rows:
                groups.setdefault((row["station"], hour_of(row["ts"])), []).append(dict(row))
            for (station, hour), members in groups.items():
                agg = fold(None, members)
                existing = conn.execute(
                    select(_H.c.id, _H.c.samples, _H.c.host, _H.c.device_states).where(
                        _H.c.station == station, _H.c.hour == hour
                    )
                ).first()
                if existing is None:
                    conn.execute(insert(_H).values(station=station, hour=hour, **agg))
                else:
                    old = {
                        "samples": existing.samples,
                        "host": existing.host,
                        "device_states": existing.device_states,
                    }
                    conn.execute(update(_H).where(_H.c.id == existing.id).values(**merge(old, agg)))
            conn.execute(delete(source).where(source.c.id.in_([row["id"] for row in rows])))
            folded += len(rows)
    return folded


#: the aggregates of one span of a day partition, per station and hour of ``ts``, as
#: :func:`fold` makes them (host: numbers only; devices: the state of an object, else
#: "unknown"), joined with the hourly row each will merge into (if any)
_FOLD_SPAN = """
WITH r AS MATERIALIZED (
    SELECT station, floor(trunc(ts) / 3600.0) * 3600 AS hour, host, devices
    FROM {partition} WHERE received_at >= %(start)s AND received_at < %(end)s
), s AS (
    SELECT station, hour, count(*) AS samples FROM r GROUP BY station, hour
), m AS (
    SELECT station, hour,
           json_object_agg(key, json_build_object('avg', a, 'max', mx, 'n', n)) AS host
    FROM (
        SELECT r.station, r.hour, h.key, avg(h.value::text::float8) AS a,
               max(h.value::text::float8) AS mx, count(*) AS n
        FROM r CROSS JOIN LATERAL json_each(r.host) AS h
        WHERE json_typeof(h.value) = 'number'
        GROUP BY r.station, r.hour, h.key
    ) x GROUP BY station, hour
), d AS (
    SELECT station, hour, json_object_agg(slot, states) AS device_states
    FROM (
        SELECT station, hour, slot, json_object_agg(state, n) AS states
        FROM (
            SELECT r.station, r.hour, e.key AS slot,
                   CASE WHEN json_typeof(e.value) = 'object'
                        THEN coalesce(e.value ->> 'state', 'unknown') ELSE 'unknown' END
                   AS state,
                   count(*) AS n
            FROM r CROSS JOIN LATERAL json_each(r.devices) AS e
            GROUP BY 1, 2, 3, 4
        ) y GROUP BY station, hour, slot
    ) z GROUP BY station, hour
)
SELECT s.station, s.hour, s.samples, coalesce(m.host, '{{}}'::json) AS host,
       coalesce(d.device_states, '{{}}'::json) AS device_states,
       t.id AS old_id, t.samples AS old_samples, t.host AS old_host,
       t.device_states AS old_device_states
FROM s
LEFT JOIN m ON m.station = s.station AND m.hour = s.hour
LEFT JOIN d ON d.station = s.station AND d.hour = s.hour
LEFT JOIN telemetry_hourly t ON t.station = s.station AND t.hour = s.hour
"""


def _fold_partition_span(engine: Engine, *, cutoff: float) -> int | None:
    """Fold the next span of the oldest day partition wholly older than ``cutoff`` into the
    hourly aggregates, in one transaction, and drop the partition once all of it is folded;
    rows folded, or None when no partition is due."""
    bulk = BulkRows(engine)
    with engine.begin() as conn:
        due = sorted(
            (day, name)
            for day, name in telemetry_partitions(conn).items()
            if (day + 1) * DAY <= cutoff
        )
        if not due:
            return None
        day, name = due[0]
        start, end = day * DAY, (day + 1) * DAY
        until = max(_folded_until(conn), start)
        if until >= end:
            drop_day_partition(conn, name)
            return 0
        span_end = min(until + SPAN, end)
        rows = conn.exec_driver_sql(
            _FOLD_SPAN.format(partition=name), {"start": float(until), "end": float(span_end)}
        ).all()
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        samples = 0
        for row in rows:
            agg = {"samples": row.samples, "host": row.host, "device_states": row.device_states}
            samples += row.samples
            if row.old_id is None:
                inserts.append({"station": row.station, "hour": float(row.hour), **agg})
            else:
                old = {
                    "samples": row.old_samples,
                    "host": row.old_host,
                    "device_states": row.old_device_states,
                }
                updates.append({"id": row.old_id, **merge(old, agg)})
        if not rows:
            # a stretch without rows (a partition begun mid-day, the controller away): jump
            # to the next row rather than walk the stretch a span at a time
            following = conn.exec_driver_sql(
                f"SELECT min(received_at) FROM {name} WHERE received_at >= %(at)s",
                {"at": float(span_end)},
            ).scalar()
            span_end = end if following is None else max(span_end, math.floor(following))
        bulk.insert(conn, _H, inserts)
        bulk.update(conn, _H, ("id",), updates)
        _set_folded_until(conn, span_end)
        if span_end >= end:
            drop_day_partition(conn, name)
        return samples


def _folded_until(conn: Connection) -> int:
    value = conn.execute(select(_C.c.value).where(_C.c.name == FOLDED_UNTIL)).scalar()
    return 0 if value is None else int(value)


def _set_folded_until(conn: Connection, until: int) -> None:
    done = conn.execute(update(_C).where(_C.c.name == FOLDED_UNTIL).values(value=until))
    if done.rowcount == 0:
        conn.execute(insert(_C).values(name=FOLDED_UNTIL, value=until))
