"""The ingest writer's transaction: a failed commit leaves memory as it was, so the same batch
can be applied again and is stored once — never acked as a duplicate of itself."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, exc, func, select
from sqlmodel import create_engine

from kioskfleet.controller.db import make_engine, migrate
from kioskfleet.controller.models import (
    Counter,
    EventBatch,
    Station,
    StationHistory,
    StationSession,
    Telemetry,
)
from kioskfleet.controller.store import FleetStore
from kioskfleet.protocol import decode_agent_message
from kioskfleet.protocol.messages import decode_telemetry_record

STATION = "wx-xinwu-bank-02"


def _in(session: int, kind: str, seq: int, **body: object) -> tuple[str, object]:
    """A message decoded as the writer decodes it (telemetry into plain dicts)."""
    payload = {"v": 1, "station": STATION, "session": session, "seq": seq, "ts": 1.0, **body}
    raw = json.dumps(payload).encode()
    if kind == "telemetry":
        return kind, decode_telemetry_record(STATION, raw)
    return kind, decode_agent_message(kind, STATION, raw)


def _birth_of(session: int, **body: object) -> tuple[str, object]:
    fields: dict[str, object] = {
        "online": True,
        "district": "Xinwu",
        "site": "Xinwu bank branch 2",
        "site_type": "bank_agent_branch",
        "profile": "bank-agent-gen1",
        "telemetry_interval": 10,
        **body,
    }
    return _in(session, "state", 0, **fields)


def _death_of(session: int) -> tuple[str, object]:
    return _in(session, "state", 0, online=False)


def _message(kind: str, seq: int, **body: object) -> tuple[str, object]:
    return _in(5, kind, seq, **body)


def _birth(**body: object) -> tuple[str, object]:
    return _birth_of(5, **body)


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


def _lose_the_next_commit(engine: Engine, *, committed: bool) -> None:
    """Make the next COMMIT raise: after it went through (the answer was lost on the way back)
    when ``committed``, else before (nothing stored). A SQLAlchemy event, not our code."""
    fired: list[bool] = []

    def on_commit(conn: Connection) -> None:
        if fired:
            return
        fired.append(True)
        if committed:
            conn.connection.dbapi_connection.commit()  # type: ignore[union-attr]
        raise ConnectionResetError("the connection dropped around COMMIT")

    event.listen(engine, "commit", on_commit)


def _rows(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            table.__name__: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (Station, StationSession, StationHistory, Telemetry, EventBatch)
        }


@pytest.mark.parametrize("committed", [True, False], ids=["commit-went-through", "commit-failed"])
def test_a_batch_retried_after_a_lost_commit_answer_is_stored_exactly_once(
    db_url: str, committed: bool
) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    store = FleetStore(engine)
    event_ = {"type": "device_status", "device": "printer", "status": _printer("online")["printer"]}
    first = [  # registers the station and opens its session
        _birth(devices=_printer("online")),
        _message("telemetry", 1, host={"cpu_percent": 3.0}),
        _message("telemetry", 2, host={"cpu_percent": 3.0}),
        _message("events", 3, events=[event_]),
    ]
    second = [  # a known station, a session with a row: the ledger is updated
        _message("telemetry", 4, host={"cpu_percent": 4.0}),
        _message("telemetry", 5, host={"cpu_percent": 4.0}),
        _message("events", 6, events=[event_]),
    ]
    for batch, now in ((first, 100.0), (second, 110.0)):
        _lose_the_next_commit(engine, committed=committed)
        with pytest.raises(ConnectionResetError):
            store.apply(batch, now=now)  # type: ignore[arg-type]
        out = store.apply(batch, now=now + 1)  # type: ignore[arg-type]
        if committed:
            assert out.duplicates == 3 and not out.stored
        else:
            assert out.duplicates == 0 and out.stored == {"telemetry": 2, "events": 1}
        assert out.acks == {(STATION, 5): int(now / 10 - 10) * 3 + 3}
        assert store.apply(batch, now=now + 2).duplicates == 3  # type: ignore[arg-type]
    assert _rows(engine) == {
        "Station": 1,
        "StationSession": 1,
        "StationHistory": 1,
        "Telemetry": 4,
        "EventBatch": 2,
    }
    with engine.connect() as conn:
        counted = dict(conn.execute(select(Counter.name, Counter.value)).all())  # type: ignore[call-overload]
        assert (counted["ingested_telemetry"], counted["ingested_events"]) == (4, 2)
        ledger = conn.execute(select(StationSession)).one()
        assert (ledger.watermark, ledger.above) == (6, [])
        station = conn.execute(select(Station)).one()
        assert station.district == "Xinwu" and station.last_telemetry_at in (110.0, 111.0)
    # a restarted controller agrees
    assert FleetStore(engine).apply(second, now=200.0).duplicates == 3  # type: ignore[arg-type]
    engine.dispose()


def _printer(state: str) -> dict[str, object]:
    return {"printer": {"device": "printer", "driver": "escpos", "state": state, "faults": []}}


def test_the_devices_picture_follows_every_message_that_sets_it(tmp_path: Path) -> None:
    """Telemetry's devices, then a new birth's, then telemetry's again (the same text as the first):
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

    # a new session's birth (the same session's again changes nothing: idempotent by
    # (session, online))
    store.apply([_birth_of(6, devices=_printer("hardware_error"))], now=110.0)  # type: ignore[list-item]
    assert stored_printer() == "hardware_error"
    assert store.stations[STATION].degraded

    store.apply([_in(6, "telemetry", 2, devices=_printer("online"))], now=120.0)  # type: ignore[list-item]
    assert store.stations[STATION].devices["printer"]["state"] == "online"
    assert stored_printer() == "online"
    assert not store.stations[STATION].degraded
    engine.dispose()


