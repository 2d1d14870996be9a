"""Commands through the API (CONTRACT §4) without a broker: the controller is never started,
so nothing is published and every command stays ``pending`` until a reply or its expiry; the
stations and replies are written by the real ``FleetStore``. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from kioskfleet.controller import commands
from kioskfleet.controller.app import create_app
from kioskfleet.controller.config import Settings
from kioskfleet.controller.db import migrate
from kioskfleet.controller.models import Audit, CommandRecord
from kioskfleet.controller.service import Controller
from kioskfleet.controller.store import FleetStore
from tests.conftest import AUTH, TEST_TOKEN, wait_until
from tests.test_api import _birth, _message, check, fill

OFFLINE = "wx-binhu-gov-02"  # gone offline in tests.test_api.fill
ONLINE = "wx-liangxi-gov-01"


@pytest.fixture
def controller(db_url: str) -> Iterator[Controller]:
    controller = Controller(
        Settings(bootstrap_token=TEST_TOKEN, db_url=db_url)
    )  # never started: no broker, no ingest
    migrate(controller.engine)
    fill(controller.engine)
    yield controller
    controller.engine.dispose()


@pytest.fixture
def app(controller: Controller) -> FastAPI:
    return create_app(controller.settings, controller)


def call(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request through the whole ASGI app."""

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, headers=AUTH, base_url="http://controller"
        ) as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(run())


def post(app: FastAPI, station: str, body: dict[str, Any]) -> httpx.Response:
    return call(app, "POST", f"/api/stations/{station}/commands", json=body)


def test_a_command_is_stored_pending_with_its_audit_row(
    app: FastAPI, controller: Controller
) -> None:
    before = time.time()
    created = post(app, OFFLINE, {"name": "restart_device", "args": {"device": "printer"}})
    assert created.status_code == 201
    (command_id,) = created.json().values()
    assert created.json() == {"id": command_id}
    got = call(app, "GET", f"/api/stations/{OFFLINE}/commands/{command_id}")
    assert got.status_code == 200
    openapi = call(app, "GET", "/openapi.json").json()
    check(openapi, "/api/stations/{station_id}/commands/{command_id}", got)
    body = got.json()
    assert body["state"] == "pending" and body["reply"] is None and body["sent_at"] is None
    assert (body["id"], body["station"], body["name"]) == (command_id, OFFLINE, "restart_device")
    assert body["args"] == {"device": "printer"} and body["created_by"] == "bootstrap"
    assert body["created_at"].endswith("Z")
    with controller.engine.connect() as conn:
        record = conn.execute(select(CommandRecord.__table__)).one()  # type: ignore[attr-defined]
        audit = conn.execute(select(Audit.__table__)).one()  # type: ignore[attr-defined]
    assert record.expires_at - record.created_at == pytest.approx(300.0)  # the default ttl
    assert before <= record.created_at <= time.time()
    assert (audit.actor, audit.action, audit.target, audit.outcome) == (
        "bootstrap",
        "command.create",
        OFFLINE,
        "accepted",
    )
    assert audit.details == {
        "command": command_id,
        "name": "restart_device",
        "args": {"device": "printer"},
        "ttl_s": 300.0,
    }
    assert audit.at == record.created_at and audit.source  # the client's address


def test_unknown_station_is_404_and_stores_nothing(app: FastAPI, controller: Controller) -> None:
    openapi = call(app, "GET", "/openapi.json").json()
    for response in (
        post(app, "wx-nowhere-01", {"name": "self_test"}),
        call(app, "GET", "/api/stations/wx-nowhere-01/commands"),
    ):
        assert response.status_code == 404
        assert response.json() == {"detail": "no station 'wx-nowhere-01'"}
    created = post(app, OFFLINE, {"name": "self_test"}).json()["id"]
    # a command is found only under its own station
    for path in (
        f"/api/stations/{ONLINE}/commands/{created}",
        f"/api/stations/{OFFLINE}/commands/{'0' * 32}",
    ):
        missing = call(app, "GET", path)
        assert missing.status_code == 404
        check(openapi, "/api/stations/{station_id}/commands/{command_id}", missing)
    with controller.engine.connect() as conn:
        rows = conn.execute(select(Audit.__table__.c.target)).all()  # type: ignore[attr-defined]
    assert [row.target for row in rows] == [OFFLINE]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": "format_disk"},
        {"name": "SELF_TEST"},
        {"name": "self_test", "ttl_s": 0},
        {"name": "self_test", "ttl_s": 0.5},
        {"name": "self_test", "ttl_s": -5},
        {"name": "self_test", "ttl_s": 7 * 24 * 3600 + 1},
        {"name": "self_test", "ttl_s": "soon"},
        {"name": "self_test", "args": ["printer"]},
        {"name": "self_test", "args": {"pad": "x" * 20_000}},
        {"name": "self_test", "to": "everyone"},
    ],
)
def test_bad_commands_are_refused_with_422(
    app: FastAPI, controller: Controller, body: dict[str, Any]
) -> None:
    refused = post(app, OFFLINE, body)
    assert refused.status_code == 422, refused.text
    with controller.engine.connect() as conn:
        stored = conn.execute(select(CommandRecord.__table__)).all()  # type: ignore[attr-defined]
    assert stored == []


@pytest.mark.parametrize("ttl", [1, 7 * 24 * 3600])
def test_ttl_at_its_bounds(app: FastAPI, ttl: int) -> None:
    created = post(app, OFFLINE, {"name": "collect_logs", "ttl_s": ttl})
    assert created.status_code == 201
    body = call(app, "GET", f"/api/stations/{OFFLINE}/commands/{created.json()['id']}").json()
    assert body["name"] == "collect_logs"


