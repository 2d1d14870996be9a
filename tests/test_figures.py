"""Figures over a period (``controller.figures``, ``/api/alerts/stats``,
``/api/availability``) from hand-made alert rows and station histories, with exact expected
values. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, insert

from kioskfleet.controller import figures
from kioskfleet.controller.app import create_app
from kioskfleet.controller.config import Settings
from kioskfleet.controller.db import migrate
from kioskfleet.controller.models import Station, StationHistory
from kioskfleet.controller.service import Controller
from tests.conftest import TEST_TOKEN
from tests.test_alert_api import call, check, make_alert, put

STATION = Station.__table__  # type: ignore[attr-defined]
HISTORY = StationHistory.__table__  # type: ignore[attr-defined]
P = 1_800_000_000.0  # the period's start: 2027-01-15T08:00:00Z
END = P + 1000.0


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture
def controller(db_url: str) -> Iterator[Controller]:
    controller = Controller(Settings(bootstrap_token=TEST_TOKEN, db_url=db_url))  # never started
    migrate(controller.engine)
    yield controller
    controller.engine.dispose()


@pytest.fixture
def app(controller: Controller) -> FastAPI:
    return create_app(controller.settings, controller)


# -- pure parts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], (0, None, None, None)),
        ([5.0], (1, 5.0, 5.0, 5.0)),
        ([4.0, 1.0], (2, 2.5, 2.5, 4.0)),
        ([float(v) for v in range(10, 0, -1)], (10, 5.5, 5.5, 9.0)),
        ([float(v) for v in range(1, 12)], (11, 6.0, 6.0, 10.0)),
        ([1.0, 1.0, 1.0, 100.0], (4, 25.75, 1.0, 100.0)),
    ],
)
def test_durations(values: list[float], expected: tuple[Any, ...]) -> None:
    got = figures.durations(values)
    assert (got["n"], got["mean_s"], got["median_s"], got["p90_s"]) == expected


@pytest.mark.parametrize(
    ("registered", "initial", "changes", "expected"),
    [
        # online throughout
        (0.0, "online", [], (1000.0, 1000.0)),
        # degraded for a quarter of the period
        (0.0, "online", [(P + 250, "degraded"), (P + 500, "online")], (1000.0, 750.0)),
        # offline at the start, online from 100 to 600, then silent
        (0.0, "offline", [(P + 100, "online"), (P + 600, "silent")], (1000.0, 500.0)),
        # registered during the period: counted from then
        (P + 200, None, [(P + 200, "online"), (P + 700, "offline")], (800.0, 500.0)),
        # registered after it: nothing
        (END, None, [(END, "online")], (0.0, 0.0)),
        # a change at the very end counts for nothing; two at once: the last one holds
        (
            0.0,
            "online",
            [(P + 400, "degraded"), (P + 400, "online"), (END, "offline")],
            (1000.0, 1000.0),
        ),
        # no known status at all: not available
        (0.0, None, [], (1000.0, 0.0)),
        # unknown until its first change
        (0.0, None, [(P + 600, "online")], (1000.0, 400.0)),
    ],
)
def test_online_seconds(
    registered: float,
    initial: str | None,
    changes: list[tuple[float, str]],
    expected: tuple[float, float],
) -> None:
    got = figures.online_seconds(
        start=P, end=END, registered_at=registered, initial=initial, changes=changes
    )
    assert got == expected


# -- availability from the database -------------------------------------------------------------

#: station → (district, site, registered_at, [(at, status), ...]) — its whole history
HISTORIES: dict[str, tuple[str, str, float, list[tuple[float, str]]]] = {
    # online before the period, never changes
    "st-a": ("Binhu", "s1", P - 5000, [(P - 5000, "online")]),
    # degraded 250..500
    "st-b": (
        "Binhu",
        "s1",
        P - 5000,
        [(P - 5000, "online"), (P + 250, "degraded"), (P + 500, "online")],
    ),
    # offline before the period, online 100..600, then silent
    "st-c": (
        "Binhu",
        "s2",
        P - 5000,
        [(P - 5000, "online"), (P - 10, "offline"), (P + 100, "online"), (P + 600, "silent")],
    ),
    # registered during the period, offline at 700
    "st-d": ("Liangxi", "s3", P + 200, [(P + 200, "online"), (P + 700, "offline")]),
    # registered after the period: not counted
    "st-e": ("Liangxi", "s3", END + 5, [(END + 5, "online")]),
    # back online exactly at the start; a change at the end does not count
    "st-f": ("Liangxi", "s3", P - 5000, [(P - 5000, "offline"), (P, "online"), (END, "offline")]),
}
#: station → (seconds in the period, seconds online)
EXPECTED: dict[str, tuple[float, float]] = {
    "st-a": (1000, 1000),
    "st-b": (1000, 750),
    "st-c": (1000, 500),
    "st-d": (800, 500),
    "st-f": (1000, 1000),
}


def fill_histories(engine: Engine) -> None:
    with engine.begin() as conn:
        for station, (district, site, registered, changes) in HISTORIES.items():
            conn.execute(
                insert(STATION).values(
                    id=station,
                    district=district,
                    site=site,
                    status=changes[-1][1],
                    online=True,
                    degraded=False,
                    session=1,
                    status_since=changes[-1][0],
                    registered_at=registered,
                    devices={},
                    telemetry_interval=10.0,
                    in_service=True,
                )
            )
            conn.execute(
                insert(HISTORY),
                [
                    {"station": station, "status": status, "reason": "test", "session": 1, "at": at}
                    for at, status in changes
                ],
            )


def test_availability_per_station_site_and_district(app: FastAPI, controller: Controller) -> None:
    fill_histories(controller.engine)
    period = {"from": iso(P), "to": iso(END)}
    openapi = call(app, "GET", "/openapi.json").json()

    response = call(app, "GET", "/api/availability", params=period)
    assert response.status_code == 200
    check(openapi, "get", "/api/availability", response)
    body = response.json()
    assert (body["from"], body["to"], body["by"]) == (iso(P), iso(END), "station")
    got = {item["station"]: item for item in body["items"]}
    assert list(got) == sorted(EXPECTED)  # st-e registered after the period
    for station, (period_s, online_s) in EXPECTED.items():
        item = got[station]
        assert (item["period_s"], item["online_s"], item["stations"]) == (period_s, online_s, 1)
        assert item["availability"] == float(Fraction(int(online_s), int(period_s)))
        assert item["district"] == HISTORIES[station][0] and item["site"] == HISTORIES[station][1]

    by_site = call(app, "GET", "/api/availability", params={**period, "by": "site"}).json()
    assert [
        (i["district"], i["site"], i["station"], i["stations"], i["availability"])
        for i in by_site["items"]
    ] == [
        ("Binhu", "s1", None, 2, float(Fraction(1750, 2000))),
        ("Binhu", "s2", None, 1, float(Fraction(500, 1000))),
        ("Liangxi", "s3", None, 2, float(Fraction(1500, 1800))),
    ]
    by_district = call(app, "GET", "/api/availability", params={**period, "by": "district"}).json()
    assert [
        (i["district"], i["site"], i["stations"], i["availability"]) for i in by_district["items"]
    ] == [
        ("Binhu", None, 3, float(Fraction(2250, 3000))),
        ("Liangxi", None, 2, float(Fraction(1500, 1800))),
    ]
    assert by_district["total"] == 2
    only = call(app, "GET", "/api/availability", params={**period, "district": "Liangxi"}).json()
    assert [i["station"] for i in only["items"]] == ["st-d", "st-f"]

    # a later window: st-e counts from its registration
    later = call(
        app, "GET", "/api/availability", params={"from": iso(END), "to": iso(END + 100)}
    ).json()
    got = {i["station"]: (i["period_s"], i["online_s"]) for i in later["items"]}
    assert got["st-e"] == (95.0, 95.0)
    assert got["st-f"] == (100.0, 0.0)
    assert got["st-c"] == (100.0, 0.0)  # silent


@pytest.mark.parametrize("path", ["/api/availability", "/api/alerts/stats"])
@pytest.mark.parametrize(
    "params",
    [
        {"from": iso(END), "to": iso(P)},
        {"from": iso(P), "to": iso(P)},
        {"from": str(P)},
        {"to": "2027-01-15"},
        {"by": "kiosk"},
    ],
)
def test_bad_periods_are_422(app: FastAPI, path: str, params: dict[str, str]) -> None:
    if "by" in params and path != "/api/availability":
        return
    response = call(app, "GET", path, params=params)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "query"


def test_the_default_period_is_the_week_before_now(app: FastAPI) -> None:
    for path in ("/api/availability", "/api/alerts/stats"):
        body = call(app, "GET", path).json()
        start = datetime.fromisoformat(body["from"])
        end = datetime.fromisoformat(body["to"])
        assert (end - start).total_seconds() == 7 * 86400
        assert abs((datetime.now(UTC) - end).total_seconds()) < 60


# -- alert stats ---------------------------------------------------------------------------------


def _alerts(engine: Engine) -> None:
    """Alerts opened around [P, END): the figures are over those opened inside."""
    rows: list[dict[str, Any]] = [
        # Binhu critical
        {
            "id": "s1",
            "opened_at": P,
            "acknowledged_at": P + 60,
            "resolved_at": P + 600,
            "resolution": "by_person",
        },
        {
            "id": "s2",
            "opened_at": P + 100,
            "acknowledged_at": P + 220,
            "resolved_at": P + 400,
            "resolution": "cleared",
        },
        {"id": "s3", "opened_at": P + 200},
        {"id": "s4", "opened_at": P + 300, "resolved_at": P + 310, "resolution": "grouped"},
        # Binhu warning: resolved after the period, still counted (opened inside)
        {
            "id": "s5",
            "opened_at": P + 10,
            "severity": "warning",
            "acknowledged_at": P + 40,
            "resolved_at": P + 1000,
            "resolution": "cleared",
        },
        # Liangxi info
        {
            "id": "s6",
            "opened_at": P + 500,
            "district": "Liangxi",
            "severity": "info",
            "resolved_at": P + 505,
            "resolution": "cleared",
        },
        # outside the period
        {"id": "s7", "opened_at": P - 100, "resolved_at": P + 5, "resolution": "cleared"},
        {"id": "s8", "opened_at": END, "resolved_at": END + 5, "resolution": "cleared"},
    ]
    for n, row in enumerate(rows):
        state = "open"
        if row.get("resolved_at") is not None:
            state = "resolved"
        elif row.get("acknowledged_at") is not None:
            state = "acknowledged"
        put(engine, make_alert(row.pop("id"), device=f"printer_{n + 2}", state=state, **row))


def test_alert_stats_per_district_and_severity(app: FastAPI, controller: Controller) -> None:
    _alerts(controller.engine)
    response = call(app, "GET", "/api/alerts/stats", params={"from": iso(P), "to": iso(END)})
    assert response.status_code == 200
    check(call(app, "GET", "/openapi.json").json(), "get", "/api/alerts/stats", response)
    body = response.json()

    def fig(n: int, mean: float | None, median: float | None, p90: float | None) -> dict[str, Any]:
        return {"n": n, "mean_s": mean, "median_s": median, "p90_s": p90}

    assert body["groups"] == [
        {
            "district": "Binhu",
            "severity": "critical",
            "alerts": 4,
            "acknowledged": 2,
            "resolved": 2,
            "unresolved": 1,
            "time_to_acknowledge": fig(2, 90.0, 90.0, 120.0),
            "time_to_resolve": fig(2, 450.0, 450.0, 600.0),
            "mttr_s": 450.0,
        },
        {
            "district": "Binhu",
            "severity": "warning",
            "alerts": 1,
            "acknowledged": 1,
            "resolved": 1,
            "unresolved": 0,
            "time_to_acknowledge": fig(1, 30.0, 30.0, 30.0),
            "time_to_resolve": fig(1, 990.0, 990.0, 990.0),
            "mttr_s": 990.0,
        },
        {
            "district": "Liangxi",
            "severity": "info",
            "alerts": 1,
            "acknowledged": 0,
            "resolved": 1,
            "unresolved": 0,
            "time_to_acknowledge": fig(0, None, None, None),
            "time_to_resolve": fig(1, 5.0, 5.0, 5.0),
            "mttr_s": 5.0,
        },
    ]
    overall = body["overall"]
    assert (overall["district"], overall["severity"], overall["alerts"]) == (None, None, 6)
    assert overall["time_to_acknowledge"] == fig(3, 70.0, 60.0, 120.0)
    assert overall["time_to_resolve"] == fig(4, 473.75, 450.0, 990.0)
    assert overall["mttr_s"] == 473.75

    liangxi = call(
        app,
        "GET",
        "/api/alerts/stats",
        params={"from": iso(P), "to": iso(END), "district": "Liangxi"},
    ).json()
    assert [g["district"] for g in liangxi["groups"]] == ["Liangxi"]
    assert (liangxi["overall"]["district"], liangxi["overall"]["alerts"]) == ("Liangxi", 1)
    nothing = call(
        app, "GET", "/api/alerts/stats", params={"from": iso(END + 10), "to": iso(END + 20)}
    ).json()
    assert nothing["groups"] == [] and nothing["overall"]["alerts"] == 0
    assert nothing["overall"]["mttr_s"] is None


# -- the database's sums against the reference, for any history --------------------------------

_STATUS = st.sampled_from(["online", "degraded", "silent", "offline"])
#: times on a 0.25 s grid around the period, so that sums are exact in both computations
_TIME = st.integers(-400, 4400).map(lambda q: P + q / 4)


@st.composite
def _histories(draw: st.DrawFn) -> dict[str, tuple[float, list[tuple[float, str]]]]:
    stations: dict[str, tuple[float, list[tuple[float, str]]]] = {}
    for n in range(draw(st.integers(1, 5))):
        registered = draw(_TIME)
        later = draw(st.lists(st.tuples(_TIME, _STATUS), max_size=8))
        later_sorted = sorted((max(at, registered), status) for at, status in later)
        changes = [(registered, draw(_STATUS)), *later_sorted]
        stations[f"st-{n}"] = (registered, changes)
    return stations


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(histories=_histories())
def test_the_database_sums_what_the_reference_computes(
    controller: Controller, histories: dict[str, tuple[float, list[tuple[float, str]]]]
) -> None:
    engine = controller.engine
    with engine.begin() as conn:
        conn.execute(delete(HISTORY))
        conn.execute(delete(STATION))
        for station, (registered, changes) in histories.items():
            conn.execute(
                insert(STATION).values(
                    id=station,
                    district="Binhu",
                    site="s1",
                    status=changes[-1][1],
                    online=True,
                    degraded=False,
                    session=1,
                    status_since=changes[-1][0],
                    registered_at=registered,
                    devices={},
                    telemetry_interval=10.0,
                    in_service=True,
                )
            )
            conn.execute(
                insert(HISTORY),
                [
                    {"station": station, "status": s, "reason": "t", "session": 1, "at": at}
                    for at, s in changes
                ],
            )
    with engine.connect() as conn:
        got = figures.availability(conn=conn, start=P, end=END, by="station")
    expected = {}
    for station, (registered, changes) in histories.items():
        if registered >= END:
            continue
        before = [s for at, s in changes if at <= P]
        expected[station] = figures.online_seconds(
            start=P,
            end=END,
            registered_at=registered,
            initial=before[-1] if before else None,
            changes=[(at, s) for at, s in changes if at > P],
        )
    assert {i.station: (i.period_s, i.online_s) for i in got.items} == expected
