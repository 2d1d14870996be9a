"""Retention folds old raw telemetry into hourly aggregates; dedup survives it."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from kioskfleet.controller.db import (
    DAY,
    create_day_partition,
    ensure_telemetry_partitions,
    make_engine,
    migrate,
    telemetry_partitions,
)
from kioskfleet.controller.models import Counter, Telemetry, TelemetryHourly
from kioskfleet.controller.retention import FOLDED_UNTIL, apply_retention, fold, merge
from kioskfleet.controller.store import FleetStore
from kioskfleet.protocol import decode_agent_message

STATION = "wx-binhu-sub-03"


def _telemetry(seq: int, ts: float, cpu: float, printer: str) -> tuple[str, object]:
    body = {
        "v": 1,
        "station": STATION,
        "session": 7,
        "seq": seq,
        "ts": ts,
        "host": {"cpu_percent": cpu},
        "devices": {
            "printer": {"device": "printer", "driver": "escpos", "state": printer, "faults": []}
        },
    }
    return "telemetry", decode_agent_message("telemetry", STATION, json.dumps(body).encode())


def test_old_telemetry_becomes_hourly_aggregates_and_duplicates_stay_duplicates(
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    store = FleetStore(engine)
    t0 = 1_700_000_000.0 - 1_700_000_000.0 % 3600  # an hour boundary
    old = [
        _telemetry(
            seq, t0 + seq * 600, cpu=10.0 * seq, printer="online" if seq % 2 else "user_error"
        )
        for seq in range(1, 6)
    ]  # 5 messages in the first hour
    store.apply(old, now=t0 + 3000)
    store.apply([_telemetry(6, t0 + 40 * DAY, cpu=1.0, printer="online")], now=t0 + 40 * DAY)

    folded = apply_retention(engine, cutoff=t0 + 40 * DAY - 30 * DAY)
    assert folded == 5
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Telemetry)).scalar_one() == 1
        hourly = conn.execute(select(TelemetryHourly)).one()
    assert hourly.hour == t0
    assert hourly.samples == 5
    assert hourly.host["cpu_percent"]["max"] == 50.0
    assert abs(hourly.host["cpu_percent"]["avg"] - 30.0) < 1e-9
    assert hourly.device_states["printer"] == {"online": 3, "user_error": 2}

    # a redelivery of a folded message is recognised by the ledger, not stored again
    again = store.apply([old[2]], now=t0 + 41 * DAY)
    assert again.duplicates == 1 and not again.stored
    # and a restarted controller (fresh store) still knows it
    assert FleetStore(engine).apply([old[0]], now=t0 + 41 * DAY).duplicates == 1
    engine.dispose()


metric = st.fixed_dictionaries({"host": st.fixed_dictionaries({"cpu": st.floats(0, 100)})})


@given(st.lists(metric, min_size=1, max_size=20), st.lists(metric, min_size=1, max_size=20))
def test_folding_in_two_parts_equals_folding_at_once(a: list[dict], b: list[dict]) -> None:
    whole = fold(None, a + b)
    parts = merge(fold(None, a), fold(None, b))
    assert parts["samples"] == whole["samples"]
    assert abs(parts["host"]["cpu"]["avg"] - whole["host"]["cpu"]["avg"]) < 1e-6
    assert parts["host"]["cpu"]["max"] == whole["host"]["cpu"]["max"]


# -- PostgreSQL: telemetry partitioned by day (decision 24) -------------------------------------
def _message(station: str, session: int, seq: int, ts: float, rng: random.Random) -> Any:
    states = ["online", "online", "online", "user_error", "busy"]
    body = {
        "v": 1,
        "station": station,
        "session": session,
        "seq": seq,
        "ts": ts,
        "host": {
            "cpu_percent": round(rng.uniform(0, 100), 3),
            "mem_percent": rng.randint(10, 90),
            "uptime_s": rng.randint(0, 10**6),
        },
        "devices": {
            slot: {"device": slot, "driver": driver, "state": rng.choice(states), "faults": []}
            for slot, driver in (("printer", "escpos"), ("cash_acceptor", "ssp"))
        },
    }
    return "telemetry", decode_agent_message("telemetry", station, json.dumps(body).encode())


def _hourly(engine: Engine) -> dict[tuple[str, float], Any]:
    with engine.connect() as conn:
        return {(r.station, r.hour): r for r in conn.execute(select(TelemetryHourly))}


def _partitions(engine: Engine) -> dict[int, str]:
    with engine.connect() as conn:
        return telemetry_partitions(conn)


def _rows_in(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())


@pytest.fixture
def pg(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.mark.postgres
def test_partitions_are_made_ahead_and_only_once(pg: Engine) -> None:
    today = int(time.time() // DAY)
    assert set(_partitions(pg)) >= {today, today + 1, today + 2}
    # a retention pass made on a later day adds that day's and the two after it
    apply_retention(pg, cutoff=0.0, now=(today + 10) * DAY + 5)
    assert set(_partitions(pg)) >= {today + 10, today + 11, today + 12}
    assert today + 9 not in _partitions(pg)
    with pg.begin() as conn:
        assert ensure_telemetry_partitions(conn, (today + 10) * DAY) == []


@pytest.mark.postgres
def test_a_row_no_day_partition_takes_lands_in_default_and_moves_when_its_day_comes(
    pg: Engine,
) -> None:
    rng = random.Random(1)
    store = FleetStore(pg)
    far_future = 4_102_444_800.0 + 3600  # 2100-01-01T01:00Z
    far_past = 946_684_800.0  # 2000-01-01
    out = store.apply([_message(STATION, 7, 1, far_future, rng)], now=far_future)
    assert out.stored == {"telemetry": 1}
    assert store.apply([_message(STATION, 7, 2, far_past, rng)], now=far_past).stored
    assert _rows_in(pg, "telemetry_default") == 2
    # the day comes: its partition takes the row over from DEFAULT
    with pg.begin() as conn:
        name = create_day_partition(conn, int(far_future // DAY))
    assert _rows_in(pg, name) == 1 and _rows_in(pg, "telemetry_default") == 1
    assert _rows_in(pg, "telemetry") == 2
    # retention folds what DEFAULT holds row by row
    assert apply_retention(pg, cutoff=far_past + DAY) == 1
    assert _rows_in(pg, "telemetry_default") == 0
    assert [(k, r.samples) for k, r in _hourly(pg).items()] == [((STATION, far_past), 1)]


def _fill(engine: Engine, rng: random.Random, day: int) -> list[tuple[str, Any]]:
    """Two days of a few stations around ``day``'s end; the same messages on any database.

    Messages are received 5–25 s after their ``ts``, so an hour of ``ts`` near midnight has
    rows in two day partitions (and in several folding spans)."""
    store = FleetStore(engine)
    sent: list[tuple[str, Any]] = []
    start = day * DAY + DAY - 3 * 3600
    for i in range(0, 6 * 3600, 40):
        ts = start + i + rng.uniform(0, 2)
        batch = [
            _message(f"wx-s-{n:02d}", 7, i // 40 + 1, ts + n, rng)
            for n in range(3)
            if rng.random() < 0.9
        ]
        store.apply(batch, now=ts + rng.uniform(5, 25))
        sent.extend(batch)
    return sent


def _same_aggregates(got: dict[tuple[str, float], Any], want: dict[tuple[str, float], Any]) -> None:
    assert set(got) == set(want)
    for key, row in want.items():
        other = got[key]
        assert other.samples == row.samples, key
        assert other.device_states == row.device_states, key
        assert set(other.host) == set(row.host), key
        for metric, agg in row.host.items():
            assert other.host[metric]["n"] == agg["n"]
            assert other.host[metric]["max"] == agg["max"]
            assert other.host[metric]["avg"] == pytest.approx(agg["avg"], rel=1e-12)


@pytest.mark.postgres
def test_retention_folds_a_day_partition_as_row_by_row_folding_does_then_drops_it(
    pg: Engine, tmp_path: Path
) -> None:
    day = int(time.time() // DAY) - 40
    with pg.begin() as conn:
        for d in (day, day + 1):
            create_day_partition(conn, d)
    lite = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(lite)
    sent = _fill(pg, random.Random(7), day)
    assert _fill(lite, random.Random(7), day) == sent
    total = _rows_in(pg, "telemetry")
    assert total == _rows_in(lite, "telemetry") == len(sent) > 1000

    # the first day is due, the second not: the hour before midnight is folded in part
    cutoff = (day + 1) * DAY
    folded = apply_retention(pg, cutoff=cutoff, chunk=100, max_chunks=1)
    assert 100 <= folded < total / 2  # one step: a span or a few, not the day
    folded += apply_retention(pg, cutoff=cutoff)
    assert folded == apply_retention(lite, cutoff=cutoff) > 0
    assert day not in _partitions(pg) and day + 1 in _partitions(pg)
    assert _rows_in(pg, "telemetry") == _rows_in(lite, "telemetry") == total - folded
    with pg.connect() as conn:
        until = conn.execute(select(Counter.value).where(Counter.name == FOLDED_UNTIL))
        assert until.scalar_one() == cutoff
    _same_aggregates(_hourly(pg), _hourly(lite))
    assert len(_hourly(lite)) == 3 * 3

    # the second day: its first rows merge into the hour the first day began
    later = (day + 2) * DAY
    assert apply_retention(pg, cutoff=later) == apply_retention(lite, cutoff=later)
    assert _rows_in(pg, "telemetry") == 0 and day + 1 not in _partitions(pg)
    _same_aggregates(_hourly(pg), _hourly(lite))
    assert len(_hourly(lite)) == 3 * 6
    assert sum(r.samples for r in _hourly(pg).values()) == len(sent)
    lite.dispose()

    # the partitions are gone, the ledgers are not: a redelivery is still a duplicate, even
    # to a restarted controller
    again = FleetStore(pg).apply(sent[:1] + sent[-1:], now=time.time())
    assert again.duplicates == 2 and not again.stored