def _device(state: str, info: dict[str, object] | None = None) -> dict[str, object]:
    status: dict[str, object] = {"device": "printer", "driver": "escpos", "state": state}
    status["faults"] = []
    if info is not None:
        status["info"] = info
    return {"printer": status}


def test_lean_telemetry_keeps_the_info_of_the_birth_or_the_last_event_that_carried_it(
    tmp_path: Path,
) -> None:
    """CONTRACT §3: in telemetry an absent ``info`` means unchanged; the picture keeps the
    one the birth (or a later ``device_status`` event, or telemetry that carried one) gave."""
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    store = FleetStore(engine)
    born = {"model": "SNBC BT-T080", "serial": "SN1", "firmware": "1.0"}

    def stored() -> tuple[object, object]:
        with engine.connect() as conn:
            devices = conn.execute(select(Station.devices)).scalar_one()  # type: ignore[call-overload]
        printer = devices["printer"]
        return printer["state"], printer.get("info")

    store.apply([_birth(devices=_device("online", born))], now=100.0)  # type: ignore[list-item]
    store.apply([_message("telemetry", seq, devices=_device("online")) for seq in (1, 2)], 101.0)  # type: ignore[misc]
    assert stored() == ("online", born)
    assert store.stations[STATION].devices["printer"]["info"] == born
    # the state moves, the info stays; the same lean text again in the next batch too
    store.apply([_message("telemetry", 3, devices=_device("user_error"))], now=102.0)  # type: ignore[list-item]
    store.apply([_message("telemetry", 4, devices=_device("user_error"))], now=103.0)  # type: ignore[list-item]
    assert stored() == ("user_error", born)

    # a device_status event with new firmware: the picture takes it, lean telemetry keeps it
    flashed = {**born, "firmware": "1.1"}
    event = {
        "type": "device_status",
        "device": "printer",
        "status": _device("online", flashed)["printer"],
    }
    store.apply([_message("events", 5, events=[event])], now=104.0)  # type: ignore[list-item]
    store.apply([_message("telemetry", 6, devices=_device("online"))], now=105.0)  # type: ignore[list-item]
    assert stored() == ("online", flashed)
    # an event without info changes the state only
    bare_event = {
        "type": "device_status",
        "device": "printer",
        "status": _device("busy")["printer"],
    }
    store.apply([_message("events", 7, events=[bare_event])], now=106.0)  # type: ignore[list-item]
    assert stored() == ("busy", flashed)
    # telemetry that carries info sets it
    again = {**born, "serial": "SN2"}
    store.apply([_message("telemetry", 8, devices=_device("online", again))], now=107.0)  # type: ignore[list-item]
    store.apply([_message("telemetry", 9, devices=_device("online"))], now=108.0)  # type: ignore[list-item]
    assert stored() == ("online", again)
    # a restarted controller keeps the picture it stored
    restarted = FleetStore(engine)
    restarted.apply([_message("telemetry", 10, devices=_device("online"))], now=109.0)  # type: ignore[list-item]
    assert restarted.stations[STATION].devices["printer"]["info"] == again
    # the telemetry rows keep what was sent: lean
    with engine.connect() as conn:
        rows = conn.execute(select(Telemetry.devices).order_by(Telemetry.seq)).scalars().all()  # type: ignore[arg-type]
    assert "info" not in rows[0]["printer"] and rows[-3]["printer"]["info"] == again
    engine.dispose()


