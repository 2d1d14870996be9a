"""Storage at the size of a province, on PostgreSQL: 3 hours of a 10,000-station fleet reporting
every 10 s (10.8 million telemetry rows) in the partitioned ``telemetry`` table, then what it
costs to write into, read from, fold away and keep.

The rows are generated in bulk (``COPY``, not through MQTT) from the real agent's payloads of a
five-device station (``_support.StationPayloads``: simulated devices, host sample, the kiosk's
counters), encoded the way the controller stores them. They are received over the 3 hours
before now (today's partition, or today's and yesterday's after midnight UTC). Then:

- the insert rate of a writer batch (``FleetStore.apply``: ledgers, station rows, COPY of 500
  telemetry messages) into the big table and into an empty database, alternating, side by side;
- a station's telemetry over an hour (``crud.station_telemetry``: the API's query and its
  response model) for random stations: p50/p95;
- sizes: heap, TOAST, index per partition (``pg_total_relation_size``), bytes per message;
- one retention pass: every day partition up to today folded into ``telemetry_hourly`` in
  spans (as the writer's sweep does, one ``apply_retention`` step at a time) and dropped;
- a projection for 30 days of a 10,000-station fleet.

Both databases are throwaway ones, dropped at the end.

    flock /tmp/kioskfleet-bench.lock .venv/bin/python bench/storage.py
    flock /tmp/kioskfleet-bench.lock .venv/bin/python bench/storage.py --stations 1000 --hours 0.5
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _support import (
    StationPayloads,
    bench_counters,
    log,
    percentile,
    postgres_available,
    throwaway_postgres,
)
from pydantic import TypeAdapter
from pydantic_core import to_json
from sqlalchemy import Engine

from kioskfleet.agent.host import HostSampler
from kioskfleet.controller import crud
from kioskfleet.controller.db import (
    DAY,
    create_day_partition,
    make_engine,
    migrate,
    telemetry_partitions,
)
from kioskfleet.controller.retention import SPAN, apply_retention
from kioskfleet.controller.store import FleetStore
from kioskfleet.fleetsim.fleet import wuxi_fleet
from kioskfleet.protocol.devices import DeviceStatus
from kioskfleet.protocol.messages import AgentMessage, TelemetryMessage, decode_agent_message

_DEVICES: TypeAdapter[dict[str, DeviceStatus]] = TypeAdapter(dict[str, DeviceStatus])
_COLUMNS = "station, session, seq, ts, received_at, host, devices, counters"
#: what the writer passes to one retention step (writer._RETENTION_CHUNK)
_WRITER_CHUNK = 2000


def _copy_text(value: str) -> str:
    """``value`` for COPY's text format (JSON from these payloads has no tab or newline)."""
    return value.replace("\\", "\\\\")


def _host(p: StationPayloads, seq: int) -> dict[str, Any]:
    """The host metrics ``StationPayloads.telemetry`` sends (without encoding the rest)."""
    return {
        **p.host,
        "cpu_percent": round(p.rng.uniform(2, 35), 1),
        "memory_percent": round(p.rng.uniform(30, 60), 1),
        "uptime_s": round(86_400 + seq * 10.0, 1),
    }


