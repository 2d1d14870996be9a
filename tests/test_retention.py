"""Retention folds old raw telemetry into hourly aggregates; dedup survives it."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from kioskfleet.controller.db import make_engine, migrate
from kioskfleet.controller.models import Telemetry, TelemetryHourly
from kioskfleet.controller.retention import apply_retention, fold, merge
from kioskfleet.controller.store import FleetStore
from kioskfleet.protocol import decode_agent_message

STATION = "wx-binhu-sub-03"
DAY = 86400.0


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
