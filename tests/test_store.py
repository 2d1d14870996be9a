"""The ingest writer's transaction: a failed commit leaves memory as it was, so the same batch
can be applied again and is stored once — never acked as a duplicate of itself."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import exc, func, select
from sqlmodel import create_engine

from kioskfleet.controller.db import make_engine, migrate
from kioskfleet.controller.models import Counter, Station, StationSession, Telemetry
from kioskfleet.controller.store import FleetStore
from kioskfleet.protocol import decode_agent_message

STATION = "wx-xinwu-bank-02"


def _message(kind: str, seq: int, **body: object) -> tuple[str, object]:
    payload = {"v": 1, "station": STATION, "session": 5, "seq": seq, "ts": 1.0, **body}
    return kind, decode_agent_message(kind, STATION, json.dumps(payload).encode())


def _birth(**body: object) -> tuple[str, object]:
    return _message(
        "state",
        0,
        online=True,
        district="Xinwu",
        site="Xinwu bank branch 2",
        site_type="bank_agent_branch",
        profile="bank-agent-gen1",
        telemetry_interval=10,
        **body,
    )


def test_a_batch_whose_commit_fails_is_stored_once_when_applied_again(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.2})
    migrate(engine)
    store = FleetStore(engine)
    store.apply([_birth(), _message("telemetry", 1, host={"cpu_percent": 3.0})], now=100.0)

    batch = [_message("telemetry", seq, host={"cpu_percent": 4.0}) for seq in (2, 3, 5)]
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("PRAGMA journal_mode=WAL")
    locker.execute("BEGIN EXCLUSIVE")
    with pytest.raises(exc.OperationalError):
        store.apply(batch, now=110.0)  # type: ignore[arg-type]
    assert store.stations[STATION].last_telemetry_at == 100.0
    assert not store.gappy
    locker.execute("ROLLBACK")
    locker.close()

    out = store.apply(batch, now=120.0)  # type: ignore[arg-type]
    assert out.stored == {"telemetry": 3} and out.duplicates == 0
    assert out.acks == {(STATION, 5): 3}  # 4 is missing: confirmed up to 3
    assert (STATION, 5) in store.gappy
    with engine.connect() as conn:
        seqs = conn.execute(select(Telemetry.seq).order_by(Telemetry.seq)).scalars().all()  # type: ignore[arg-type]
        assert seqs == [1, 2, 3, 5]
        ledger = conn.execute(select(StationSession)).one()
        assert (ledger.watermark, ledger.above) == (3, [5])
        counted = conn.execute(
            select(Counter.value).where(Counter.name == "ingested_telemetry")
        ).scalar_one()
        assert counted == 4
        station = conn.execute(select(Station)).one()
        assert station.last_telemetry_at == 120.0 and station.district == "Xinwu"
    # and a restarted controller agrees with what is on disk
    again = FleetStore(engine).apply(batch, now=130.0)  # type: ignore[arg-type]
    assert again.duplicates == 3 and not again.stored
    engine.dispose()


def test_a_failed_first_batch_does_not_leave_a_station_registered(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.2})
    migrate(engine)
    store = FleetStore(engine)
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    with pytest.raises(exc.OperationalError):
        store.apply([_birth(), _message("telemetry", 1)], now=100.0)  # type: ignore[list-item]
    assert STATION not in store.stations
    locker.execute("ROLLBACK")
    locker.close()
    out = store.apply([_birth(), _message("telemetry", 1)], now=101.0)  # type: ignore[list-item]
    assert out.stored == {"telemetry": 1}
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Station)).scalar_one() == 1
    engine.dispose()


def _printer(state: str) -> dict[str, object]:
    return {"printer": {"device": "printer", "driver": "escpos", "state": state, "faults": []}}


def test_the_devices_picture_follows_every_message_that_sets_it(tmp_path: Path) -> None:
    """Telemetry's devices, then a birth's, then telemetry's again (the same text as the first):
    the station must show the latest each time, in memory and on disk."""
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    store = FleetStore(engine)

    def stored_printer() -> object:
        with engine.connect() as conn:
            devices = conn.execute(select(Station.devices)).scalar_one()  # type: ignore[call-overload]
        return devices["printer"]["state"]

    store.apply([_birth(), _message("telemetry", 1, devices=_printer("online"))], now=100.0)
    assert store.stations[STATION].devices["printer"]["state"] == "online"
    assert stored_printer() == "online"
    assert not store.stations[STATION].degraded

    store.apply([_birth(devices=_printer("hardware_error"))], now=110.0)  # type: ignore[list-item]
    assert stored_printer() == "hardware_error"
    assert store.stations[STATION].degraded

    store.apply([_message("telemetry", 2, devices=_printer("online"))], now=120.0)  # type: ignore[list-item]
    assert store.stations[STATION].devices["printer"]["state"] == "online"
    assert stored_printer() == "online"
    assert not store.stations[STATION].degraded
    engine.dispose()