def test_telemetry_decoded_into_models_or_plain_dicts_is_stored_alike(tmp_path: Path) -> None:
    """The writer decodes telemetry into plain dicts; models (what other callers pass) must
    leave the same rows and the same picture."""
    sent = [
        {"host": {"cpu_percent": 3.5, "temperature_c": None}, "counters": {"commands": 2}},
        {"devices": _device("online", {"model": "M", "serial": "S"})},
        {"devices": _device("online")},  # lean: info left out
        {"devices": _device("online")},  # the same again: its text is reused
        {
            "devices": {
                "printer": {**_device("user_error")["printer"], "supplies": {"paper": "out"}},
                "id_reader": {
                    "device": "id_reader",
                    "driver": "ga467",
                    "state": "online",
                    "faults": ["read_error"],
                    "media": "present",
                    "ignored": "an unknown key",
                },
            }
        },
    ]
    stored = []
    for decode in (decode_agent_message, None):
        engine = make_engine(f"sqlite:///{tmp_path / f'{decode is None}.db'}")
        migrate(engine)
        store = FleetStore(engine)
        store.apply([_birth(devices=_device("online", {"model": "B"}))], now=100.0)  # type: ignore[list-item]
        for seq, body in enumerate(sent, start=1):
            payload = {"v": 1, "station": STATION, "session": 5, "seq": seq, "ts": 1.0, **body}
            raw = json.dumps(payload).encode()
            message = (
                decode_telemetry_record(STATION, raw)
                if decode is None
                else decode("telemetry", STATION, raw)
            )
            store.apply([("telemetry", message)], now=100.0 + seq)
        with engine.connect() as conn:
            columns = (Telemetry.host, Telemetry.devices, Telemetry.counters)
            rows = conn.execute(select(*columns).order_by(Telemetry.seq)).all()  # type: ignore[call-overload]
            picture = conn.execute(select(Station.devices)).scalar_one()  # type: ignore[call-overload]
        stored.append(([tuple(row) for row in rows], picture, store.stations[STATION].devices))
        engine.dispose()
    assert stored[0] == stored[1]
    rows, picture, _ = stored[1]
    assert rows[0][0] == {"cpu_percent": 3.5, "temperature_c": None}
    assert "info" not in rows[2][1]["printer"] and "ignored" not in rows[4][1]["id_reader"]
    assert picture["printer"]["info"] == {"model": "M", "serial": "S"}


# -- state is idempotent by (session, online); a backlog moves nothing but its rows -----------
def _fresh(tmp_path: Path) -> FleetStore:
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    return FleetStore(engine)


