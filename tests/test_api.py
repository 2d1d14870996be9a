"""The read API (CONTRACT §4) as a client sees it: the JSON, the schemas ``/openapi.json``
documents for it, paging limits and errors. The app runs in-process over ASGI on a SQLite
database that the real ``FleetStore`` filled; no broker (so ``/healthz`` says 503)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, get_args

import httpx
import jsonschema
import pytest
from fastapi import FastAPI

from kioskfleet.controller.app import create_app
from kioskfleet.controller.config import Settings
from kioskfleet.controller.db import migrate
from kioskfleet.controller.retention import apply_retention
from kioskfleet.controller.service import Controller
from kioskfleet.controller.store import FleetStore
from kioskfleet.protocol import decode_agent_message
from kioskfleet.protocol.devices import DeviceState
from tests.conftest import AUTH, TEST_TOKEN

T0 = 1764000000.25  # 2025-11-24T16:00:00.250000Z
PRINTER = {
    "device": "printer",
    "driver": "escpos",
    "state": "online",
    "faults": [],
    "info": {"model": "TM-T88", "serial": "P1"},
    "supplies": {"paper": "full"},
}
CARD_READER = {
    "device": "card_reader",
    "driver": "crt591",
    "state": "online",
    "faults": [],
    "info": {},
    "media": "not_present",
}
PAPER_OUT = {
    **PRINTER,
    "state": "user_error",
    "faults": ["paper_out"],
    "supplies": {"paper": "out"},
}


def _message(kind: str, station: str, **body: Any) -> tuple[str, Any]:
    payload = {"v": 1, "station": station, "session": 7, "seq": 0, "ts": T0, **body}
    return kind, decode_agent_message(kind, station, json.dumps(payload).encode())


def _birth(station: str, district: str, **body: Any) -> tuple[str, Any]:
    return _message(
        "state",
        station,
        online=True,
        district=district,
        site=f"{district} Government Affairs Service Center 1",
        site_type="government_service_center",
        profile="estation-gen2",
        telemetry_interval=10,
        **body,
    )


def fill(engine: Any) -> None:
    """Three stations: one degraded by its printer, one gone offline, one plain online and out
    of service (a technician's flag, not a status)."""
    store = FleetStore(engine)
    store.apply(
        [
            _birth(
                "wx-binhu-gov-01",
                "Binhu",
                versions={"agent": "0.1.0", "catalogue": "2026.11"},
                devices={"printer": PRINTER, "card_reader": CARD_READER},
                required_devices=["printer"],
            ),
            _birth("wx-binhu-gov-02", "Binhu", versions={"agent": "0.1.0"}),
            _birth("wx-liangxi-gov-01", "Liangxi", in_service=False),
        ],
        now=T0,
    )
    status_change = {"type": "device_status", "device": "printer", "status": PAPER_OUT}
    store.apply(
        [
            _message("events", "wx-binhu-gov-01", seq=1, events=[status_change]),
            _message("state", "wx-binhu-gov-02", online=False),
        ],
        now=T0 + 10.25,
    )


@pytest.fixture
def app(tmp_path: Path) -> Iterator[FastAPI]:
    settings = Settings(
        bootstrap_token=TEST_TOKEN, db_url=f"sqlite:///{tmp_path / 'controller.db'}"
    )
    controller = Controller(settings)  # never started: no broker, no ingest
    migrate(controller.engine)
    fill(controller.engine)
    yield create_app(settings, controller)
    controller.engine.dispose()


def get(app: FastAPI, path: str, **params: Any) -> httpx.Response:
    """One GET through the whole ASGI app."""

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, headers=AUTH, base_url="http://controller"
        ) as client:
            return await client.get(path, params=params)

    return asyncio.run(run())


def documented(openapi: dict[str, Any], path: str, status: int) -> dict[str, Any]:
    """The JSON schema ``/openapi.json`` gives for a GET's response with ``status``, made
    self-contained (its ``#/components/...`` references resolve inside it)."""
    response = openapi["paths"][path]["get"]["responses"][str(status)]
    schema: dict[str, Any] = response["content"]["application/json"]["schema"]
    return {**schema, "components": openapi["components"]}


