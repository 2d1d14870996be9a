"""Bulk writes (``BulkRows``) on both databases: on PostgreSQL the rows travel by COPY through a
staging table, so every value must come back exactly as it went in — text with COPY's own
special characters, JSON, NULLs — and a taken key must be skipped, not fail the batch."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, create_mock_engine, exc, func, select

from kioskfleet.controller.db import BulkRows, RawJSON, make_engine, migrate
from kioskfleet.controller.models import EventBatch, Station, StationSession, Telemetry

_EVENTS = EventBatch.__table__  # type: ignore[attr-defined]
_TELEMETRY = Telemetry.__table__  # type: ignore[attr-defined]
_STATION = Station.__table__  # type: ignore[attr-defined]
_SESSION = StationSession.__table__  # type: ignore[attr-defined]

#: text COPY's text format escapes, and text it must not mistake for NULL
AWKWARD = [
    "tab\there",
    "new\nline",
    "carriage\rreturn",
    "back\\slash",
    "\\N",
    "\\.",
    "",
    "quote ' and \"",
    "无锡市民中心 e-Station",
    "emoji 🧾",
]


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    migrate(engine)
    yield engine
    engine.dispose()


def _telemetry(seq: int, host: Any, *, station: str = "wx-a-01") -> dict[str, Any]:
    return {
        "station": station,
        "session": 7,
        "seq": seq,
        "ts": 1.5,
        "received_at": 2.5,
        "host": host,
        "devices": RawJSON('{"printer":{"state":"online"}}'),
        "counters": {},
    }


def _station(station_id: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": station_id,
        "status": "online",
        "online": True,
        "degraded": False,
        "session": 1,
        "telemetry_interval": 10.0,
        "last_seen": None,
        "last_telemetry_at": None,
        "silent_deadline": None,
        "status_since": 0.0,
        "registered_at": 0.0,
        "devices": {},
        "required_devices": None,
        "district": None,
        "site": None,
        "site_type": None,
        "profile": None,
        "agent_version": None,
        "catalogue_version": None,
    }
    row.update(values)
    return row


def _events(seq: int, note: Any, *, station: str = "wx-a-01") -> dict[str, Any]:
    return {
        "station": station,
        "session": 7,
        "seq": seq,
        "ts": 1.5,
        "received_at": 2.5,
        "events": [{"type": "note", "note": note}],
    }


def _notes(engine: Engine) -> list[tuple[str, int, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(_EVENTS.c.station, _EVENTS.c.seq, _EVENTS.c.events).order_by(_EVENTS.c.id)
        ).all()
    return [(station, seq, events[0]["note"]) for station, seq, events in rows]


def test_insert_ignore_skips_taken_keys_and_keeps_the_first(engine: Engine) -> None:
    bulk = BulkRows(engine)
    with engine.begin() as conn:
        bulk.insert_ignore(conn, _EVENTS, [_events(1, "first")])
    with engine.begin() as conn:
        bulk.insert_ignore(
            conn, _EVENTS, [_events(1, "again"), _events(2, "two"), _events(2, "two again")]
        )
    assert _notes(engine) == [("wx-a-01", 1, "first"), ("wx-a-01", 2, "two")]


def test_telemetry_is_kept_unique_by_its_key_on_sqlite_only(engine: Engine) -> None:
    """On PostgreSQL telemetry is partitioned and has no unique key (decision 24): the rows
    go straight in, and the seq ledgers alone keep a redelivery out (tests/test_retention.py)."""
    bulk = BulkRows(engine)
    with engine.begin() as conn:
        bulk.insert_ignore(conn, _TELEMETRY, [_telemetry(1, {"first": True})])
    with engine.begin() as conn:
        bulk.insert_ignore(conn, _TELEMETRY, [_telemetry(1, {"first": False})])
    with engine.connect() as conn:
        hosts = conn.execute(select(_TELEMETRY.c.host).order_by(_TELEMETRY.c.id)).scalars()
        stored = list(hosts)
    if engine.dialect.name == "sqlite":
        assert stored == [{"first": True}]
    else:
        assert stored == [{"first": True}, {"first": False}]


def test_staging_is_empty_for_the_next_transaction(engine: Engine) -> None:
    """A batch must not carry the previous batch's rows (nor a rolled-back one's)."""
    bulk = BulkRows(engine)
    with engine.begin() as conn:
        bulk.insert_ignore(conn, _EVENTS, [_events(1, 1), _events(2, 2)])
    with pytest.raises(RuntimeError), engine.begin() as conn:
        bulk.insert_ignore(conn, _EVENTS, [_events(3, 3)])
        raise RuntimeError("the batch fails after staging")
    with engine.begin() as conn:
        bulk.insert_ignore(conn, _EVENTS, [_events(4, 4, station="wx-b-02")])
    assert _notes(engine) == [("wx-a-01", 1, 1), ("wx-a-01", 2, 2), ("wx-b-02", 4, 4)]


def test_update_by_one_key_with_nulls_booleans_and_json(engine: Engine) -> None:
    bulk = BulkRows(engine)
    with engine.begin() as conn:
        conn.execute(_STATION.insert(), [_station("wx-a-01"), _station("wx-b-02")])
    with engine.begin() as conn:
        bulk.update(
            conn,
            _STATION,
            ("id",),
            [
                _station(
                    "wx-a-01",
                    online=False,
                    status="offline",
                    last_seen=12.25,
                    devices={"printer": {"state": "paper_out", "faults": ["paper_out"]}},
                    required_devices=["printer"],
                    site=AWKWARD[0],
                ),
                _station("wx-b-02", degraded=True, devices=RawJSON('{"cash":{"state":"jam"}}')),
            ],
        )
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(_STATION))}
    a, b = rows["wx-a-01"], rows["wx-b-02"]
    assert (a.online, a.status, a.last_seen, a.site) == (False, "offline", 12.25, "tab\there")
    assert a.devices == {"printer": {"state": "paper_out", "faults": ["paper_out"]}}
    assert a.required_devices == ["printer"] and a.last_telemetry_at is None
    assert (b.degraded, b.devices, b.required_devices) == (True, {"cash": {"state": "jam"}}, None)


def test_update_by_a_composite_key_touches_only_its_rows(engine: Engine) -> None:
    bulk = BulkRows(engine)
    ledgers: list[dict[str, Any]] = [
        {"station": s, "session": n, "watermark": 0, "above": [], "updated_at": 0.0}
        for s in ("wx-a-01", "wx-b-02")
        for n in (1, 2)
    ]
    with engine.begin() as conn:
        conn.execute(_SESSION.insert(), ledgers)
    with engine.begin() as conn:
        bulk.update(
            conn,
            _SESSION,
            ("station", "session"),
            [
                {
                    "station": "wx-a-01",
                    "session": 2,
                    "watermark": 9,
                    "above": [11, 12],
                    "updated_at": 5.0,
                }
            ],
        )
    with engine.connect() as conn:
        got = {
            (r.station, r.session): (r.watermark, r.above) for r in conn.execute(select(_SESSION))
        }
    assert got == {
        ("wx-a-01", 1): (0, []),
        ("wx-a-01", 2): (9, [11, 12]),
        ("wx-b-02", 1): (0, []),
        ("wx-b-02", 2): (0, []),
    }


def test_awkward_text_survives_the_trip(engine: Engine) -> None:
    bulk = BulkRows(engine)
    rows = [
        _telemetry(seq, {"note": text}) | {"devices": RawJSON(json.dumps({"d": text}))}
        for seq, text in enumerate(AWKWARD, start=1)
    ]
    with engine.begin() as conn:
        bulk.insert_ignore(conn, _TELEMETRY, rows)
        conn.execute(_STATION.insert(), [_station(f"wx-s-{i:02d}") for i in range(len(AWKWARD))])
    with engine.begin() as conn:
        bulk.update(
            conn,
            _STATION,
            ("id",),
            [_station(f"wx-s-{i:02d}", site=text) for i, text in enumerate(AWKWARD)],
        )
    with engine.connect() as conn:
        stored = conn.execute(
            select(_TELEMETRY.c.host, _TELEMETRY.c.devices).order_by(_TELEMETRY.c.seq)
        ).all()
        sites = conn.execute(select(_STATION.c.site).order_by(_STATION.c.id)).scalars().all()
    assert [(h["note"], d["d"]) for h, d in stored] == [(t, t) for t in AWKWARD]
    assert sites == AWKWARD


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    texts=st.lists(
        st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40),
        min_size=1,
        max_size=8,
    )
)
def test_any_text_survives_the_trip(engine: Engine, texts: list[str]) -> None:
    bulk = BulkRows(engine)
    with engine.begin() as conn:
        conn.execute(_TELEMETRY.delete())
        bulk.insert_ignore(
            conn,
            _TELEMETRY,
            [_telemetry(seq, {"t": text}, station="wx-h-01") for seq, text in enumerate(texts)],
        )
    with engine.connect() as conn:
        hosts = conn.execute(select(_TELEMETRY.c.host).order_by(_TELEMETRY.c.seq)).scalars().all()
    assert [h["t"] for h in hosts] == texts


def test_an_unknown_dialect_is_refused() -> None:
    engine = create_mock_engine("mysql://", executor=lambda *args, **kwargs: None)
    with pytest.raises(ValueError, match="mysql"):
        BulkRows(engine)  # type: ignore[arg-type]


def test_insert_writes_json_once_and_refuses_a_taken_key(engine: Engine) -> None:
    bulk = BulkRows(engine)
    with engine.begin() as conn:
        bulk.insert(
            conn,
            _STATION,
            [
                _station("wx-a-01", devices=RawJSON('{"printer":{"state":"online"}}')),
                _station("wx-b-02", devices={"cash": {"state": "jam"}}, required_devices=["cash"]),
            ],
        )
    with engine.connect() as conn:
        rows = {r.id: (r.devices, r.required_devices) for r in conn.execute(select(_STATION))}
    assert rows == {
        "wx-a-01": ({"printer": {"state": "online"}}, None),
        "wx-b-02": ({"cash": {"state": "jam"}}, ["cash"]),
    }
    with pytest.raises(exc.IntegrityError), engine.begin() as conn:
        bulk.insert(conn, _STATION, [_station("wx-c-03"), _station("wx-a-01")])
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(_STATION)).scalar_one() == 2