def _history(store: FleetStore) -> list[tuple[str, str]]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(StationHistory.status, StationHistory.reason).order_by(StationHistory.id)  # type: ignore[arg-type]
        ).all()
    return [(status, reason) for status, reason in rows]


def test_a_retained_birth_delivered_again_does_not_revive_a_silent_station(
    tmp_path: Path,
) -> None:
    """What the broker sends on every re-subscription (the retained birth of the current
    session) must change nothing: not liveness, not the devices picture — also after a
    restart of the controller."""
    store = _fresh(tmp_path)
    birth = _birth_of(7, devices=_printer("online"))
    store.apply([birth, _in(7, "telemetry", 1)], now=100.0)  # type: ignore[list-item]
    store.apply(  # the printer breaks after the birth
        [
            _in(
                7,
                "events",
                2,
                events=[
                    {
                        "type": "device_status",
                        "device": "printer",
                        "status": _printer("hardware_error")["printer"],
                    }
                ],
            )
        ],  # type: ignore[list-item]
        now=105.0,
    )
    assert store.stations[STATION].status == "degraded"
    assert store.sweep(now=131.0) == [(STATION, "degraded", "silent")]
    before = store.stations[STATION].row()
    history = _history(store)

    out = store.apply([birth], now=132.0)  # type: ignore[list-item]
    assert out.changes == [] and not out.rebirth
    assert store.stations[STATION].row() == before
    assert _history(store) == history

    restarted = FleetStore(store.engine)  # a restarted controller gets it once more
    out = restarted.apply([birth], now=140.0)  # type: ignore[list-item]
    assert out.changes == []
    state = restarted.stations[STATION]
    assert (state.status, state.last_seen, state.silent_deadline) == ("silent", 105.0, 130.0)
    assert state.devices["printer"]["state"] == "hardware_error"
    assert _history(restarted) == history
    store.engine.dispose()


def test_a_birth_after_the_death_of_its_session_does_not_revive_the_station(
    tmp_path: Path,
) -> None:
    store = _fresh(tmp_path)
    store.apply([_birth_of(7), _in(7, "telemetry", 1)], now=100.0)  # type: ignore[list-item]
    store.apply([_death_of(7)], now=101.0)  # type: ignore[list-item]
    out = store.apply([_birth_of(7)], now=102.0)  # type: ignore[list-item]
    assert out.changes == []
    assert store.stations[STATION].status == "offline"
    store.engine.dispose()


def test_the_birth_of_a_session_first_seen_in_its_telemetry_is_applied(tmp_path: Path) -> None:
    """A station back in a new session whose birth comes after its telemetry (or only when
    asked for, ``cmd/rebirth``): that birth is the first of its session, and it counts."""
    store = _fresh(tmp_path)
    store.apply([_birth_of(7), _in(7, "telemetry", 1)], now=100.0)  # type: ignore[list-item]
    store.apply([_death_of(7)], now=101.0)  # type: ignore[list-item]
    out = store.apply([_in(8, "telemetry", 1)], now=102.0)  # type: ignore[list-item]
    assert out.rebirth == {STATION} and store.stations[STATION].status == "online"
    restarted = FleetStore(store.engine)
    restarted.apply([_birth_of(8, site="Xinwu bank branch 3", telemetry_interval=30)], now=103.0)  # type: ignore[list-item]
    state = restarted.stations[STATION]
    assert state.description["site"] == "Xinwu bank branch 3"
    assert (state.telemetry_interval, state.silent_deadline) == (30.0, 193.0)
    store.engine.dispose()


_SEQUENCES = [
    # (state messages in arrival order) → (session, online) the station ends in
    ([(7, True)], (7, True)),
    ([(7, True), (7, False)], (7, False)),
    ([(7, False), (7, True)], (7, False)),  # death first (an odd broker), then its birth
    ([(7, True), (8, True), (7, False)], (8, True)),  # a stale will
    ([(8, True), (7, True)], (8, True)),  # a stale birth
    ([(7, True), (7, False), (8, True), (8, False), (9, True)], (9, True)),
]


