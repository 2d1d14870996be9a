"""Alerts through the API (CONTRACT §4) as a client sees them: the list and its filters, one
alert with its history, acknowledge and resolve (with their notifications and audit rows, and
the 404 / 409 / 422 cases, races included), the summary's ``open_alerts``, a station's
alerts, ``kioskfleet_alerts`` in ``/metrics``, and the audit log. Alert rows are written the
way the writer writes them (``alertrows.write_transition``); stations by the real
``FleetStore``. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, delete, func, select

from kioskfleet.controller import alertactions
from kioskfleet.controller.alertrows import ALERT, HISTORY, write_transition
from kioskfleet.controller.alerts import lifecycle
from kioskfleet.controller.alerts.config import Routing
from kioskfleet.controller.alerts.model import Alert, Conflict, HistoryEntry, Transition
from kioskfleet.controller.app import create_app
from kioskfleet.controller.config import AlertsSection, Settings
from kioskfleet.controller.db import migrate
from kioskfleet.controller.fleetmetrics import engine_reader
from kioskfleet.controller.models import Audit, Notification
from kioskfleet.controller.notify.config import Alertmanager, ReceiversSettings, Webhook
from kioskfleet.controller.service import Controller
from tests.conftest import AUTH, TEST_TOKEN, acting
from tests.test_api import fill

AUDIT = Audit.__table__  # type: ignore[attr-defined]
NOTIFICATION = Notification.__table__  # type: ignore[attr-defined]

SITE = "Binhu Government Affairs Service Center 1"  # of wx-binhu-gov-01 and -02 (test_api.fill)
T1 = 1_764_000_100.0  # 2025-11-24T16:01:40Z
ALERTS = AlertsSection(
    routing=Routing(teams={"Binhu": ["binhu-tech", "second-line"]}),
    receivers=ReceiversSettings(
        webhooks={
            "binhu-hook": Webhook(url="http://127.0.0.1:9/binhu"),
            "second-hook": Webhook(url="http://127.0.0.1:9/second", format="wecom"),
        },
        alertmanagers={"am": Alertmanager(url="http://127.0.0.1:9093")},
        teams={"binhu-tech": ["binhu-hook"], "second-line": ["second-hook"]},
    ),
)


def make_alert(alert_id: str, **changes: Any) -> Alert:
    base = Alert(
        id=alert_id,
        district="Binhu",
        site=SITE,
        station="wx-binhu-gov-01",
        device="printer",
        condition="paper_out",
        severity="critical",
        state="open",
        opened_at=T1,
        details={"summary": "printer: paper_out (user_error)", "since": T1 - 30, "state": "x"},
    )
    return dataclasses.replace(base, **changes)


def put(engine: Engine, alert: Alert, **extra: Any) -> Alert:
    """Store ``alert`` as the writer opens one (its whole state, whatever it is)."""
    entry = HistoryEntry(alert.id, alert.opened_at, "open", details={"severity": alert.severity})
    with engine.begin() as conn:
        assert write_transition(
            conn, Transition("open", alert, None, entry), alert.opened_at, **extra
        )
    return alert


def writer_resolves(engine: Engine, alert: Alert, at: float) -> None:
    """What the writer does when the alert's condition clears."""
    after = dataclasses.replace(alert, state="resolved", resolved_at=at, resolution="cleared")
    entry = HistoryEntry(alert.id, at, "resolve", details={"resolution": "cleared"})
    with engine.begin() as conn:
        assert write_transition(conn, Transition("resolve", after, alert, entry), at)


