"""Retention: raw telemetry for ``retention_days``, then hourly aggregates.

The fold is pure (:func:`fold`); :func:`apply_retention` is the thin shell that reads old rows
in chunks, merges them into ``telemetry_hourly`` and deletes them, one transaction per chunk.
The seq ledgers keep deduplication exact after the raw rows are gone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update

from kioskfleet.controller.models import Telemetry, TelemetryHourly

_T = Telemetry.__table__  # type: ignore[attr-defined]
_H = TelemetryHourly.__table__  # type: ignore[attr-defined]

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
    engine: Engine, *, cutoff: float, chunk: int = 5000, max_chunks: int | None = None
) -> int:
    """Fold raw telemetry received before ``cutoff`` into hourly rows; returns rows folded.

    ``max_chunks`` bounds the work of one call, so the ingest writer can interleave it.
    """
    folded = 0
    chunks = 0
    while max_chunks is None or chunks < max_chunks:
        chunks += 1
        with engine.begin() as conn:
            rows = (
                conn.execute(
                    select(_T.c.id, _T.c.station, _T.c.ts, _T.c.host, _T.c.devices)
                    .where(_T.c.received_at < cutoff)
                    .order_by(_T.c.id)
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
            conn.execute(delete(_T).where(_T.c.id.in_([row["id"] for row in rows])))
            folded += len(rows)
    return folded
