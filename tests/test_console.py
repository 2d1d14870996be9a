"""The console without a browser: its catalogues, its pages rendered in-process on a SQLite
database the real ``FleetStore`` filled, the live stream's fan-out, and ``q`` on
``/api/stations``. (tests/e2e/test_console.py drives the pages in Chromium.)"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import string
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
from fastapi import FastAPI

from kioskfleet.controller import crud, rollouts
from kioskfleet.controller.alerts.model import TransitionKind
from kioskfleet.controller.api.routes.pages import (
    ALERT_STATES,
    ROLLOUT_ACTIONS,
    STATION_COMMANDS,
    _SharedOverview,
)
from kioskfleet.controller.app import create_app
from kioskfleet.controller.config import Settings
from kioskfleet.controller.console import i18n
from kioskfleet.controller.console.live import Broadcaster, Change
from kioskfleet.controller.db import make_engine, migrate
from kioskfleet.controller.fleetmetrics import SUPPLY_LEVELS
from kioskfleet.controller.models import RolloutStationRow
from kioskfleet.controller.people import ROLES
from kioskfleet.controller.public import CommandState, Resolution
from kioskfleet.controller.rollout_plan import Progress, RolloutState
from kioskfleet.controller.rollouts import RolloutRequest
from kioskfleet.controller.service import Controller
from kioskfleet.controller.store import FleetStore
from kioskfleet.controller.tufrepo.releases import ReleasePublic
from kioskfleet.fleetsim.fleet import DISTRICTS, SITE_TYPES
from kioskfleet.protocol.devices import DeviceKind, DeviceState
from kioskfleet.protocol.stations import StationStatus
from tests.conftest import AUTH, TEST_TOKEN, acting, wait_until
from tests.test_alert_api import T1, make_alert, put
from tests.test_api import _birth, fill

SHANGHAI = dt.timezone(dt.timedelta(hours=8))

#: the bootstrap admin: sees every button (an anonymous operator sees none)
ADMIN = AUTH
TEMPLATES = Path(__file__).resolve().parents[1] / "src/kioskfleet/controller/templates"


def fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_every_key_has_both_languages_with_the_same_placeholders() -> None:
    zh, en = i18n.catalogue("zh"), i18n.catalogue("en")
    assert zh.keys() == en.keys()
    for key in zh:
        assert zh[key].strip() and en[key].strip(), key
        assert fields(zh[key]) == fields(en[key]), key


def test_every_key_the_templates_use_is_in_the_catalogues() -> None:
    used: set[str] = set()
    for template in TEMPLATES.glob("*.html"):
        used |= set(re.findall(r"\bt\('([a-z_.]+)'", template.read_text(encoding="utf-8")))
    keys = {key for key in used if not key.endswith(".")}
    assert len(keys) > 50
    assert keys - i18n.catalogue("zh").keys() == set()
    # families of keys the templates complete with a value: checked name by name below
    assert {key for key in used if key.endswith(".")} <= {f"{kind}." for kind in FAMILIES}


FAMILIES: dict[str, list[str]] = {
    "district": [name for name, _ in DISTRICTS],
    "site_type": [name for name, *_ in SITE_TYPES],
    "device": list(get_args(DeviceKind)),
    "state": list(get_args(DeviceState)),
    "status": list(get_args(StationStatus)),
    "severity": ["critical", "warning", "info"],
    "supply": list(SUPPLY_LEVELS),
    "level": sorted({level for levels in SUPPLY_LEVELS.values() for level in levels}),
    "cmd": [*STATION_COMMANDS, "restart_device"],
    "cmdstate": list(get_args(CommandState)),
    "alertstate": list(ALERT_STATES),
    "rolloutstate": list(get_args(RolloutState)),
    "progress": list(get_args(Progress)),
    # what an alert's history line did (the writer's escalation too), how it was resolved
    "alertaction": [*get_args(TransitionKind), "escalate"],
    "resolution": list(get_args(Resolution)),
    "rollouts": sorted({a for actions in ROLLOUT_ACTIONS.values() for a in actions}),
    "role": list(ROLES),
}


@pytest.mark.parametrize(("kind", "names"), FAMILIES.items())
def test_the_fleets_names_are_translated(kind: str, names: list[str]) -> None:
    zh, en = i18n.Translator("zh"), i18n.Translator("en")
    for name in names:
        assert f"{kind}.{name}" in zh.texts, name
        # Chinese shows Chinese: no name is left as its stored (ASCII) spelling
        assert not zh.name(kind, name).isascii(), name
    assert zh.name("district", "Liangxi") == "梁溪区"
    assert en.name("district", "Liangxi") == "Liangxi"
    assert zh.name("district", "Atlantis") == "Atlantis"  # unknown: as stored
    assert zh.device("printer_2") == "打印机 2" and en.device("card_reader") == "Card reader"


@pytest.mark.parametrize(
    ("cookie", "lang"), [(None, "zh"), ("en", "en"), ("zh", "zh"), ("fr", "zh")]
)
def test_the_language_is_the_cookies_or_chinese(cookie: str | None, lang: str) -> None:
    assert i18n.chosen(cookie) == lang


def test_an_unknown_catalogue_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no catalogue for 'fr'"):
        i18n.catalogue("fr")


@pytest.fixture
def app(tmp_path: Path) -> Iterator[FastAPI]:
    settings = Settings(
        db_url=f"sqlite:///{tmp_path / 'controller.db'}",
        anonymous_role="operator",
        bootstrap_token=TEST_TOKEN,
    )
    controller = Controller(settings)  # never started: no broker, no ingest
    migrate(controller.engine)
    fill(controller.engine)
    yield create_app(settings, controller)
    controller.engine.dispose()


def get(
    app: FastAPI,
    path: str,
    cookies: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    **params: Any,
) -> Any:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://controller", cookies=cookies, headers=headers
        ) as client:
            return await client.get(path, params=params)

    return asyncio.run(run())


def tile_numbers(html: str) -> dict[str, dict[str, int]]:
    found: dict[str, dict[str, int]] = {}
    for district, body in re.findall(
        r'<a class="district" data-district="([^"]+)"(.*?)</a>', html, re.S
    ):
        numbers = dict(re.findall(r'data-key="(\w+)">(?:<dt>[^<]*</dt><dd>)?(\d+)<', body))
        found[district] = {key: int(n) for key, n in numbers.items()}
    return found


def test_the_overview_shows_the_summarys_numbers_in_chinese(app: FastAPI) -> None:
    summary = get(app, "/api/fleet/summary").json()
    page = get(app, "/")
    assert page.status_code == 200
    html = page.text
    assert '<html lang="zh-CN">' in html
    keys = ("stations", "online", "degraded", "silent", "offline")
    # the fleet's 8 districts in their order, zeros where none of its stations is yet
    tiles = tile_numbers(html)
    assert list(tiles)[:8] == [name for name, _ in DISTRICTS]
    assert tiles == {
        **{name: dict.fromkeys(keys, 0) for name, _ in DISTRICTS},
        **{name: {key: d[key] for key in keys} for name, d in summary["districts"].items()},
    }
    shown_alerts = re.findall(r'data-alerts="(\w+)" [^>]*><b>(\d+)</b>', html)
    assert [severity for severity, _ in shown_alerts] == ["critical", "warning", "info"]
    assert sum(int(n) for _, n in shown_alerts) == summary["open_alerts"]
    assert "滨湖区" in html and "政务服务中心" in html
    assert "wx-binhu-gov-01" in html  # degraded: listed as needing attention
    # the paper-out printer shows where paper runs low
    assert 'data-supply="paper" data-level="out"' in html
    # the live fragment is the same body
    fragment = get(app, "/fragments/overview").text
    assert tile_numbers(fragment) == tile_numbers(html)


def test_the_overview_shows_the_availability_today_that_the_api_computes(app: FastAPI) -> None:
    html = get(app, "/").text
    period = dict(re.findall(r'data-today-(from|to)="([^"]+)"', html))
    start, end = (dt.datetime.fromisoformat(period[k]).timestamp() for k in ("from", "to"))
    # today: from midnight in Wuxi (UTC+8) to when it was computed, moments ago
    assert dt.datetime.fromtimestamp(start, SHANGHAI).time() == dt.time(0, 0)
    assert 0 < end - start <= 86400 and time.time() - end < 60
    shown = dict(re.findall(r'data-availability="([^"]+)" data-value="([^"]*)"', html))
    api = get(app, "/api/availability", by="district", **period).json()
    expected = {item["district"]: item["availability"] for item in api["items"]}
    # fill()'s degraded and offline stations: not every district is fully available
    assert expected and min(expected.values()) < 1.0
    for district, availability in expected.items():
        assert float(shown[district]) == pytest.approx(availability, abs=1e-9), district
    # the fleet: its districts' online seconds over their seconds, as a district's
    online = sum(item["online_s"] for item in api["items"])
    whole = sum(item["period_s"] for item in api["items"])
    assert float(shown["fleet"]) == pytest.approx(online / whole, abs=1e-9)
    # a district without a station shows a dash, and each share in percent
    empty = next(name for name, _ in DISTRICTS if name not in expected)
    assert shown[empty] == ""
    tile = re.search(rf'data-availability="{empty}"[^>]*>[^<]*<b>([^<]*)</b>', html)
    assert tile is not None and tile[1] == "—"
    assert f"{expected['Binhu'] * 100:.1f}%" in html
    assert "今日可用率" in html


def test_english_when_the_cookie_says_so(app: FastAPI) -> None:
    html = get(app, "/", cookies={"lang": "en"}).text
    assert '<html lang="en">' in html and "Districts" in html and "滨湖区" not in html


def test_the_language_switch_sets_a_cookie_and_goes_back_only_inside(app: FastAPI) -> None:
    r = get(app, "/lang/en", back="/stations?q=wx")
    assert r.status_code == 303 and r.headers["location"] == "/stations?q=wx"
    assert r.cookies["lang"] == "en"
    for elsewhere in ("//evil.example/", "https://evil.example/", "javascript:alert(1)"):
        r = get(app, "/lang/zh", back=elsewhere)
        assert r.headers["location"] == "/"
    r = get(app, "/lang/fr")
    assert r.status_code == 303 and "lang" not in r.cookies


def test_the_station_page_shows_devices_in_the_contracts_vocabulary(app: FastAPI) -> None:
    html = get(app, "/stations/wx-binhu-gov-01", headers=ADMIN).text
    assert 'data-state="user_error"' in html and "paper_out" in html
    assert 'data-command="restart_device" data-slot="printer"' in html
    assert re.search(r'id="station-window">23:00-02:00 ', html)  # from its birth
    assert "data-command" not in get(app, "/stations/wx-binhu-gov-01").text  # an operator
    assert get(app, "/stations/nope").status_code == 404
    assert get(app, "/fragments/stations/nope").status_code == 404


def test_the_stations_page_filters_and_searches(app: FastAPI) -> None:
    def listed(**params: str) -> list[str]:
        return re.findall(r'<tr data-station="([^"]+)"', get(app, "/stations", **params).text)

    everything = [s["id"] for s in get(app, "/api/stations").json()["items"]]
    assert listed() == everything
    # a form sends empty fields: they mean "all"
    assert listed(q="", district="", site_type="", status="") == everything
    assert listed(q="BINHU") == [s for s in everything if "binhu" in s]
    assert listed(status="offline") == [
        s["id"] for s in get(app, "/api/stations", status="offline").json()["items"]
    ]
    assert listed(status="nonsense") == everything


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("binhu", "binhu"),
        ("BINHU", "binhu"),
        ("Government Affairs", ""),  # the site: every station of fill() has one
        ("%", None),  # a literal percent sign: in no id or site
        ("_", None),
        ("zzz", None),
    ],
)
def test_q_searches_station_ids_and_sites(app: FastAPI, q: str, expected: str | None) -> None:
    everything = [s["id"] for s in get(app, "/api/stations").json()["items"]]
    found = get(app, "/api/stations", q=q).json()
    want = [] if expected is None else [s for s in everything if expected in s]
    assert [s["id"] for s in found["items"]] == want
    assert found["total"] == len(want)


@pytest.mark.parametrize("q", ["", "x" * 65])
def test_q_out_of_bounds_is_refused(app: FastAPI, q: str) -> None:
    r = get(app, "/api/stations", q=q)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "q"]


def test_the_vendored_files_and_the_favicon_are_served(app: FastAPI) -> None:
    for path in (
        "/static/vendor/htmx-2.0.4.min.js",
        "/static/vendor/htmx-ext-sse-2.2.2.js",
        "/static/vendor/uPlot-1.6.31.iife.min.js",
        "/static/console.js",
        "/favicon.ico",
    ):
        assert get(app, path).status_code == 200, path
    html = get(app, "/").text
    for src in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
        assert get(app, src).status_code == 200, src


def test_changes_reach_every_subscriber_from_another_thread() -> None:
    broadcaster = Broadcaster()

    async def run() -> list[list[Change | None]]:
        subs = [broadcaster.subscribe(), broadcaster.subscribe()]
        changes = [Change("s1", "online", "degraded"), Change("s2", "offline", "online")]
        thread = threading.Thread(target=broadcaster.publish, args=(changes,))
        thread.start()
        thread.join()
        got = [[await asyncio.wait_for(s.queue.get(), 5) for _ in changes] for s in subs]
        broadcaster.unsubscribe(subs[1])
        broadcaster.close()
        got.append([await asyncio.wait_for(subs[0].queue.get(), 5)])
        assert subs[1].queue.empty()
        return got

    first, second, end = asyncio.run(run())
    assert (
        first == second == [Change("s1", "online", "degraded"), Change("s2", "offline", "online")]
    )
    assert end == [None] and broadcaster.closed


def test_the_controllers_change_reports_feed_the_stream(tmp_path: Path) -> None:
    controller = Controller(Settings(db_url=f"sqlite:///{tmp_path / 'c.db'}"))
    migrate(controller.engine)

    async def run() -> Change | None:
        sub = controller.live.subscribe()
        await asyncio.to_thread(controller._on_changes, [("s1", "online", "silent")])
        return await asyncio.wait_for(sub.queue.get(), 5)

    try:
        assert asyncio.run(run()) == Change("s1", "online", "silent")
    finally:
        controller.engine.dispose()


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("BinHu", ["wx-binhu-gov-01", "wx-binhu-gov-02"]),
        ("%", []),
        ("_", []),
        ("-GOV-", None),
        ("affairs", None),
    ],
)
def test_q_searches_alike_on_both_databases(
    db_url: str, q: str, expected: list[str] | None
) -> None:
    engine = make_engine(db_url)
    try:
        migrate(engine)
        fill(engine)
        with engine.connect() as conn:
            every = crud.list_stations(conn=conn, filters={}, limit=100, offset=0)
            found = crud.list_stations(conn=conn, filters={}, limit=100, offset=0, q=q)
        want = [s.id for s in every.items] if expected is None else expected
        assert [s.id for s in found.items] == want and found.total == len(want)
    finally:
        engine.dispose()


def test_the_shared_overview_is_read_again_when_a_station_arrives(tmp_path: Path) -> None:
    settings = Settings(
        db_url=f"sqlite:///{tmp_path / 'controller.db'}",
        anonymous_role="operator",
        bootstrap_token=TEST_TOKEN,
    )
    controller = Controller(settings)
    migrate(controller.engine)
    fill(controller.engine)
    app = create_app(settings, controller)
    try:
        before = tile_numbers(get(app, "/").text)["Xinwu"]["stations"]
        # a new station's birth, written by the store as the writer would: no status change
        FleetStore(controller.engine).apply([_birth("wx-xinwu-gov-09", "Xinwu")], now=time.time())
        assert tile_numbers(get(app, "/fragments/overview").text)["Xinwu"]["stations"] == before + 1
        assert get(app, "/api/fleet/summary").json()["districts"]["Xinwu"]["stations"] == before + 1
    finally:
        controller.engine.dispose()


def test_the_alerts_queue_lists_and_filters_what_the_api_lists(app: FastAPI) -> None:
    controller: Controller = app.state.controller
    # beside what the store opened for fill()'s stations
    other = {"station": "wx-binhu-gov-02", "device": "printer"}
    put(controller.engine, make_alert("q1", condition="cover_open", **other))
    put(
        controller.engine,
        make_alert("q2", severity="warning", condition="cashbox_full", **other),
    )
    put(
        controller.engine,
        make_alert(
            "q3",
            condition="cutter_error",
            state="resolved",
            resolved_at=T1 + 5,
            resolution="cleared",
            **other,
        ),
    )

    def rows(**params: str) -> list[str]:
        return re.findall(r'<tr data-alert="([^"]+)"', get(app, "/alerts", **params).text)

    def api(**params: str) -> list[str]:
        return [a["id"] for a in get(app, "/api/alerts", **params).json()["items"]]

    active = api(state="active")
    assert {"q1", "q2"} <= set(active) and "q3" not in active
    assert rows() == active
    assert rows(severity="warning") == api(state="active", severity="warning")
    assert "q2" in rows(severity="warning") and "q1" not in rows(severity="warning")
    assert rows(state="resolved") == api(state="resolved") and "q3" in rows(state="resolved")
    assert rows(district="Xinwu") == api(state="active", district="Xinwu")
    assert rows(state="nonsense", severity="", district="") == active
    html = get(app, "/alerts", headers=ADMIN).text
    assert 'data-alert-action="ack" data-alert-id="q1"' in html
    assert "data-alert-action" not in get(app, "/alerts").text  # an operator
    assert "告警队列" in html and "严重" in html
    resolved = get(app, "/fragments/alerts", headers=ADMIN, state="resolved").text
    assert "data-alert-action" not in resolved  # nothing left to do on a resolved alert
    # the overview counts them by severity as the summary does
    overview = get(app, "/").text
    shown = {k: int(n) for k, n in re.findall(r'data-alerts="(\w+)" [^>]*><b>(\d+)</b>', overview)}
    listed = get(app, "/api/alerts", state="active").json()["items"]
    assert shown == {
        sev: sum(1 for a in listed if a["severity"] == sev)
        for sev in ("critical", "warning", "info")
    }
    assert sum(shown.values()) == get(app, "/api/fleet/summary").json()["open_alerts"]


def post(app: FastAPI, path: str, body: dict[str, Any]) -> Any:
    """``body`` posted as the person its ``by`` names (an admin of that name)."""

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://controller") as client:
            return await client.post(path, **acting(app, {"json": body}))

    return asyncio.run(run())


def test_an_alerts_page_shows_its_history_with_who_and_their_notes(app: FastAPI) -> None:
    controller: Controller = app.state.controller
    put(controller.engine, make_alert("h1", station="wx-binhu-gov-02", condition="cover_open"))
    # the queue links each alert to its page
    assert 'href="/alerts/h1"' in get(app, "/alerts").text
    acked = post(app, "/api/alerts/h1/ack", {"by": "王工", "note": "已通知网点"})
    assert acked.status_code == 200, acked.text
    page = get(app, "/alerts/h1")
    assert page.status_code == 200
    html = page.text
    assert 'id="alert-state" data-state="acknowledged"' in html
    history = re.findall(
        r'<tr data-action="(\w+)"><td>[^<]*</td><td>([^<]*)</td><td>([^<]*)</td>'
        r'<td class="note">([^<]*)</td>',
        html,
    )
    api = get(app, "/api/alerts/h1").json()["history"]
    assert [h[0] for h in history] == [h["action"] for h in api]
    assert ("acknowledge", "确认", "王工", "已通知网点") in history
    # the anonymous operator reads it and gets no button; an admin's still to do is to
    # resolve it (no second acknowledgement)
    assert "data-alert-action" not in html
    as_admin = get(app, "/alerts/h1", headers=ADMIN).text
    assert 'data-alert-action="resolve" data-alert-id="h1"' in as_admin
    assert 'data-alert-action="ack"' not in as_admin
    assert get(app, "/fragments/alerts/h1").text.count("已通知网点") == 1
    english = get(app, "/alerts/h1", cookies={"lang": "en"}).text
    assert "acknowledged" in english and "History" in english


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/alerts/nope", "没有告警 nope"),
        ("/fragments/alerts/nope", "没有告警 nope"),
        ("/rollouts/nope", "没有发布 nope"),
        ("/stations/nope", "没有站点 nope"),
    ],
)
def test_an_unknown_alert_rollout_or_station_is_a_404_that_says_which(
    app: FastAPI, path: str, says: str
) -> None:
    page = get(app, path)
    assert page.status_code == 404 and says in page.text


def test_the_shared_overview_is_read_again_when_an_alert_opens(app: FastAPI) -> None:
    controller: Controller = app.state.controller

    def critical() -> str:
        found = re.findall(r'data-alerts="critical" [^>]*><b>(\d+)</b>', get(app, "/").text)
        return found[0]

    before = int(critical())
    put(controller.engine, make_alert("n1", station="wx-binhu-gov-02", condition="cover_open"))
    assert int(critical()) == before + 1


def test_the_rollout_pages_show_waves_progress_and_what_may_be_done(app: FastAPI) -> None:
    controller: Controller = app.state.controller
    release = ReleasePublic(
        id="software-1", kind="software", version="1.2.3", release_counter=1, targets=[]
    )
    with controller.engine.begin() as conn:
        rollout_id = rollouts.create_rollout(
            conn=conn,
            body=RolloutRequest(release="software-1", waves=[50, 100], canary=False),
            release=release,
            actor="test",
            source=None,
            now=time.time(),
        )
    listed = get(app, "/rollouts").text
    assert f'data-rollout="{rollout_id}"' in listed and "1.2.3" in listed
    api = get(app, f"/api/rollouts/{rollout_id}").json()
    html = get(app, f"/rollouts/{rollout_id}", headers=ADMIN).text
    assert "data-rollout-action" not in get(app, f"/rollouts/{rollout_id}").text
    shown = re.findall(r'<tr data-station="([^"]+)" data-progress="(\w+)"', html)
    assert sorted(shown) == sorted((s["station"], s["progress"]) for s in api["stations"])
    assert len(re.findall(r"<tr data-wave=", html)) == len(api["wave_summary"]) == 2
    actions = re.findall(r'data-rollout-action="(\w+)"', html)
    assert api["state"] == "scheduled" and actions == ["pause", "abort"]
    with controller.engine.begin() as conn:
        rollouts.act(
            conn=conn,
            rollout_id=rollout_id,
            action="pause",
            actor="test",
            source=None,
            note=None,
            now=time.time(),
        )
    fragment = get(app, f"/fragments/rollouts/{rollout_id}", headers=ADMIN).text
    assert 'data-state="paused"' in fragment
    assert re.findall(r'data-rollout-action="(\w+)"', fragment) == ["resume", "abort"]
    assert get(app, "/rollouts/nope").status_code == 404


def test_a_rollouts_stations_filtered_by_wave_and_progress(app: FastAPI) -> None:
    controller: Controller = app.state.controller
    release = ReleasePublic(
        id="software-1", kind="software", version="1.2.3", release_counter=1, targets=[]
    )
    with controller.engine.begin() as conn:
        rollout_id = rollouts.create_rollout(
            conn=conn,
            body=RolloutRequest(release="software-1", waves=[50, 100], canary=False),
            release=release,
            actor="test",
            source=None,
            now=time.time(),
        )
    api = get(app, f"/api/rollouts/{rollout_id}").json()
    failed = api["stations"][-1]
    with controller.engine.begin() as conn:
        conn.execute(
            RolloutStationRow.__table__.update()  # type: ignore[attr-defined]
            .where(
                RolloutStationRow.rollout_id == rollout_id,
                RolloutStationRow.station == failed["station"],
            )
            .values(progress="failed", error="health probe failed")
        )

    def listed(**params: str) -> tuple[list[tuple[str, str]], str]:
        html = get(app, f"/rollouts/{rollout_id}", **params).text
        return re.findall(r'<tr data-station="([^"]+)" data-progress="(\w+)"', html), html

    every, html = listed()
    assert every[0] == (failed["station"], "failed")  # the failed first
    assert f'href="/rollouts/{rollout_id}?wave={failed["wave"]}&amp;progress=failed"' in html
    only, html = listed(progress="failed")
    assert only == [(failed["station"], "failed")] and "符合条件 1 个" in html
    assert f'hx-get="/fragments/rollouts/{rollout_id}?progress=failed"' in html
    one_wave, _ = listed(wave="1")
    assert sorted(s for s, _ in one_wave) == sorted(
        s["station"] for s in api["stations"] if s["wave"] == 1
    )
    assert 0 < len(one_wave) < len(api["stations"])
    fragment = get(app, f"/fragments/rollouts/{rollout_id}", wave="1", progress="pending").text
    shown = re.findall(r'<tr data-station="([^"]+)" data-progress="(\w+)"', fragment)
    assert sorted(shown) == sorted(one_wave)  # wave 1 is all pending
    # a progress that is none of the vocabulary is no filter; a wave out of range a 422
    assert listed(progress="nonsense")[0] == every
    assert get(app, f"/rollouts/{rollout_id}", wave="x").status_code == 422


def test_availability_today_is_computed_again_in_the_background(app: FastAPI) -> None:
    """Once stale, a request gets the availability the pages have (no wait) and a thread
    computes it again; the next pages show the new one."""
    # a second of freshness: the two first reads fall within it even on a loaded machine
    app.state.shared_overview = _SharedOverview(today_max_age=1.0)

    def period() -> tuple[str, str]:
        html = get(app, "/fragments/overview").text
        found = re.search(r'data-today-from="([^"]+)" data-today-to="([^"]+)"', html)
        assert found is not None
        return found[1], found[2]

    start, first = period()
    assert period() == (start, first)  # fresh: shared as it is
    time.sleep(1.2)
    assert period() == (start, first)  # stale: still shown while the thread computes
    wait_until(lambda: period()[1] > first, timeout=10)
    assert period()[0] == start  # the same day
    assert dt.datetime.fromisoformat(period()[1]) > dt.datetime.fromisoformat(first)


def test_availability_today_costlier_to_compute_is_computed_less_often(app: FastAPI) -> None:
    """Stale after ``today_cost_share`` times what it took (here: far beyond the bound),
    within its bounds (here: a minute)."""
    app.state.shared_overview = _SharedOverview(
        today_min_age=0.0, today_max_age=60.0, today_cost_share=1e6
    )
    first = get(app, "/fragments/overview").text
    time.sleep(0.5)
    get(app, "/fragments/overview")
    time.sleep(0.5)
    again = get(app, "/fragments/overview").text

    def period(html: str) -> list[str]:
        return re.findall(r'data-today-(?:from|to)="([^"]+)"', html)

    assert period(again) == period(first)