def check(openapi: dict[str, Any], path: str, response: httpx.Response) -> None:
    """The response validates against what the API documents for its path and status."""
    schema = documented(openapi, path, response.status_code)
    jsonschema.Draft202012Validator(schema).validate(response.json())


def test_every_read_route_documents_a_typed_200_response() -> None:
    app = create_app(Settings(bootstrap_token=TEST_TOKEN, db_url="sqlite:///unused.db"))
    openapi = app.openapi()
    components = openapi["components"]["schemas"]
    checked = []
    for path, operations in openapi["paths"].items():
        if "get" not in operations or not (path.startswith("/api/") or path == "/healthz"):
            continue
        content = operations["get"]["responses"]["200"]["content"]
        if path == "/api/events":  # the console's live stream: server-sent events, not JSON
            assert [*content] == ["text/event-stream"]
            continue
        schema = content["application/json"]["schema"]
        # a named model with its keys: not {} nor a free-form {"type": "object"}
        ref = schema.get("$ref", "")
        assert ref.startswith("#/components/schemas/"), f"GET {path}: 200 is {schema}"
        target = components[ref.removeprefix("#/components/schemas/")]
        assert target["type"] == "object" and target["properties"], f"GET {path}: {target}"
        assert target["required"], f"GET {path}: {ref} promises no key"
        checked.append(path)
    assert {
        "/healthz",
        "/api/fleet/summary",
        "/api/stations",
        "/api/stations/{station_id}",
        "/api/stations/{station_id}/telemetry",
        "/api/stations/{station_id}/telemetry/hourly",
    } <= set(checked)
    # the station's devices are documented by the protocol's own model, not as free dicts
    devices = components["StationDetail"]["properties"]["devices"]
    assert [*devices["patternProperties"].values()] == [
        {"$ref": "#/components/schemas/DeviceStatus"}
    ]
    for path in ("", "/telemetry", "/telemetry/hourly"):
        errors = openapi["paths"]["/api/stations/{station_id}" + path]["get"]["responses"]
        schema = errors["404"]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith("ErrorDetail")
    # a point's devices are documented by the protocol's state vocabulary
    point = components["TelemetryPoint"]["properties"]["devices"]
    assert [schema["enum"] for schema in point["patternProperties"].values()] == [
        list(get_args(DeviceState))
    ]
    health = openapi["paths"]["/healthz"]["get"]["responses"]
    assert health["503"]["content"]["application/json"]["schema"]["$ref"].endswith("Unhealthy")


def test_responses_validate_against_the_documented_schemas(app: FastAPI) -> None:
    openapi = get(app, "/openapi.json").json()
    summary = get(app, "/api/fleet/summary")
    listed = get(app, "/api/stations")
    assert summary.status_code == listed.status_code == 200
    check(openapi, "/api/fleet/summary", summary)
    check(openapi, "/api/stations", listed)
    assert listed.json()["total"] == 3
    for item in listed.json()["items"]:
        detail = get(app, f"/api/stations/{item['id']}")
        assert detail.status_code == 200
        check(openapi, "/api/stations/{station_id}", detail)
    unhealthy = get(app, "/healthz")  # the controller was never started: no broker
    assert unhealthy.status_code == 503
    check(openapi, "/healthz", unhealthy)
    missing = get(app, "/api/stations/wx-nowhere-01")
    assert missing.status_code == 404
    check(openapi, "/api/stations/{station_id}", missing)
    refused = get(app, "/api/stations", limit=0)
    assert refused.status_code == 422
    check(openapi, "/api/stations", refused)

    # and the check can fail: a list without its total is not what is documented
    broken = {"items": listed.json()["items"]}
    with pytest.raises(jsonschema.ValidationError, match="'total' is a required property"):
        jsonschema.validate(broken, documented(openapi, "/api/stations", 200))


