"""Silences and maintenance windows through the API: stored with their audit rows, listed by
state, ended early; bad input is a 422 naming the field. (The writer applies them to alert
rows; that is not tested here.) On SQLite and PostgreSQL."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import select

from kioskfleet.controller.alerts.suppress import Maintenance, Matcher, Silence
from kioskfleet.controller.models import MaintenanceRow, SilenceRow
from kioskfleet.controller.service import Controller
from tests.test_alert_api import AUDIT, app, call, check, controller

__all__ = ["app", "controller"]  # fixtures

SILENCE = SilenceRow.__table__  # type: ignore[attr-defined]
MAINTENANCE = MaintenanceRow.__table__  # type: ignore[attr-defined]
MATCHERS = [
    {"label": "district", "op": "=", "value": "Binhu"},
    {"label": "condition", "op": "=~", "value": "paper_.*"},
]


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def in_(seconds: float) -> str:
    return iso(datetime.now(UTC) + timedelta(seconds=seconds))


def silence(app: FastAPI, **changes: Any) -> Any:
    body = {"matchers": MATCHERS, "author": "li", "reason": "paper delivery late", **changes}
    return call(app, "POST", "/api/silences", json=body)


def audits(controller: Controller) -> list[tuple[str, str, str, str]]:
    with controller.engine.connect() as conn:
        rows = conn.execute(
            select(AUDIT.c.actor, AUDIT.c.action, AUDIT.c.target, AUDIT.c.outcome).order_by(
                AUDIT.c.id
            )
        )
        return [tuple(row) for row in rows]


# -- silences ----------------------------------------------------------------------------------


def test_a_silence_is_stored_as_the_writer_reads_it(app: FastAPI, controller: Controller) -> None:
    before = time.time()
    created = silence(app, duration_s=3600)
    assert created.status_code == 201
    openapi = call(app, "GET", "/openapi.json").json()
    check(openapi, "post", "/api/silences", created)
    body = created.json()
    assert body["state"] == "active" and body["author"] == "li"
    assert body["matchers"] == MATCHERS
    with controller.engine.connect() as conn:
        row = conn.execute(select(SILENCE)).one()
    # the row is a valid suppress.Silence: the writer builds it from the columns
    stored = Silence(
        id=row.id,
        matchers=[Matcher(**m) for m in row.matchers],
        author=row.author,
        reason=row.reason,
        starts_at=row.starts_at,
        expires_at=row.expires_at,
    )
    assert before <= stored.starts_at <= time.time()
    assert stored.expires_at - stored.starts_at == pytest.approx(3600)
    assert stored.id == body["id"] and stored.active(time.time())
    assert audits(controller) == [("li", "silence.create", body["id"], "created")]

    later = silence(app, starts_at=in_(600), expires_at=in_(1200))
    assert later.status_code == 201 and later.json()["state"] == "pending"
    listed = call(app, "GET", "/api/silences")
    check(openapi, "get", "/api/silences", listed)
    assert [s["id"] for s in listed.json()["items"]] == [later.json()["id"], body["id"]]
    for state, ids in (
        ("active", [body["id"]]),
        ("pending", [later.json()["id"]]),
        ("expired", []),
        ("all", [later.json()["id"], body["id"]]),
    ):
        page = call(app, "GET", "/api/silences", params={"state": state}).json()
        assert [s["id"] for s in page["items"]] == ids and page["total"] == len(ids)


def test_ending_silences(app: FastAPI, controller: Controller) -> None:
    active = silence(app, duration_s=3600).json()["id"]
    pending = silence(app, starts_at=in_(600), duration_s=60).json()["id"]
    openapi = call(app, "GET", "/openapi.json").json()
    ended = call(app, "DELETE", f"/api/silences/{active}", params={"by": "wang"})
    assert ended.status_code == 200
    check(openapi, "delete", "/api/silences/{silence_id}", ended)
    assert ended.json()["state"] == "expired"
    assert datetime.fromisoformat(ended.json()["expires_at"]) <= datetime.now(UTC)
    again = call(app, "DELETE", f"/api/silences/{active}")
    assert again.status_code == 409
    assert again.json() == {"detail": f"silence {active} has already expired"}
    check(openapi, "delete", "/api/silences/{silence_id}", again)
    # a pending one is withdrawn: never in force, it leaves the list
    withdrawn = call(app, "DELETE", f"/api/silences/{pending}")
    assert withdrawn.status_code == 200
    assert withdrawn.json()["expires_at"] == withdrawn.json()["starts_at"]
    assert [s["id"] for s in call(app, "GET", "/api/silences").json()["items"]] == [active]
    assert call(app, "GET", "/api/silences", params={"state": "expired"}).json()["total"] == 1
    missing = call(app, "DELETE", f"/api/silences/{pending}")
    assert missing.status_code == 404
    assert missing.json() == {"detail": f"no silence {pending!r}"}
    assert audits(controller)[2:] == [
        ("wang", "silence.expire", active, "expired"),
        ("bootstrap", "silence.expire", pending, "withdrawn"),
    ]


@pytest.mark.parametrize(
    ("changes", "loc"),
    [
        ({"matchers": [{"label": "station", "op": "=~", "value": "wx-(binhu"}]}, "matchers"),
        ({"matchers": [{"label": "colour", "value": "red"}]}, "matchers"),
        ({"matchers": [{"label": "station", "op": "==", "value": "x"}]}, "matchers"),
        ({"matchers": [{"label": "station", "op": "="}]}, "matchers"),
        ({"matchers": [{"label": "station", "value": "x", "extra": 1}]}, "matchers"),
        ({"matchers": []}, "matchers"),
        ({"matchers": [MATCHERS[0]] * 33}, "matchers"),
        ({"matchers": "district=Binhu"}, "matchers"),
        ({"author": ""}, "author"),
        ({"reason": ""}, "reason"),
        ({"reason": "x" * 501}, "reason"),
        ({"duration_s": 0}, "duration_s"),
        ({"duration_s": -5}, "duration_s"),
        ({"duration_s": 366 * 86400}, "duration_s"),
        ({"duration_s": "an hour"}, "duration_s"),
        ({"expires_at": 1999999999}, "expires_at"),
        ({"expires_at": "2030-01-01T00:00:00"}, "expires_at"),  # no zone
        ({"starts_at": "tomorrow"}, "starts_at"),
        ({"wat": 1}, "wat"),
    ],
)
def test_bad_silences_are_422_naming_the_field(
    app: FastAPI, controller: Controller, changes: dict[str, Any], loc: str
) -> None:
    body = {"duration_s": 3600, **changes}
    response = silence(app, **body)
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert errors[0]["loc"][:2] == ["body", loc] and errors[0]["msg"]
    if "wx-(binhu" in str(changes):
        assert "not a regular expression" in errors[0]["msg"]
    assert call(app, "GET", "/api/silences").json()["total"] == 0
    assert audits(controller) == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({}, "give exactly one of 'expires_at' and 'duration_s'"),
        ({"expires_at": in_(60), "duration_s": 60}, "give exactly one"),
        (
            {"starts_at": in_(120), "expires_at": in_(60)},
            "expires_at must be after starts_at",
        ),
        ({"expires_at": in_(-60)}, "would already be over"),
        ({"starts_at": in_(-7200), "duration_s": 3600}, "would already be over"),
    ],
)
def test_a_silence_must_end_once_after_now(
    app: FastAPI, controller: Controller, changes: dict[str, Any], message: str
) -> None:
    response = silence(app, **changes)
    assert response.status_code == 422
    assert message in response.json()["detail"][0]["msg"]
    assert call(app, "GET", "/api/silences").json()["total"] == 0


def test_bad_silence_listing_is_422(app: FastAPI) -> None:
    for params in ({"state": "gone"}, {"limit": 0}, {"offset": -1}):
        assert call(app, "GET", "/api/silences", params=params).status_code == 422
    assert call(app, "DELETE", "/api/silences/" + "x" * 65).status_code == 422


# -- maintenance -------------------------------------------------------------------------------

STATION = "wx-binhu-gov-01"


def test_maintenance_from_now_until_it_ends(app: FastAPI, controller: Controller) -> None:
    openapi = call(app, "GET", "/openapi.json").json()
    path = f"/api/stations/{STATION}/maintenance"
    before = time.time()
    started = call(
        app, "POST", path, json={"by": "zhou", "reason": "printer swap", "duration_s": 1800}
    )
    assert started.status_code == 201
    check(openapi, "post", "/api/stations/{station_id}/maintenance", started)
    body = started.json()
    assert (body["station"], body["by"], body["reason"], body["active"]) == (
        STATION,
        "zhou",
        "printer swap",
        True,
    )
    with controller.engine.connect() as conn:
        row = conn.execute(select(MAINTENANCE)).one()
    # a valid suppress.Maintenance, as the writer reads it
    window = Maintenance(
        station=row.station, until=row.until, by=row.by, reason=row.reason, starts_at=row.starts_at
    )
    assert before <= window.starts_at <= time.time()  # type: ignore[operator]
    assert window.until - row.starts_at == pytest.approx(1800)
    assert window.active(time.time())

    until = in_(7200)
    other = call(
        app,
        "POST",
        "/api/stations/wx-binhu-gov-02/maintenance",
        json={"by": "qian", "until": until},
    )
    assert other.status_code == 201 and other.json()["reason"] == ""
    assert datetime.fromisoformat(other.json()["until"]) == datetime.fromisoformat(until)

    mine = call(app, "GET", path)
    check(openapi, "get", "/api/stations/{station_id}/maintenance", mine)
    assert [m["id"] for m in mine.json()["items"]] == [body["id"]]
    every = call(app, "GET", "/api/maintenance")
    check(openapi, "get", "/api/maintenance", every)
    assert [m["station"] for m in every.json()["items"]] == ["wx-binhu-gov-02", STATION]

    ended = call(app, "DELETE", path, params={"by": "zhou"})
    assert ended.status_code == 200
    check(openapi, "delete", "/api/stations/{station_id}/maintenance", ended)
    (window_ended,) = ended.json()["items"]
    assert window_ended["id"] == body["id"] and window_ended["active"] is False
    assert call(app, "GET", path, params={"state": "active"}).json()["items"] == []
    assert call(app, "GET", path, params={"state": "ended"}).json()["total"] == 1
    active = call(app, "GET", "/api/maintenance", params={"state": "active"}).json()
    assert [m["station"] for m in active["items"]] == ["wx-binhu-gov-02"]
    again = call(app, "DELETE", path)
    assert again.status_code == 409
    assert again.json() == {"detail": f"station {STATION} is not in maintenance"}
    assert audits(controller) == [
        ("zhou", "maintenance.start", STATION, "started"),
        ("qian", "maintenance.start", "wx-binhu-gov-02", "started"),
        ("zhou", "maintenance.end", STATION, "ended"),
    ]


def test_maintenance_of_an_unknown_station_is_404(app: FastAPI, controller: Controller) -> None:
    path = "/api/stations/wx-nowhere-01/maintenance"
    for method, kwargs in (
        ("POST", {"json": {"by": "zhou", "duration_s": 60}}),
        ("GET", {}),
        ("DELETE", {}),
    ):
        response = call(app, method, path, **kwargs)
        assert response.status_code == 404, method
        assert response.json() == {"detail": "no station 'wx-nowhere-01'"}
    assert audits(controller) == []


@pytest.mark.parametrize(
    ("body", "loc", "message"),
    [
        ({"by": "", "duration_s": 60}, "by", "at least 1"),
        ({"by": "zhou"}, "body", "give exactly one of 'until' and 'duration_s'"),
        ({"by": "zhou", "duration_s": 60, "until": in_(60)}, "body", "give exactly one"),
        ({"by": "zhou", "duration_s": 0}, "duration_s", "greater than 0"),
        ({"by": "zhou", "duration_s": 31 * 86400}, "duration_s", "less than or equal"),
        ({"by": "zhou", "until": in_(-60)}, "until", "would already be over"),
        ({"by": "zhou", "until": 1999999999}, "until", "ISO 8601"),
        ({"by": "zhou", "duration_s": 60, "reason": "x" * 501}, "reason", "at most 500"),
        ({"by": "zhou", "duration_s": 60, "station": "other"}, "station", "Extra inputs"),
    ],
)
def test_bad_maintenance_is_422(
    app: FastAPI, controller: Controller, body: dict[str, Any], loc: str, message: str
) -> None:
    response = call(app, "POST", f"/api/stations/{STATION}/maintenance", json=body)
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert loc in error["loc"] and message in error["msg"], error
    assert call(app, "GET", "/api/maintenance").json()["total"] == 0
    assert audits(controller) == []