@pytest.mark.parametrize(("states", "final"), _SEQUENCES)
def test_state_messages_are_idempotent_by_session_and_online(
    tmp_path: Path, states: list[tuple[int, bool]], final: tuple[int, bool]
) -> None:
    """Every state message delivered once, then each once more (a re-subscription, a
    redelivery after a crash): the station ends the same, and nothing is added to its history."""
    store = _fresh(tmp_path)
    messages = [_birth_of(s) if online else _death_of(s) for s, online in states]
    for at, message in enumerate(messages):
        store.apply([message], now=100.0 + at)  # type: ignore[list-item]
    state = store.stations[STATION]
    assert (state.session, state.online) == final
    once = (state.row(), _history(store))
    for at, message in enumerate(messages):
        store.apply([message], now=105.0 + at)  # type: ignore[list-item]
        assert (store.stations[STATION].row(), _history(store)) == once
    store.engine.dispose()


def test_a_backlog_of_an_older_session_is_stored_and_moves_nothing_else(tmp_path: Path) -> None:
    """A kiosk catching up on hours away sends its old session's messages after its new
    birth: they are stored, counted and confirmed, but the station's current picture and
    liveness are those of its current session."""
    store = _fresh(tmp_path)
    store.apply(
        [_birth_of(8, devices=_printer("online")), _in(8, "telemetry", 1)],  # type: ignore[list-item]
        now=100.0,
    )
    before = store.stations[STATION].row()
    broken = _printer("hardware_error")
    backlog = [
        _in(7, "telemetry", 40, devices=broken),
        _in(
            7,
            "events",
            41,
            events=[{"type": "device_status", "device": "printer", "status": broken["printer"]}],
        ),
        _in(7, "reply", 42, id="c1", status="ok", result={}),
    ]
    out = store.apply(backlog, now=110.0)  # type: ignore[arg-type]
    assert out.stored == {"telemetry": 1, "events": 1, "reply": 1}
    assert (STATION, 7) in out.acks
    assert store.stations[STATION].row() == before
    assert store.sweep(now=131.0) == [(STATION, "online", "silent")]
    # still silent: an old session's telemetry is no sign of life now
    store.apply([_in(7, "telemetry", 43)], now=132.0)  # type: ignore[list-item]
    assert store.stations[STATION].status == "silent"
    with store.engine.connect() as conn:
        station = conn.execute(select(Station)).one()
        assert station.last_seen == 100.0 and station.status == "silent"
        assert station.devices["printer"]["state"] == "online"
        stored = conn.execute(select(func.count()).select_from(Telemetry)).scalar_one()
        assert stored == 3
    # the current session's telemetry does bring it back
    store.apply([_in(8, "telemetry", 2)], now=133.0)  # type: ignore[list-item]
    assert store.stations[STATION].status == "online"
    store.engine.dispose()


def test_a_backlog_does_not_bring_an_offline_station_back(tmp_path: Path) -> None:
    store = _fresh(tmp_path)
    store.apply([_birth_of(8), _in(8, "telemetry", 1)], now=100.0)  # type: ignore[list-item]
    store.apply([_death_of(8)], now=101.0)  # type: ignore[list-item]
    before = store.stations[STATION].row()
    out = store.apply([_in(7, "telemetry", 5)], now=102.0)  # type: ignore[list-item]
    assert out.stored == {"telemetry": 1} and not out.rebirth
    assert store.stations[STATION].row() == before
    store.engine.dispose()


# -- in service: a flag beside the status (decision 25) ---------------------------------------
def _service(session: int, seq: int, in_service: bool) -> tuple[str, object]:
    return _in(session, "events", seq, events=[{"type": "service_state", "in_service": in_service}])