def test_the_json_on_the_wire(app: FastAPI) -> None:
    assert get(app, "/api/fleet/summary").json() == {
        "stations": 3,
        "online": 1,
        "degraded": 1,
        "silent": 0,
        "offline": 1,
        # the printer out of paper (fill): the writer opened its alert
        "open_alerts": 1,
        "ingested": {"telemetry": 0, "events": 1},
        "rejected": 0,
        "districts": {
            "Binhu": {"stations": 2, "online": 0, "degraded": 1, "silent": 0, "offline": 1},
            "Liangxi": {"stations": 1, "online": 1, "degraded": 0, "silent": 0, "offline": 0},
        },
    }
    item = {
        "id": "wx-binhu-gov-01",
        "district": "Binhu",
        "site": "Binhu Government Affairs Service Center 1",
        "site_type": "government_service_center",
        "profile": "estation-gen2",
        "status": "degraded",
        "status_since": "2025-11-24T16:00:10.500000Z",
        "last_seen": "2025-11-24T16:00:10.500000Z",
        "versions": {"agent": "0.1.0", "catalogue": "2026.11"},
        "telemetry_interval": 10.0,
        "in_service": True,
    }
    page = get(app, "/api/stations", district="Binhu", limit=1).json()
    assert page == {"items": [item], "total": 2}
    offline = get(app, "/api/stations", status="offline").json()["items"]
    assert [(s["id"], s["versions"]) for s in offline] == [
        ("wx-binhu-gov-02", {"agent": "0.1.0", "catalogue": None})
    ]
    out_of_service = get(app, "/api/stations", in_service="false").json()
    assert [(s["id"], s["status"], s["in_service"]) for s in out_of_service["items"]] == [
        ("wx-liangxi-gov-01", "online", False)
    ]
    assert out_of_service["total"] == 1
    in_service = get(app, "/api/stations", in_service="true").json()
    assert [s["id"] for s in in_service["items"]] == ["wx-binhu-gov-01", "wx-binhu-gov-02"]
    assert get(app, "/api/stations/wx-liangxi-gov-01").json()["in_service"] is False

    detail = get(app, "/api/stations/wx-binhu-gov-01").json()
    assert list(detail) == [
        *item,
        "online",
        "session",
        "last_telemetry_at",
        "registered_at",
        "devices",
        "required_devices",
        "history",
        "alerts",
    ]
    assert {key: detail[key] for key in item} == item
    assert detail["online"] is True
    assert detail["session"] == 7
    assert detail["last_telemetry_at"] is None
    assert detail["registered_at"] == "2025-11-24T16:00:00.250000Z"
    # each device as stored: no nulls for what it did not report (the printer's media, its
    # events, which a status change does not carry)
    card_reader = {**CARD_READER, "supplies": {}, "events": []}
    assert detail["devices"] == {"printer": PAPER_OUT, "card_reader": card_reader}
    assert detail["required_devices"] == ["printer"]
    assert [(h["status"], h["at"]) for h in detail["history"]] == [
        ("degraded", "2025-11-24T16:00:10.500000Z"),
        ("online", "2025-11-24T16:00:00.250000Z"),
    ]
    assert set(detail["history"][0]) == {"status", "reason", "session", "at"}
    # its printer out of paper, as the writer decided it
    [alert] = detail["alerts"]
    assert (alert["device"], alert["condition"], alert["severity"], alert["state"]) == (
        "printer",
        "paper_out",
        "critical",
        "open",
    )
    assert alert["opened_at"] == "2025-11-24T16:00:10.500000Z"

    assert get(app, "/healthz").json() == {
        "status": "unavailable",
        "reason": "broker not connected",
    }


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": -1},
        {"limit": 1001},
        {"limit": "ten"},
        {"limit": 1.5},
        {"offset": -1},
        {"offset": "x"},
        {"status": "sleeping"},
        {"in_service": "maybe"},
    ],
)
def test_bad_paging_and_filters_are_refused_with_422(app: FastAPI, params: dict[str, Any]) -> None:
    response = get(app, "/api/stations", **params)
    assert response.status_code == 422
    (name,) = params
    assert [error["loc"] for error in response.json()["detail"]] == [["query", name]]


@pytest.mark.parametrize(
    ("limit", "offset", "ids"), [(1, 0, 1), (1000, 0, 3), (2, 2, 1), (5, 3, 0)]
)
def test_paging_at_its_bounds(app: FastAPI, limit: int, offset: int, ids: int) -> None:
    page = get(app, "/api/stations", limit=limit, offset=offset).json()
    assert page["total"] == 3
    assert len(page["items"]) == ids