def count(engine: Engine, table: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


@pytest.fixture
def controller(db_url: str) -> Iterator[Controller]:
    controller = Controller(
        Settings(bootstrap_token=TEST_TOKEN, db_url=db_url, alerts=ALERTS)
    )  # never started
    migrate(controller.engine)
    fill(controller.engine)
    # the stations' own picture (a printer out of paper) opened an alert in the writer; these
    # tests lay down the alerts they read, so they start from none
    with controller.engine.begin() as conn:
        conn.execute(delete(ALERT))
        conn.execute(delete(HISTORY))
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
            return await client.request(method, path, **acting(app, kwargs))

    return asyncio.run(run())


def check(openapi: dict[str, Any], method: str, path: str, response: httpx.Response) -> None:
    """The response validates against what ``/openapi.json`` documents for it."""
    documented = openapi["paths"][path][method]["responses"][str(response.status_code)]
    schema = documented["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator({**schema, "components": openapi["components"]}).validate(
        response.json()
    )


# -- the list --------------------------------------------------------------------------------


@pytest.fixture
def listed(controller: Controller) -> dict[str, Alert]:
    """Five alerts of every kind: plain, acknowledged, a site incident, resolved, flapping."""
    engine = controller.engine
    a1 = put(engine, make_alert("a1", opened_at=T1 + 100))
    a2 = make_alert(
        "a2",
        device="card_reader",
        condition="card_jammed",
        severity="warning",
        opened_at=T1 + 200,
    )
    put(engine, a2)
    ack = lifecycle.acknowledge(a2, by="wang", now=T1 + 210, note="on my way")
    with engine.begin() as conn:
        assert write_transition(conn, ack, T1 + 210)
    a3 = put(
        engine,
        make_alert(
            "a3",
            station=None,
            device=None,
            condition="site_offline",
            opened_at=T1 + 300,
            stations=("wx-binhu-gov-02", "wx-binhu-gov-03", "wx-binhu-gov-04"),
            details={"summary": "3 kiosks offline", "since": T1 + 270, "from": T1 + 270},
        ),
    )
    a4 = put(
        engine,
        make_alert(
            "a4",
            district="Liangxi",
            site="Liangxi Center",
            station="wx-liangxi-gov-01",
            device=None,
            condition="disk",
            severity="warning",
            opened_at=T1 + 50,
            state="resolved",
            resolved_at=T1 + 90,
            resolution="cleared",
            details={"summary": "disk_pct 95 ≥ 90", "value": 95},
        ),
    )
    a5 = put(
        engine,
        make_alert(
            "a5",
            condition="flapping",
            of="paper_low",
            severity="info",
            opened_at=T1 + 400,
            details={
                "summary": "printer: paper_low flapping",
                "cycles": 4,
                "last_change": T1 + 400,
            },
        ),
    )
    return {a.id: a for a in (a1, dataclasses.replace(ack.alert), a3, a4, a5)}


@pytest.mark.parametrize(
    ("params", "ids"),
    [
        ({}, ["a5", "a3", "a2", "a1", "a4"]),
        ({"state": "active"}, ["a5", "a3", "a2", "a1"]),
        ({"state": "open"}, ["a5", "a3", "a1"]),
        ({"state": "acknowledged"}, ["a2"]),
        ({"state": "resolved"}, ["a4"]),
        ({"district": "Binhu"}, ["a5", "a3", "a2", "a1"]),
        ({"district": "Xinwu"}, []),
        ({"site": SITE, "state": "active"}, ["a5", "a3", "a2", "a1"]),
        ({"station": "wx-binhu-gov-01"}, ["a5", "a2", "a1"]),
        ({"station": "wx-binhu-gov-02"}, []),  # a member of a3, not its station
        ({"severity": "warning"}, ["a2", "a4"]),
        ({"severity": "critical", "state": "open"}, ["a3", "a1"]),
        ({"condition": "site_offline"}, ["a3"]),
        ({"condition": "flapping"}, ["a5"]),
        ({"device": "printer"}, ["a5", "a1"]),
        ({"from": "2025-11-24T16:04:40Z"}, ["a5", "a3", "a2"]),  # T1 + 180
        ({"to": "2025-11-24T16:04:40Z"}, ["a1", "a4"]),
        (
            {"from": "2025-11-25T00:01:40+08:00", "to": "2025-11-24T16:08:20Z"},
            ["a3", "a2", "a1", "a4"],
        ),
        ({"limit": 2}, ["a5", "a3"]),
        ({"limit": 2, "offset": 3}, ["a1", "a4"]),
        ({"offset": 5}, []),
    ],
)
def test_the_list_filters_newest_first(
    app: FastAPI, listed: dict[str, Alert], params: dict[str, Any], ids: list[str]
) -> None:
    response = call(app, "GET", "/api/alerts", params=params)
    assert response.status_code == 200
    body = response.json()
    assert [item["id"] for item in body["items"]] == ids
    unpaged = {k: v for k, v in params.items() if k not in ("limit", "offset")}
    if unpaged == params:
        assert body["total"] == len(ids)
    else:
        assert body["total"] == 5


def test_the_items_on_the_wire(app: FastAPI, listed: dict[str, Alert]) -> None:
    response = call(app, "GET", "/api/alerts")
    openapi = call(app, "GET", "/openapi.json").json()
    check(openapi, "get", "/api/alerts", response)
    items = {item["id"]: item for item in response.json()["items"]}
    assert items["a1"] == {
        "id": "a1",
        "state": "open",
        "severity": "critical",
        "condition": "paper_out",
        "of": None,
        "district": "Binhu",
        "site": SITE,
        "station": "wx-binhu-gov-01",
        "device": "printer",
        "stations": None,
        "opened_at": "2025-11-24T16:03:20Z",
        "acknowledged_at": None,
        "acknowledged_by": None,
        "resolved_at": None,
        "resolution": None,
        "resolved_by": None,
        "suppressed_by": None,
        "team": None,
        "level": 0,
        "details": {
            "summary": "printer: paper_out (user_error)",
            "since": "2025-11-24T16:01:10Z",
            "state": "x",
        },
    }
    assert (items["a2"]["acknowledged_at"], items["a2"]["acknowledged_by"]) == (
        "2025-11-24T16:05:10Z",
        "wang",
    )
    incident = items["a3"]
    assert (incident["station"], incident["device"], incident["condition"]) == (
        None,
        None,
        "site_offline",
    )
    assert incident["stations"] == ["wx-binhu-gov-02", "wx-binhu-gov-03", "wx-binhu-gov-04"]
    assert incident["details"]["since"] == incident["details"]["from"] == "2025-11-24T16:06:10Z"
    resolved = items["a4"]
    assert (resolved["resolved_at"], resolved["resolution"]) == ("2025-11-24T16:03:10Z", "cleared")
    assert resolved["details"] == {"summary": "disk_pct 95 ≥ 90", "since": None, "value": 95}
    assert (items["a5"]["condition"], items["a5"]["of"]) == ("flapping", "paper_low")
    assert items["a5"]["details"]["last_change"] == "2025-11-24T16:08:20Z"


@pytest.mark.parametrize(
    "params",
    [
        {"state": "closed"},
        {"severity": "major"},
        {"limit": 0},
        {"limit": 1001},
        {"offset": -1},
        {"from": "1764000000"},
        {"from": "yesterday"},
        {"to": "2025-11-24T16:00:00"},  # no zone
        {"from": "2025-11-25T00:00:00Z", "to": "2025-11-24T00:00:00Z"},
    ],
)
def test_bad_list_parameters_are_422(app: FastAPI, params: dict[str, Any]) -> None:
    response = call(app, "GET", "/api/alerts", params=params)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "query"
    assert response.json()["detail"][0]["msg"]


def test_one_alert_with_its_history(app: FastAPI, listed: dict[str, Alert]) -> None:
    response = call(app, "GET", "/api/alerts/a2")
    assert response.status_code == 200
    check(call(app, "GET", "/openapi.json").json(), "get", "/api/alerts/{alert_id}", response)
    body = response.json()
    assert body["state"] == "acknowledged"
    assert body["history"] == [
        {
            "at": "2025-11-24T16:05:00Z",
            "action": "open",
            "by": None,
            "note": None,
            "details": {"severity": "warning"},
        },
        {
            "at": "2025-11-24T16:05:10Z",
            "action": "acknowledge",
            "by": "wang",
            "note": "on my way",
            "details": {},
        },
    ]
    missing = call(app, "GET", "/api/alerts/nope")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "no alert 'nope'"}