def _stored_in_service(store: FleetStore) -> bool:
    """The flag as stored, checked against what a restarted controller reads back."""
    with store.engine.connect() as conn:
        stored = bool(conn.execute(select(Station.in_service)).scalar_one())  # type: ignore[call-overload]
    assert FleetStore(store.engine).stations[STATION].in_service is stored
    assert store.stations[STATION].in_service is stored
    return stored


def test_in_service_follows_births_and_current_session_events(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    store = FleetStore(engine)
    store.apply([_birth_of(8, in_service=False)], now=100.0)  # type: ignore[list-item]
    assert _stored_in_service(store) is False
    assert store.stations[STATION].status == "online"  # status keeps its four values
    store.apply([_service(8, 1, True)], now=101.0)  # type: ignore[list-item]
    assert _stored_in_service(store) is True
    # the retained birth (in_service false) delivered again at a re-subscription is no news
    store.apply([_birth_of(8, in_service=False)], now=102.0)  # type: ignore[list-item]
    assert _stored_in_service(store) is True
    # a backlog of an older session moves nothing
    store.apply([_service(7, 30, False)], now=103.0)  # type: ignore[list-item]
    assert _stored_in_service(store) is True
    # within one batch, in message order
    store.apply([_service(8, 2, False), _service(8, 3, True), _service(8, 4, False)], now=104.0)  # type: ignore[list-item]
    assert _stored_in_service(store) is False
    # a new session's birth without the flag (an older agent) means in service
    store.apply([_birth_of(9)], now=105.0)  # type: ignore[list-item]
    assert _stored_in_service(store) is True
    engine.dispose()


def test_a_birth_overtaken_by_an_event_of_its_session_does_not_undo_it(tmp_path: Path) -> None:
    store = _fresh(tmp_path)
    store.apply([_birth_of(8)], now=100.0)  # type: ignore[list-item]
    # the event of session 9 arrives before the birth of 9: the birth is older news
    store.apply([_service(9, 1, False), _birth_of(9, in_service=True)], now=101.0)  # type: ignore[list-item]
    assert store.stations[STATION].in_service is False
    # a resent older event of the same session does not undo a newer one
    store.apply([_service(9, 3, True), _service(9, 2, False)], now=102.0)  # type: ignore[list-item]
    assert store.stations[STATION].in_service is True
    store.engine.dispose()


def test_a_failed_batch_puts_in_service_back(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    store = FleetStore(engine)
    store.apply([_birth_of(8)], now=100.0)  # type: ignore[list-item]
    batch = [_service(8, 1, False)]
    _lose_the_next_commit(engine, committed=False)
    with pytest.raises(ConnectionResetError):
        store.apply(batch, now=101.0)  # type: ignore[arg-type]
    assert store.stations[STATION].in_service is True
    store.apply(batch, now=102.0)  # type: ignore[arg-type]
    assert _stored_in_service(store) is False
    # the commit went through, its answer was lost: the station is read back as stored
    _lose_the_next_commit(engine, committed=True)
    with pytest.raises(ConnectionResetError):
        store.apply([_service(8, 2, True)], now=103.0)  # type: ignore[list-item]
    assert store.apply([_in(8, "telemetry", 3)], now=104.0).stored == {"telemetry": 1}  # type: ignore[list-item]
    assert _stored_in_service(store) is True
    engine.dispose()


def test_a_birth_published_again_in_its_session_brings_only_new_versions(
    tmp_path: Path,
) -> None:
    """An agent that swapped its catalogue in without a restart says so by publishing its
    birth again in the same session: the versions are news, nothing else is, and an older
    copy of the birth (redelivered) does not take them back."""
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    store = FleetStore(engine)
    first = {"agent": "1.0.0", "catalogue": "2026.11"}
    store.apply([_birth(ts=10.0, versions=first)], now=100.0)
    store.apply([_message("telemetry", 1, host={"cpu_percent": 3.0})], now=105.0)
    before = store.stations[STATION]
    since, history = before.status_since, _history_rows(engine)

    newer = {"agent": "1.0.0", "catalogue": "2026.12"}
    store.apply([_birth(ts=20.0, versions=newer, telemetry_interval=60)], now=110.0)
    state = store.stations[STATION]
    assert state.description["catalogue_version"] == "2026.12"
    # the rest of the birth is not applied again: same interval, same status since
    assert state.telemetry_interval == 10.0 and state.status_since == since
    store.apply([_birth(ts=10.0, versions=first)], now=120.0)  # the older copy, redelivered
    assert store.stations[STATION].description["catalogue_version"] == "2026.12"
    assert _history_rows(engine) == history
    # and it is what the station row says after a restart
    assert FleetStore(engine).stations[STATION].description["catalogue_version"] == "2026.12"
    # a birth of a dead session revives nothing and changes nothing
    store.apply([_death_of(5)], now=130.0)
    store.apply([_birth(ts=30.0, versions={"agent": "1.0.0", "catalogue": "2027.01"})], now=131.0)
    assert store.stations[STATION].description["catalogue_version"] == "2026.12"
    assert not store.stations[STATION].online


def _history_rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(StationHistory.__table__))]  # type: ignore[attr-defined]