def test_the_list_is_newest_first_and_paged(app: FastAPI) -> None:
    ids = [post(app, OFFLINE, {"name": name}).json()["id"] for name in ("rebirth", "self_test")]
    ids.append(post(app, OFFLINE, {"name": "in_service"}).json()["id"])
    post(app, ONLINE, {"name": "self_test"})
    openapi = call(app, "GET", "/openapi.json").json()
    page = call(app, "GET", f"/api/stations/{OFFLINE}/commands")
    check(openapi, "/api/stations/{station_id}/commands", page)
    assert page.json()["total"] == 3
    assert [c["id"] for c in page.json()["items"]] == ids[::-1]
    second = call(app, "GET", f"/api/stations/{OFFLINE}/commands", params={"limit": 1, "offset": 1})
    assert [c["id"] for c in second.json()["items"]] == [ids[1]]
    assert second.json()["total"] == 3
    for bad in ({"limit": 0}, {"limit": 1001}, {"offset": -1}):
        refused = call(app, "GET", f"/api/stations/{OFFLINE}/commands", params=bad)
        assert refused.status_code == 422


def _reply(station: str, seq: int, command_id: str, status: str, **body: Any) -> tuple[str, Any]:
    return _message("reply", station, seq=seq, id=command_id, status=status, **body)


def test_the_state_follows_the_stored_reply(app: FastAPI, controller: Controller) -> None:
    names = ("self_test", "print_test", "install", "restart_agent")
    ids = {name: post(app, OFFLINE, {"name": name}).json()["id"] for name in names}
    store = FleetStore(controller.engine)
    now = time.time()
    store.apply(
        [
            _reply(OFFLINE, 11, ids["self_test"], "ok", result={"printer": {"state": "online"}}),
            _reply(OFFLINE, 12, ids["print_test"], "error", error="paper out"),
            _reply(OFFLINE, 13, ids["install"], "rejected", error="unknown command"),
            _reply(OFFLINE, 14, ids["restart_agent"], "expired", error="too late"),
            # a redelivery answered again from the agent's record: the first reply stands
            _reply(OFFLINE, 15, ids["self_test"], "ok", result={"again": True}),
            # the same id from another station is not this command's reply
            _reply(ONLINE, 16, ids["print_test"], "ok", result={}),
        ],
        now=now,
    )
    openapi = call(app, "GET", "/openapi.json").json()
    got = {}
    for name, command_id in ids.items():
        response = call(app, "GET", f"/api/stations/{OFFLINE}/commands/{command_id}")
        check(openapi, "/api/stations/{station_id}/commands/{command_id}", response)
        got[name] = response.json()
    assert {name: body["state"] for name, body in got.items()} == {
        "self_test": "ok",
        "print_test": "error",
        "install": "error",
        "restart_agent": "expired",
    }
    reply = got["self_test"]["reply"]
    assert reply["status"] == "ok" and reply["result"] == {"printer": {"state": "online"}}
    assert reply["error"] is None and reply["received_at"].endswith("Z")
    assert got["install"]["reply"]["status"] == "rejected"
    assert got["print_test"]["reply"]["error"] == "paper out"
    listed = call(app, "GET", f"/api/stations/{OFFLINE}/commands").json()["items"]
    assert {c["name"]: c["state"] for c in listed} == {n: b["state"] for n, b in got.items()}


def test_a_command_without_a_reply_expires(app: FastAPI) -> None:
    command_id = post(app, OFFLINE, {"name": "self_test", "ttl_s": 1}).json()["id"]
    path = f"/api/stations/{OFFLINE}/commands/{command_id}"
    assert call(app, "GET", path).json()["state"] == "pending"
    wait_until(lambda: call(app, "GET", path).json()["state"] == "expired", timeout=5)


def test_claim_due_sends_once_only_what_is_due_to_a_station_back_online(
    controller: Controller,
) -> None:
    engine = controller.engine
    made = {}
    with engine.begin() as conn:
        for name, ttl in (("self_test", 300.0), ("print_test", 300.0), ("in_service", 1.0)):
            made[name] = commands.create_command(
                conn=conn,
                station=OFFLINE,
                name=name,
                args={},
                ttl_s=ttl,
                actor="test",
                source=None,
                now=time.time(),
            )
        assert (
            commands.create_command(
                conn=conn,
                station="wx-nowhere-01",
                name="self_test",
                args={},
                ttl_s=300.0,
                actor="test",
                source=None,
                now=time.time(),
            )
            is None
        )
    with engine.begin() as conn:
        # offline: nothing is due
        assert commands.claim_due(conn=conn, stations=[OFFLINE, ONLINE], now=time.time()) == []
    # its birth (a new session) brings it back
    FleetStore(engine).apply([_birth(OFFLINE, "Binhu", session=8)], now=time.time())
    later = time.time() + 2  # the 1 s command has expired by then
    with engine.begin() as conn:
        due = commands.claim_due(conn=conn, stations=[OFFLINE], now=later)
    assert [(d.id, d.name, d.station) for d in due] == [
        (made["self_test"], "self_test", OFFLINE),
        (made["print_test"], "print_test", OFFLINE),
    ]
    with engine.begin() as conn:
        assert commands.claim_due(conn=conn, stations=[OFFLINE], now=later) == []
        states = {
            name: commands.get_command(conn=conn, station=OFFLINE, command_id=cid, now=later)
            for name, cid in made.items()
            if cid is not None
        }
    assert {name: c.state for name, c in states.items() if c is not None} == {
        "self_test": "sent",
        "print_test": "sent",
        "in_service": "expired",
    }
    assert states["in_service"] is not None and states["in_service"].sent_at is None