# -- summary, station detail, metrics ----------------------------------------------------------


def test_open_alerts_in_the_summary_is_the_active_total(
    app: FastAPI, controller: Controller, listed: dict[str, Alert]
) -> None:
    summary = call(app, "GET", "/api/fleet/summary").json()
    active = call(app, "GET", "/api/alerts", params={"state": "active", "limit": 1}).json()
    assert summary["open_alerts"] == active["total"] == 4
    writer_resolves(controller.engine, listed["a1"], T1 + 500)
    summary = call(app, "GET", "/api/fleet/summary").json()
    active = call(app, "GET", "/api/alerts", params={"state": "active"}).json()
    assert summary["open_alerts"] == active["total"] == 3


def test_a_station_lists_its_unresolved_alerts_and_its_site_incident(
    app: FastAPI, controller: Controller, listed: dict[str, Alert]
) -> None:
    openapi = call(app, "GET", "/openapi.json").json()
    own = call(app, "GET", "/api/stations/wx-binhu-gov-01")
    check(openapi, "get", "/api/stations/{station_id}", own)
    assert [a["id"] for a in own.json()["alerts"]] == ["a5", "a2", "a1"]  # not the incident
    member = call(app, "GET", "/api/stations/wx-binhu-gov-02")
    check(openapi, "get", "/api/stations/{station_id}", member)
    assert [a["id"] for a in member.json()["alerts"]] == ["a3"]
    assert member.json()["alerts"][0]["stations"][0] == "wx-binhu-gov-02"
    # a resolved one is not listed
    liangxi = call(app, "GET", "/api/stations/wx-liangxi-gov-01").json()
    assert liangxi["alerts"] == []
    writer_resolves(controller.engine, listed["a3"], T1 + 600)
    assert call(app, "GET", "/api/stations/wx-binhu-gov-02").json()["alerts"] == []