# -- a station row written whole, or only its liveness columns --------------------------------
def _stored_row(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(select(Station.__table__)).mappings().one()  # type: ignore[attr-defined]
    return dict(row)


def _expected_row(store: FleetStore) -> dict[str, Any]:
    row = store.stations[STATION].row()
    devices = row["devices"]
    row["devices"] = json.loads(devices) if isinstance(devices, str) else devices
    return row


def test_the_station_row_is_the_writers_picture_after_every_batch(db_url: str) -> None:
    """Most batches move only a station's liveness (the writer writes those columns alone),
    some its picture, status or description too (every column): either way the row on disk is
    the writer's picture, also after a sweep wrote the status behind the writer's back and
    after a failed batch made the writer read the row back."""
    engine = make_engine(db_url)
    migrate(engine)
    store = FleetStore(engine)
    steps: list[tuple[float, list[tuple[str, object]]]] = [
        (100.0, [_birth(), _message("telemetry", 1, devices=_printer("online"))]),
        (110.0, [_message("telemetry", 2, devices=_printer("online"))]),  # liveness only
        (120.0, [_message("telemetry", 3, devices=_printer("hardware_error"))]),  # degraded
        (130.0, [_message("telemetry", 4, devices=_printer("hardware_error"))]),
        (140.0, [_message("telemetry", 5, devices=_printer("online"))]),
        (150.0, [_birth(agent_version="2.0.0"), _message("telemetry", 6)]),  # versions
        (160.0, [_message("telemetry", 7, devices=_printer("online"))]),
    ]
    for now, batch in steps:
        store.apply(batch, now=now)  # type: ignore[arg-type]
        assert _stored_row(engine) == _expected_row(store), now
    # a sweep turns the station silent with an UPDATE of its own; the next telemetry writes
    # the status back with everything else
    assert store.sweep(500.0) == [(STATION, "online", "silent")]
    assert _stored_row(engine)["status"] == "silent"
    store.apply([_message("telemetry", 8, devices=_printer("online"))], now=510.0)  # type: ignore[list-item]
    assert _stored_row(engine) == _expected_row(store)
    assert _stored_row(engine)["status"] == "online"
    # a batch that fails: memory as it was, the row read back; the retry writes it
    _lose_the_next_commit(engine, committed=False)
    batch = [_message("telemetry", 9, devices=_printer("online"))]
    with pytest.raises(ConnectionResetError):
        store.apply(batch, now=520.0)  # type: ignore[arg-type]
    store.apply(batch, now=530.0)  # type: ignore[arg-type]
    assert _stored_row(engine) == _expected_row(store)
    assert _stored_row(engine)["last_seen"] == 530.0
    engine.dispose()