def test_an_unknown_station_is_404_with_a_json_body(app: FastAPI) -> None:
    response = get(app, "/api/stations/wx-nowhere-01")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": "no station 'wx-nowhere-01'"}
    too_long = get(app, "/api/stations/" + "x" * 65)
    assert too_long.status_code == 422


# -- a station's telemetry ---------------------------------------------------------------------
NOW = float(int(time.time()))
HOUR = 3600.0


def _telemetry(seq: int, ts: float, cpu: float, printer: str) -> tuple[str, Any]:
    return _message(
        "telemetry",
        "wx-binhu-gov-01",
        seq=seq,
        ts=ts,
        host={"cpu_percent": cpu, "disk_free_mb": 900 + seq},
        devices={"printer": {**PRINTER, "state": printer}, "card_reader": CARD_READER},
    )


@pytest.fixture
def telemetry_app(db_url: str) -> Iterator[FastAPI]:
    """The three stations; wx-binhu-gov-01 reported every minute for the last two hours
    (received at :30 of each minute, the last 30 s ago), and 40 days ago for an hour, which
    retention folded."""
    # "the last hour" is the API's default window, measured from the real clock: take NOW when
    # the data is made, not when the module was imported (minutes earlier in a full run)
    global NOW
    NOW = float(int(time.time()))
    settings = Settings(bootstrap_token=TEST_TOKEN, db_url=db_url)
    controller = Controller(settings)
    migrate(controller.engine)
    fill(controller.engine)
    store = FleetStore(controller.engine)
    for i in range(120):
        received = NOW - 2 * HOUR + 60 * i + 30
        store.apply([_telemetry(100 + i, received - 2, i / 2, "online")], now=received)
    old = NOW - 40 * 86400 - NOW % HOUR  # the start of an hour
    for i in range(6):
        message = _telemetry(10 + i, old + 600 * i, 10.0 * i, "user_error" if i % 3 else "online")
        store.apply([message], now=old + 600 * i + 1)
    assert apply_retention(controller.engine, cutoff=NOW - 30 * 86400) == 6
    yield create_app(settings, controller)
    controller.engine.dispose()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def test_a_station_s_telemetry_in_a_window_oldest_first(telemetry_app: FastAPI) -> None:
    start, end = NOW - 2 * HOUR + 60 * 10 + 30, NOW - 2 * HOUR + 60 * 13 + 30
    page = get(
        telemetry_app,
        "/api/stations/wx-binhu-gov-01/telemetry",
        **{"from": _iso(start), "to": _iso(end)},
    ).json()
    # from ≤ received < to: minutes 10, 11 and 12
    assert page["total"] == 3
    assert page["items"][0] == {
        "received_at": _iso(start),
        "ts": _iso(start - 2),
        "host": {"cpu_percent": 5.0, "disk_free_mb": 1010},
        "devices": {"printer": "online", "card_reader": "online"},
    }
    assert [item["received_at"] for item in page["items"]] == [
        _iso(start + 60 * k) for k in range(3)
    ]
    # another zone, the same instant
    east = datetime.fromtimestamp(start, UTC).astimezone(timezone(timedelta(hours=8)))
    again = get(
        telemetry_app,
        "/api/stations/wx-binhu-gov-01/telemetry",
        **{"from": east.isoformat(), "to": _iso(end)},
    ).json()
    assert again == page


def test_by_default_the_last_hour_and_the_newest_when_limited(telemetry_app: FastAPI) -> None:
    path = "/api/stations/wx-binhu-gov-01/telemetry"
    page = get(telemetry_app, path).json()
    assert page["total"] == 60
    assert page["items"][-1]["received_at"] == _iso(NOW - 30)
    assert page["items"][0]["received_at"] == _iso(NOW - HOUR + 30)
    newest = get(telemetry_app, path, limit=5).json()
    assert newest["total"] == 60
    assert newest["items"] == page["items"][-5:]
    # only `to`: the hour before it
    earlier = get(telemetry_app, path, to=_iso(NOW - HOUR)).json()
    assert earlier["total"] == 60
    assert earlier["items"][0]["received_at"] == _iso(NOW - 2 * HOUR + 30)
    # only `from`: until now
    assert get(telemetry_app, path, **{"from": _iso(NOW - 2 * HOUR)}).json()["total"] == 120
    # a station that sent none
    assert get(telemetry_app, "/api/stations/wx-liangxi-gov-01/telemetry").json() == {
        "items": [],
        "total": 0,
    }