def _alert_samples(app: FastAPI) -> dict[tuple[str, str, str], float]:
    text = call(app, "GET", "/metrics").text
    (family,) = (f for f in text_string_to_metric_families(text) if f.name == "kioskfleet_alerts")
    return {
        (s.labels["district"], s.labels["severity"], s.labels["state"]): s.value
        for s in family.samples
    }


def test_metrics_count_unresolved_alerts_with_zeros_for_the_rest(
    app: FastAPI, controller: Controller, listed: dict[str, Alert]
) -> None:
    # a started controller reads the fleet at scrape; this one is never started
    controller.metrics.watch_fleet(engine_reader(controller.engine, ("Binhu", "Liangxi")))
    samples = _alert_samples(app)
    # every district known × severity × unresolved state
    assert set(samples) == {
        (d, sev, st)
        for d in ("Binhu", "Liangxi")
        for sev in ("critical", "warning", "info")
        for st in ("open", "acknowledged")
    }
    nonzero = {k: v for k, v in samples.items() if v}
    assert nonzero == {
        ("Binhu", "critical", "open"): 2,  # a1 and the incident a3
        ("Binhu", "warning", "acknowledged"): 1,  # a2
        ("Binhu", "info", "open"): 1,  # a5 (the resolved a4 is not counted)
    }
    assert sum(samples.values()) == call(app, "GET", "/api/fleet/summary").json()["open_alerts"]
    writer_resolves(controller.engine, listed["a1"], T1 + 500)
    assert _alert_samples(app)[("Binhu", "critical", "open")] == 1