def fill(url: str, stations: int, hours: float, end: float, lean: bool) -> dict[str, Any]:
    """Register ``stations`` stations (births through the store) and COPY ``hours`` of their
    telemetry, received up to ``end``, plus their seq ledgers."""
    host = HostSampler().sample()
    session = int(end * 1000)
    fleet = [StationPayloads(identity, session, host) for identity in wuxi_fleet(stations)]
    engine = make_engine(url)
    migrate(engine)
    # the days of the window have their partitions, as they would have had, made days ahead
    with engine.begin() as conn:
        have = telemetry_partitions(conn)
        for day in range(int((end - hours * 3600) // DAY), int(end // DAY) + 1):
            if day not in have:
                create_day_partition(conn, day)
    store = FleetStore(engine)
    births: list[tuple[str, AgentMessage]] = [
        ("state", decode_agent_message("state", p.identity.station, p.birth())) for p in fleet
    ]
    for start in range(0, len(births), 1000):
        store.apply(births[start : start + 1000], now=end - hours * 3600 - 1)
    # each station's devices as the store writes them (they rarely change), and its phase
    devices: list[str] = []
    for p in fleet:
        message = decode_agent_message("telemetry", p.identity.station, p.telemetry(1))
        assert isinstance(message, TelemetryMessage)
        statuses = message.devices
        if lean:  # what lean telemetry leaves out: device identity travels in the birth
            statuses = {slot: s.model_copy(update={"info": None}) for slot, s in statuses.items()}
        devices.append(_copy_text(_DEVICES.dump_json(statuses, exclude_none=True).decode()))
    phase = [random.Random(p.identity.station).uniform(0, 10) for p in fleet]
    steps = int(hours * 360)
    first = end - steps * 10.0
    started = time.perf_counter()
    rows = 0
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("SET synchronous_commit = off")
        for step in range(steps):
            seq = step + 1
            lines = []
            for i, p in enumerate(fleet):
                received = first + step * 10.0 + phase[i]
                lines.append(
                    f"{p.identity.station}\t{session}\t{seq}\t{received - 0.3!r}\t{received!r}\t"
                    f"{_copy_text(to_json(_host(p, seq)).decode())}\t{devices[i]}\t"
                    f"{_copy_text(to_json(bench_counters(seq)).decode())}\n"
                )
            with cursor.copy(f"COPY telemetry ({_COLUMNS}) FROM STDIN") as copy:  # type: ignore[attr-defined]
                copy.write("".join(lines))
            rows += len(lines)
            if step % 30 == 29:
                raw.commit()
                rate = rows / (time.perf_counter() - started)
                log(f"filled {rows:,} rows ({rate:,.0f}/s)")
        cursor.execute(
            "INSERT INTO station_session (station, session, watermark, above, updated_at) "
            "SELECT id, %s, %s, '[]', %s FROM station",
            (session, steps, end),
        )
        raw.commit()
    finally:
        raw.close()
    seconds = time.perf_counter() - started
    log("vacuum analyze")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")
    engine.dispose()
    return {"rows": rows, "seconds": round(seconds, 1), "rows_per_s": round(rows / seconds)}


def sizes(engine: Engine) -> dict[str, Any]:
    """Heap, TOAST and index bytes of every telemetry partition, and of the other tables."""
    with engine.connect() as conn:
        parts = conn.exec_driver_sql(
            "SELECT c.relname, pg_relation_size(t.relid), "
            "pg_total_relation_size(t.relid) - pg_relation_size(t.relid) "
            "- pg_indexes_size(t.relid), pg_indexes_size(t.relid), "
            "pg_total_relation_size(t.relid), c.reltuples::bigint "
            "FROM pg_partition_tree('telemetry') t JOIN pg_class c ON c.oid = t.relid "
            "WHERE t.isleaf ORDER BY c.relname"
        ).all()
        rows = conn.exec_driver_sql("SELECT count(*) FROM telemetry").scalar_one()
        columns = conn.exec_driver_sql(
            "SELECT avg(pg_column_size(host)), avg(pg_column_size(devices)), "
            "avg(pg_column_size(counters)) FROM telemetry TABLESAMPLE SYSTEM (1)"
        ).one()
        others = {
            name: conn.exec_driver_sql(f"SELECT pg_total_relation_size('{name}')").scalar_one()
            for name in ("station", "station_session", "telemetry_hourly", "event_batch")
        }
    total = sum(p[4] for p in parts)
    return {
        "rows": rows,
        "partitions": {
            p[0]: {"heap": p[1], "toast": p[2], "indexes": p[3], "total": p[4], "rows": p[5]}
            for p in parts
        },
        "heap": sum(p[1] for p in parts),
        "toast": sum(p[2] for p in parts),
        "indexes": sum(p[3] for p in parts),
        "total": total,
        "bytes_per_message": round(total / rows, 1) if rows else None,
        "avg_column_bytes": {
            "host": round(float(columns[0] or 0)),
            "devices": round(float(columns[1] or 0)),
            "counters": round(float(columns[2] or 0)),
        },
        "other_tables": others,
    }


def query_latency(
    engine: Engine, stations: list[str], end: float, hours: float, rounds: int, per_round: int
) -> dict[str, Any]:
    """A station's telemetry over one hour inside the filled window, random stations."""
    rng = random.Random(3)
    p50s, p95s, every = [], [], []
    rows_seen = []
    with engine.connect() as conn:
        for _ in range(rounds):
            times = []
            for _ in range(per_round):
                station = rng.choice(stations)
                start = end - hours * 3600 + rng.uniform(0, max(0.0, hours - 1) * 3600)
                t0 = time.perf_counter()
                found = crud.station_telemetry(
                    conn=conn, station_id=station, start=start, end=start + 3600, limit=10_000
                )
                times.append((time.perf_counter() - t0) * 1000)
                assert found is not None
                rows_seen.append(len(found.items))
            p50s.append(percentile(times, 50))
            p95s.append(percentile(times, 95))
            every.extend(times)
    return {
        "queries": len(every),
        "rows_per_query": round(statistics.fmean(rows_seen), 1),
        "p50_ms": {"min": round(min(p50s), 2), "median": round(statistics.median(p50s), 2)},
        "p95_ms": {"min": round(min(p95s), 2), "median": round(statistics.median(p95s), 2)},
        "all_p50_ms": round(percentile(every, 50), 2),
        "all_p95_ms": round(percentile(every, 95), 2),
    }


def batch_rates(big: str, empty: str, batch: int, batches: int) -> dict[str, Any]:
    """Messages per second of writer batches (``FleetStore.apply`` of ``batch`` telemetry
    messages, one per station) into the big database and into an empty one, alternating."""
    host = HostSampler().sample()
    session = int(time.time() * 1000)
    fleet = [
        StationPayloads(identity, session, host)
        for identity in wuxi_fleet(batch, seed=7, id_prefix="bench-ingest")
    ]
    births: list[tuple[str, AgentMessage]] = [
        ("state", decode_agent_message("state", p.identity.station, p.birth())) for p in fleet
    ]
    plan = [
        [
            ("telemetry", decode_agent_message("telemetry", p.identity.station, p.telemetry(seq)))
            for p in fleet
        ]
        for seq in range(1, batches + 2)
    ]
    engines = {"big": make_engine(big), "empty": make_engine(empty)}
    migrate(engines["empty"])
    stores = {name: FleetStore(engine) for name, engine in engines.items()}
    times: dict[str, list[float]] = {"big": [], "empty": []}
    for store in stores.values():
        store.apply(births, now=time.time())
        store.apply(plan[0], now=time.time())  # the ledgers' first rows: not timed
    for messages in plan[1:]:
        for name, store in stores.items():
            t0 = time.perf_counter()
            out = store.apply(messages, now=time.time())
            times[name].append(time.perf_counter() - t0)
            assert out.stored == {"telemetry": batch}
    for engine in engines.values():
        engine.dispose()
    result: dict[str, Any] = {"batch": batch, "batches": batches}
    for name, spent in times.items():
        rates = sorted(batch / s for s in spent)
        result[name] = {
            "msgs_per_s_median": round(statistics.median(rates)),
            "msgs_per_s_min": round(rates[0]),
            "batch_ms_median": round(statistics.median(spent) * 1000, 1),
        }
    result["big_vs_empty"] = round(
        result["big"]["msgs_per_s_median"] / result["empty"]["msgs_per_s_median"], 3
    )
    return result


def retention_pass(engine: Engine, cutoff: float) -> dict[str, Any]:
    """Fold and drop every day partition before ``cutoff``, one writer step at a time."""
    steps: list[float] = []
    folded = 0
    started = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        n = apply_retention(engine, cutoff=cutoff, chunk=_WRITER_CHUNK, max_chunks=1)
        steps.append(time.perf_counter() - t0)
        folded += n
        if len(steps) % 10 == 0:
            log(f"retention: {folded:,} rows folded in {time.perf_counter() - started:.0f} s")
        if n < _WRITER_CHUNK:
            break
    seconds = time.perf_counter() - started
    with engine.connect() as conn:
        hourly = conn.exec_driver_sql("SELECT count(*) FROM telemetry_hourly").scalar_one()
        hourly_bytes = conn.exec_driver_sql(
            "SELECT pg_total_relation_size('telemetry_hourly')"
        ).scalar_one()
        left = conn.exec_driver_sql("SELECT count(*) FROM telemetry").scalar_one()
        # the file holds the versions each span's merge left behind until vacuum: the live
        # row is what a year of them costs
        live = conn.exec_driver_sql(
            "SELECT avg(pg_column_size(h.*)) FROM telemetry_hourly h"
        ).scalar_one()
    return {
        "rows_folded": folded,
        "seconds": round(seconds, 1),
        "rows_per_s": round(folded / seconds) if seconds else None,
        "steps": len(steps),
        "span_s": SPAN,
        "step_ms_median": round(statistics.median(steps) * 1000),
        "step_ms_p95": round(percentile(steps, 95) * 1000),
        "step_ms_max": round(max(steps) * 1000),
        "hourly_rows": hourly,
        "hourly_bytes": hourly_bytes,
        "hourly_file_bytes_per_row": round(hourly_bytes / hourly, 1) if hourly else None,
        "hourly_live_row_bytes": round(float(live or 0), 1),
        "raw_rows_left": left,
    }


def projection(
    stored: dict[str, Any], hourly_bytes_per_row: float | None, stations: int, interval: float
) -> dict[str, Any]:
    """Disk for 30 days of raw telemetry (31 day partitions at most: a day is dropped once
    wholly older than the cutoff) and a year of hourly aggregates, from the measured bytes."""
    per_day = stations * DAY / interval
    per_message = stored["bytes_per_message"]
    hourly_year = stations * 24 * 365 * (hourly_bytes_per_row or 0)
    return {
        "stations": stations,
        "messages_per_day": round(per_day),
        "raw_gb_per_day": round(per_day * per_message / 1e9, 1),
        "raw_gb_30_days": round(31 * per_day * per_message / 1e9, 1),
        "hourly_gb_per_year": round(hourly_year / 1e9, 2),
        "index_share": round(stored["indexes"] / stored["total"], 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=10_000)
    parser.add_argument("--hours", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=500, help="messages per writer batch")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--lean", action="store_true", help="devices without `info`")
    parser.add_argument("--out", type=Path, help="also write the result line here")
    args = parser.parse_args()
    reason = postgres_available()
    if reason:
        print(f"PostgreSQL not reachable: {reason}", file=sys.stderr)
        return 2
    end = time.time()
    result: dict[str, Any] = {
        "stations": args.stations,
        "hours": args.hours,
        "interval_s": 10.0,
        "lean": args.lean,
    }
    with throwaway_postgres() as big, throwaway_postgres() as empty:
        log(f"filling {args.stations:,} stations x {args.hours} h")
        result["fill"] = fill(big, args.stations, args.hours, end, args.lean)
        # the fill's payload builders (10,000 stations' simulated devices) are not what a
        # controller holds: out of the collector's way, or its full collections (~50 ms with
        # them) would be what the latencies measure
        gc.collect()
        gc.freeze()
        engine = make_engine(big)
        result["sizes"] = sizes(engine)
        log("sizes", json.dumps({k: result["sizes"][k] for k in ("rows", "total")}))
        with engine.connect() as conn:
            ids = [s for (s,) in conn.exec_driver_sql("SELECT id FROM station")]
        result["query_hour"] = query_latency(engine, ids, end, args.hours, rounds=5, per_round=100)
        log("query", json.dumps(result["query_hour"]))
        result["writer_batch"] = batch_rates(big, empty, args.batch, args.batches)
        log("writer batch", json.dumps(result["writer_batch"]))
        today = int(time.time() // DAY)
        result["retention"] = retention_pass(engine, cutoff=(today + 1) * DAY)
        log("retention", json.dumps(result["retention"]))
        result["projection_30_days"] = projection(
            # a live hourly row, plus ~40 bytes of its (station, hour) index entry
            result["sizes"],
            result["retention"]["hourly_live_row_bytes"] + 40,
            10_000,
            10.0,
        )
        engine.dispose()
    line = json.dumps(result)
    print(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