def test_hours_older_than_the_raw_retention(telemetry_app: FastAPI) -> None:
    path = "/api/stations/wx-binhu-gov-01/telemetry/hourly"
    old = NOW - 40 * 86400 - NOW % HOUR
    page = get(telemetry_app, path).json()
    assert page == {
        "items": [
            {
                "hour": _iso(old),
                "samples": 6,
                "host": {
                    "cpu_percent": {"avg": 25.0, "max": 50.0, "n": 6},
                    "disk_free_mb": {"avg": 912.5, "max": 915.0, "n": 6},
                },
                "device_states": {
                    "printer": {"online": 2, "user_error": 4},
                    "card_reader": {"online": 6},
                },
            }
        ],
        "total": 1,
    }
    assert get(telemetry_app, path, **{"from": _iso(old + 1)}).json()["total"] == 0
    assert get(telemetry_app, path, to=_iso(old)).json()["total"] == 0
    assert get(telemetry_app, path, to=_iso(old + 1)).json()["total"] == 1


@pytest.mark.parametrize(
    "params",
    [
        {"from": "yesterday"},
        {"from": "2026-11-30T08:00:00"},  # no zone
        {"to": "1764000000"},  # Unix seconds: ISO 8601 only
        {"to": "1764000000.5"},
        {"from": "2026-13-01T00:00:00Z"},
        {"from": "2026-11-30T08:00:01Z", "to": "2026-11-30T08:00:00Z"},
        {"limit": 0},
        {"limit": 10_001},
        {"limit": "all"},
    ],
)
@pytest.mark.parametrize("path", ["telemetry", "telemetry/hourly"])
def test_bad_telemetry_windows_are_refused_with_422(
    app: FastAPI, path: str, params: dict[str, Any]
) -> None:
    response = get(app, f"/api/stations/wx-binhu-gov-01/{path}", **params)
    assert response.status_code == 422
    name = "from" if len(params) == 2 else next(iter(params))
    assert [error["loc"] for error in response.json()["detail"]] == [["query", name]]


@pytest.mark.parametrize("path", ["telemetry", "telemetry/hourly"])
def test_telemetry_of_an_unknown_station_is_404(app: FastAPI, path: str) -> None:
    response = get(app, f"/api/stations/wx-nowhere-01/{path}")
    assert response.status_code == 404
    assert response.json() == {"detail": "no station 'wx-nowhere-01'"}


def test_telemetry_responses_validate_against_the_documented_schemas(
    telemetry_app: FastAPI,
) -> None:
    openapi = get(telemetry_app, "/openapi.json").json()
    for path in ("telemetry", "telemetry/hourly"):
        documented_path = f"/api/stations/{{station_id}}/{path}"
        found = get(telemetry_app, f"/api/stations/wx-binhu-gov-01/{path}")
        assert found.status_code == 200 and found.json()["total"] > 0
        check(openapi, documented_path, found)
        missing = get(telemetry_app, f"/api/stations/wx-nowhere-01/{path}")
        check(openapi, documented_path, missing)
        refused = get(telemetry_app, f"/api/stations/wx-binhu-gov-01/{path}", limit=0)
        check(openapi, documented_path, refused)
    # the schema knows the device vocabulary: a state outside it does not pass
    body = get(telemetry_app, "/api/stations/wx-binhu-gov-01/telemetry").json()
    body["items"][0]["devices"]["printer"] = "on_fire"
    with pytest.raises(jsonschema.ValidationError):
        schema = documented(openapi, "/api/stations/{station_id}/telemetry", 200)
        jsonschema.Draft202012Validator(schema).validate(body)