# -- acknowledge and resolve -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "hooks"),
    [
        (60.0, ["binhu-hook"]),
        # unacknowledged past the critical limit (900 s): it has reached the second line too
        (1000.0, ["binhu-hook", "second-hook"]),
    ],
)
def test_acknowledge_writes_the_row_history_notifications_and_audit_at_once(
    app: FastAPI, controller: Controller, age: float, hooks: list[str]
) -> None:
    engine = controller.engine
    before = time.time()
    opened = before - age
    put(
        engine,
        make_alert("b1", opened_at=opened),
        team="binhu-tech",
        next_escalation_at=opened + 900,
    )
    response = call(app, "POST", "/api/alerts/b1/ack", json={"by": "li", "note": "coming"})
    assert response.status_code == 200
    check(call(app, "GET", "/openapi.json").json(), "post", "/api/alerts/{alert_id}/ack", response)
    body = response.json()
    assert (body["id"], body["state"], body["acknowledged_by"]) == ("b1", "acknowledged", "li")
    assert body["acknowledged_at"].endswith("Z") and body["resolved_at"] is None
    assert [(h["action"], h["by"], h["note"]) for h in body["history"]] == [
        ("open", None, None),
        ("acknowledge", "li", "coming"),
    ]
    with engine.connect() as conn:
        row = conn.execute(select(ALERT).where(ALERT.c.id == "b1")).one()
        notes = conn.execute(
            select(NOTIFICATION.c.receiver, NOTIFICATION.c.kind, NOTIFICATION.c.payload).order_by(
                NOTIFICATION.c.receiver
            )
        ).all()
        (audit,) = conn.execute(select(AUDIT)).all()
    assert before <= row.acknowledged_at <= time.time()
    assert row.next_escalation_at is None  # acknowledged: it escalates no more
    # every Alertmanager, and the webhooks of the teams the alert has reached
    assert [(n.receiver, n.kind) for n in notes] == [
        ("am", "acknowledged"),
        *((hook, "acknowledged") for hook in hooks),
    ]
    hook = next(n.payload for n in notes if n.receiver == "binhu-hook")
    assert (hook["id"], hook["event"], hook["by"], hook["note"]) == (
        "b1",
        "acknowledged",
        "li",
        "coming",
    )
    assert (audit.actor, audit.action, audit.target, audit.outcome) == (
        "li",
        "alert.ack",
        "b1",
        "acknowledged",
    )
    assert audit.source and audit.at == row.acknowledged_at
    assert audit.details == {"from": "open", "to": "acknowledged", "note": "coming"}


@pytest.mark.parametrize("acknowledged_first", [False, True])
def test_resolve_by_a_person(
    app: FastAPI, controller: Controller, acknowledged_first: bool
) -> None:
    put(controller.engine, make_alert("b2"))
    if acknowledged_first:
        assert call(app, "POST", "/api/alerts/b2/ack").status_code == 200
    response = call(app, "POST", "/api/alerts/b2/resolve", json={"by": "zhao", "note": "paper in"})
    assert response.status_code == 200
    body = response.json()
    assert (body["state"], body["resolution"], body["resolved_by"]) == (
        "resolved",
        "by_person",
        "zhao",
    )
    assert body["acknowledged_by"] == ("bootstrap" if acknowledged_first else None)
    assert [h["action"] for h in body["history"]][-1] == "resolve"
    with controller.engine.connect() as conn:
        row = conn.execute(select(ALERT).where(ALERT.c.id == "b2")).one()
        audits = conn.execute(select(AUDIT.c.action, AUDIT.c.actor).order_by(AUDIT.c.id)).all()
    assert row.awaiting_clear  # nothing opens again for it before its condition clears
    assert [tuple(a) for a in audits][-1] == ("alert.resolve", "zhao")
    kinds = [
        n.kind
        for n in controller.engine.connect().execute(
            select(NOTIFICATION.c.kind).where(NOTIFICATION.c.receiver == "binhu-hook")
        )
    ]
    assert kinds[-1] == "resolved"


def test_a_suppressed_alert_is_acknowledged_without_notifications(
    app: FastAPI, controller: Controller
) -> None:
    put(controller.engine, make_alert("b3", suppressed_by="maintenance:wx-binhu-gov-01"))
    assert call(app, "POST", "/api/alerts/b3/ack", json={"by": "li"}).status_code == 200
    assert count(controller.engine, NOTIFICATION) == 0
    assert count(controller.engine, AUDIT, AUDIT.c.action == "alert.ack") == 1


@pytest.mark.parametrize(
    ("state", "action", "message"),
    [
        ("acknowledged", "ack", "alert c1 is acknowledged: only an open alert is acknowledged"),
        ("resolved", "ack", "alert c1 is resolved: only an open alert is acknowledged"),
        ("resolved", "resolve", "alert c1 is already resolved"),
    ],
)
def test_what_the_state_does_not_allow_is_409_and_audited(
    app: FastAPI, controller: Controller, state: str, action: str, message: str
) -> None:
    engine = controller.engine
    alert = make_alert("c1")
    if state == "acknowledged":
        alert = dataclasses.replace(
            alert, state="acknowledged", acknowledged_at=T1 + 1, acknowledged_by="x"
        )
    elif state == "resolved":
        alert = dataclasses.replace(
            alert, state="resolved", resolved_at=T1 + 1, resolution="cleared"
        )
    put(engine, alert)
    history = count(engine, HISTORY)
    response = call(app, "POST", f"/api/alerts/c1/{action}", json={"by": "qian"})
    assert response.status_code == 409
    check(
        call(app, "GET", "/openapi.json").json(),
        "post",
        f"/api/alerts/{{alert_id}}/{action}",
        response,
    )
    assert response.json() == {"detail": message}
    with engine.connect() as conn:
        row = conn.execute(select(ALERT).where(ALERT.c.id == "c1")).one()
        (audit,) = conn.execute(select(AUDIT)).all()
    assert row.state == state  # unchanged
    assert count(engine, HISTORY) == history and count(engine, NOTIFICATION) == 0
    assert (audit.actor, audit.action, audit.target, audit.outcome) == (
        "qian",
        f"alert.{action}",
        "c1",
        "conflict",
    )
    assert audit.details["reason"] == message


@pytest.mark.parametrize("action", ["ack", "resolve"])
def test_an_unknown_alert_is_404_and_audits_nothing(
    app: FastAPI, controller: Controller, action: str
) -> None:
    response = call(app, "POST", f"/api/alerts/{'0' * 32}/{action}", json={"by": "qian"})
    assert response.status_code == 404
    assert response.json() == {"detail": f"no alert '{'0' * 32}'"}
    assert count(controller.engine, AUDIT) == 0
    assert call(app, "POST", f"/api/alerts/{'x' * 65}/{action}").status_code == 422


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"by": ""}, ["body", "by"]),
        ({"by": 5}, ["body", "by"]),
        ({"by": "x" * 201}, ["body", "by"]),
        ({"note": "x" * 2001}, ["body", "note"]),
        ({"note": 3}, ["body", "note"]),
        ({"by": "li", "when": "now"}, ["body", "when"]),
        (["li"], ["body"]),
        ("li", ["body"]),
    ],
)
@pytest.mark.parametrize("action", ["ack", "resolve"])
def test_a_bad_body_is_422_and_changes_nothing(
    app: FastAPI, controller: Controller, action: str, body: Any, loc: list[str]
) -> None:
    put(controller.engine, make_alert("d1"))
    response = call(app, "POST", f"/api/alerts/d1/{action}", json=body)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == loc and error["msg"]
    assert call(app, "GET", "/api/alerts/d1").json()["state"] == "open"
    assert count(controller.engine, AUDIT) == 0


def test_a_body_that_is_not_json_is_422(app: FastAPI, controller: Controller) -> None:
    put(controller.engine, make_alert("d2"))
    response = call(
        app,
        "POST",
        "/api/alerts/d2/ack",
        content=b"{by: li",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


# -- races -------------------------------------------------------------------------------------


def test_the_writer_resolving_between_read_and_write_makes_the_ack_a_conflict(
    controller: Controller,
) -> None:
    engine = controller.engine
    put(engine, make_alert("r1"))
    receivers, routing = ALERTS.receivers, ALERTS.routing
    # the API's steps, with the writer's resolve in between
    with engine.connect() as conn:
        read = alertactions.read_alert(conn=conn, alert_id="r1")
    assert read is not None and read.state == "open"
    decided = alertactions.decide(read, "ack", by="li", note=None, now=T1 + 20)
    writer_resolves(engine, read, T1 + 10)
    with engine.begin() as conn:
        assert not alertactions.apply_change(
            conn=conn,
            transition=decided,
            action="ack",
            receivers=receivers,
            routing=routing,
            source="127.0.0.1",
            now=T1 + 20,
        )
    with engine.connect() as conn:
        row = conn.execute(select(ALERT).where(ALERT.c.id == "r1")).one()
        history = conn.execute(select(HISTORY.c.action).order_by(HISTORY.c.id)).all()
    assert (row.state, row.resolution, row.acknowledged_by) == ("resolved", "cleared", None)
    assert [h.action for h in history] == ["open", "resolve"]
    assert count(engine, NOTIFICATION) == count(engine, AUDIT) == 0
    # and the same through act(): the lost race is a Conflict, audited
    put(engine, make_alert("r2", device="cash_acceptor"))
    with pytest.raises(Conflict):
        alertactions.act(
            engine=engine,
            alert_id="r1",
            action="resolve",
            by="li",
            scope=None,
            note=None,
            receivers=receivers,
            routing=routing,
            source=None,
            now=T1 + 30,
        )
    assert count(engine, AUDIT, AUDIT.c.outcome == "conflict") == 1


def test_a_lost_race_is_a_conflict_with_its_own_message(controller: Controller) -> None:
    """act() decided from an open alert the writer changed meanwhile: LostRace (a 409)."""
    engine = controller.engine
    alert = put(engine, make_alert("r3"))
    stale = lifecycle.acknowledge(alert, by="li", now=T1 + 5)
    # a person acknowledged it first (another request)
    with engine.begin() as conn:
        assert write_transition(conn, lifecycle.acknowledge(alert, by="wang", now=T1 + 4), T1 + 4)
        assert not alertactions.apply_change(
            conn=conn,
            transition=stale,
            action="ack",
            receivers=ALERTS.receivers,
            routing=ALERTS.routing,
            source=None,
            now=T1 + 5,
        )
    assert issubclass(alertactions.LostRace, Conflict)


@pytest.mark.parametrize("action", ["ack", "resolve"])
def test_two_people_at_once_one_wins(app: FastAPI, controller: Controller, action: str) -> None:
    engine = controller.engine
    for round_ in range(4):
        alert_id = f"race{round_}"
        fresh = make_alert(alert_id, device=f"printer_{round_ + 2}", opened_at=time.time())
        put(engine, fresh)
        barrier = threading.Barrier(2)
        codes: list[int] = []

        def person(
            name: str,
            alert_id: str = alert_id,
            barrier: threading.Barrier = barrier,
            codes: list[int] = codes,
        ) -> None:
            barrier.wait()
            response = call(app, "POST", f"/api/alerts/{alert_id}/{action}", json={"by": name})
            codes.append(response.status_code)

        threads = [threading.Thread(target=person, args=(n,)) for n in ("li", "wang")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(codes) == [200, 409]
        action_name = "acknowledge" if action == "ack" else "resolve"
        assert (
            count(engine, HISTORY, HISTORY.c.alert_id == alert_id, HISTORY.c.action == action_name)
            == 1
        )
        done = AUDIT.c.target == alert_id
        assert count(engine, AUDIT, done, AUDIT.c.outcome == "conflict") == 1
        assert count(engine, AUDIT, done, AUDIT.c.outcome != "conflict") == 1
        # one change told: the Alertmanager and the first team's webhook
        assert count(engine, NOTIFICATION, NOTIFICATION.c.alert_id == alert_id) == 2


# -- the audit log -----------------------------------------------------------------------------


def test_the_audit_log_with_its_filters(app: FastAPI, controller: Controller) -> None:
    put(controller.engine, make_alert("e1"))
    put(controller.engine, make_alert("e2", device="id_reader"))
    assert call(app, "POST", "/api/alerts/e1/ack", json={"by": "li"}).status_code == 200
    time.sleep(0.01)  # a mark between the first entry and the others
    mark = datetime.now(UTC).isoformat()
    time.sleep(0.01)
    assert call(app, "POST", "/api/alerts/e1/ack", json={"by": "wang"}).status_code == 409
    assert call(app, "POST", "/api/alerts/e2/resolve", json={"by": "li"}).status_code == 200
    openapi = call(app, "GET", "/openapi.json").json()
    everything = call(app, "GET", "/api/audit")
    check(openapi, "get", "/api/audit", everything)
    rows = everything.json()["items"]
    assert [(r["action"], r["target"], r["actor"], r["outcome"]) for r in rows] == [
        ("alert.resolve", "e2", "li", "resolved"),
        ("alert.ack", "e1", "wang", "conflict"),
        ("alert.ack", "e1", "li", "acknowledged"),
    ]
    assert everything.json()["total"] == 3
    assert all(r["at"].endswith("Z") and r["source"] for r in rows)
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"action": "alert.ack"}, ["wang", "li"]),
        ({"target": "e2"}, ["li"]),
        ({"actor": "li"}, ["li", "li"]),
        ({"actor": "li", "action": "alert.ack"}, ["li"]),
        ({"action": "command.create"}, []),
        ({"to": mark}, ["li"]),
        ({"from": mark}, ["li", "wang"]),
        ({"from": mark, "actor": "li"}, ["li"]),
        ({"limit": 1}, ["li"]),
        ({"limit": 1, "offset": 1}, ["wang"]),
    ]
    for params, actors in cases:
        page = call(app, "GET", "/api/audit", params=params).json()
        assert [r["actor"] for r in page["items"]] == actors, params
    for bad in (
        {"limit": 0},
        {"from": "now"},
        {"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
    ):
        assert call(app, "GET", "/api/audit", params=bad).status_code == 422


# -- the API description -----------------------------------------------------------------------

ROUTES: dict[tuple[str, str], tuple[str, set[str]]] = {
    # (method, path) → (the 2xx response's model, the error statuses documented): 401 for
    # every route, 403 where a role beyond reading is needed
    ("get", "/api/alerts"): ("AlertList", {"401", "422"}),
    ("get", "/api/alerts/{alert_id}"): ("AlertDetail", {"401", "404", "422"}),
    ("post", "/api/alerts/{alert_id}/ack"): ("AlertDetail", {"401", "403", "404", "409", "422"}),
    ("post", "/api/alerts/{alert_id}/resolve"): (
        "AlertDetail",
        {"401", "403", "404", "409", "422"},
    ),
    ("get", "/api/alerts/stats"): ("AlertStats", {"401", "422"}),
    ("get", "/api/availability"): ("Availability", {"401", "422"}),
    ("post", "/api/silences"): ("SilencePublic", {"401", "403", "422"}),
    ("get", "/api/silences"): ("SilenceList", {"401", "422"}),
    ("delete", "/api/silences/{silence_id}"): (
        "SilencePublic",
        {"401", "403", "404", "409", "422"},
    ),
    ("post", "/api/stations/{station_id}/maintenance"): (
        "MaintenancePublic",
        {"401", "403", "404", "422"},
    ),
    ("get", "/api/stations/{station_id}/maintenance"): ("MaintenanceList", {"401", "404", "422"}),
    ("delete", "/api/stations/{station_id}/maintenance"): (
        "MaintenanceList",
        {"401", "403", "404", "409", "422"},
    ),
    ("get", "/api/maintenance"): ("MaintenanceList", {"401", "422"}),
    ("get", "/api/audit"): ("AuditList", {"401", "403", "422"}),
}


def test_every_alert_route_is_documented_with_its_errors(app: FastAPI) -> None:
    openapi = call(app, "GET", "/openapi.json").json()
    for (method, path), (model, errors) in ROUTES.items():
        operation = openapi["paths"][path][method]
        assert operation["summary"] and operation["description"], (method, path)
        responses = operation["responses"]
        (success,) = (code for code in responses if code.startswith("2"))
        schema = responses[success]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{model}"}, (method, path)
        assert set(responses) - {success} == errors, (method, path)
        for code in errors - {"422"}:
            error = responses[code]["content"]["application/json"]["schema"]
            assert error["$ref"].endswith("/ErrorDetail"), (method, path, code)
    components = openapi["components"]["schemas"]
    # times are documented as date-times, the matchers by their model, the stats' period as
    # from/to (what a client sends and reads back)
    assert components["AlertPublic"]["properties"]["opened_at"]["format"] == "date-time"
    assert set(components["AlertStats"]["properties"]) >= {"from", "to", "groups", "overall"}
    matcher = components["Matcher"]["properties"]
    assert matcher["op"]["enum"] == ["=", "!=", "=~", "!~"]
    assert set(matcher["label"]["enum"]) == {
        "district",
        "site",
        "station",
        "device",
        "condition",
        "severity",
    }
