"""The operators' console in a real headless Chromium (Debian's, by its path; Playwright for
Python drives it, never ``playwright install``), against a controller and a simulated fleet.

Screenshots of every page go to ``$KIOSKFLEET_SCREENSHOTS`` (default: a folder the first test
prints).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from kioskfleet.controller.tufrepo.service import create_demo_repository
from kioskfleet.demo import ServedController
from kioskfleet.fleetsim.fleet import DISTRICTS, Fleet
from tests.conftest import LoopThread, Mosquitto, wait_until
from tests.integration.fleet_helpers import (
    make_fleet,
    scheduled_rollout,
    served_controller,
    station_status,
)

# one browser, controller and fleet for the module (the console fixture), set up on one worker only
pytestmark = [pytest.mark.chromium, pytest.mark.mosquitto, pytest.mark.xdist_group("console")]

sync_api = pytest.importorskip("playwright.sync_api")

#: the demo's rules (CONTRACT §6): anonymous callers read as operators; one account per role
PASSWORD = "e2e console password"
ACCOUNTS = {
    "li.binhu": ("technician", ["Binhu"]),
    "wang.ops": ("operator", []),
    "liu.release": ("release_manager", []),
    "zhao.admin": ("admin", []),
}
STATIONS = 16  # kiosks stand in sites of 2-6: from 16 on, every district has one
STATUSES = ("online", "degraded", "silent", "offline")
CHINESE_DISTRICTS = (
    "梁溪区",
    "锡山区",
    "惠山区",
    "滨湖区",
    "新吴区",
    "江阴市",
    "宜兴市",
    "经济开发区",
)


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("Chromium is not installed: run `make test`, which installs it")


@dataclass
class Console:
    served: ServedController
    api: httpx.Client
    fleet: Fleet
    loop: LoopThread
    browser: Any
    shots: Path
    base: str
    errors: list[str] = field(default_factory=list)

    def page(self, width: int = 1920, height: int = 1080, lang: str | None = None) -> Any:
        context = self.browser.new_context(viewport={"width": width, "height": height})
        if lang is not None:
            context.add_cookies([{"name": "lang", "value": lang, "url": self.base}])
        page = context.new_page()
        page.on(
            "console",
            lambda msg: (
                self.errors.append(f"{page.url}: {msg.text}") if msg.type == "error" else None
            ),
        )
        page.on("pageerror", lambda err: self.errors.append(f"{page.url}: {err}"))
        page.on(
            "response",
            lambda r: self.errors.append(f"{r.url}: HTTP {r.status}") if r.status >= 400 else None,
        )
        return page

    def sign_in(self, page: Any, name: str, password: str = PASSWORD) -> None:
        """Sign in through the login form, as a person does, from the header's link."""
        page.goto(self.base + "/")
        page.click("#login-link")
        page.fill("#login-name", name)
        page.fill("#login-password", password)
        page.click("#login-submit")
        page.wait_for_selector(f'[data-me="{name}"]', timeout=5000)

    def shot(self, page: Any, name: str) -> None:
        page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    shots = Path(
        os.environ.get("KIOSKFLEET_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots")
    ).resolve()
    shots.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots: {shots}")
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    loop = LoopThread()
    db = tmp_path_factory.mktemp("db") / "c.db"
    try:
        tuf = create_demo_repository(tmp_path_factory.mktemp("tuf"))
        with served_controller(
            f"sqlite:///{db}", broker.url, tuf=tuf, anonymous_role="operator"
        ) as (
            served,
            api,  # carries the bootstrap admin's token
        ):
            for name, (role, districts) in ACCOUNTS.items():
                body = {"name": name, "role": role, "districts": districts, "password": PASSWORD}
                assert api.post("/api/accounts", json=body).status_code == 201
            fleet = make_fleet(loop, broker.url, STATIONS, interval=1.0)
            try:
                wait_until(lambda: api.get("/api/fleet/summary").json()["online"] == STATIONS)
                with sync_api.sync_playwright() as pw:
                    browser = pw.chromium.launch(
                        executable_path=chromium_path(), headless=True, args=["--no-sandbox"]
                    )
                    try:
                        yield Console(served, api, fleet, loop, browser, shots, str(api.base_url))
                    finally:
                        browser.close()
            finally:
                loop.run(fleet.stop())
    finally:
        loop.close()
        broker.stop()


@pytest.fixture
def console_ok(console: Console) -> Iterator[Console]:
    """The console, checked for console errors (and failed requests) after the test."""
    console.errors.clear()
    yield console
    assert console.errors == []


def tiles(page: Any) -> dict[str, dict[str, int]]:
    """District → status → the number its tile shows."""
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('.district')].map(t => [
            t.dataset.district,
            Object.fromEntries([...t.querySelectorAll('[data-key]')].map(
                e => [e.dataset.key, Number((e.querySelector('dd') || e).textContent)]))]))"""
    )


def totals(page: Any) -> dict[str, int]:
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('.totals [data-key]')].map(
            e => [e.dataset.key, Number(e.querySelector('b').textContent)]))"""
    )


def availability(page: Any) -> dict[str, float]:
    """ "fleet" and each district with a station → the availability today the page shows
    (its data-value; the text is that in percent)."""
    shown: dict[str, float] = page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('[data-availability]')]
            .filter(e => e.dataset.value !== '')
            .map(e => [e.dataset.availability, Number(e.dataset.value)]))"""
    )
    texts = page.eval_on_selector_all(
        "[data-availability]", "es => es.map(e => [e.dataset.availability, e.innerText])"
    )
    for name, text in texts:
        want = f"{shown[name] * 100:.1f}%" if name in shown else "—"
        assert want in text, (name, text)
    return shown


def settled(api: httpx.Client) -> dict[str, Any]:
    """The summary once two reads a moment apart agree (no change in flight)."""
    while True:
        first = api.get("/api/fleet/summary").json()
        time.sleep(0.3)
        second = api.get("/api/fleet/summary").json()
        if {k: first[k] for k in ("districts", *STATUSES)} == {
            k: second[k] for k in ("districts", *STATUSES)
        }:
            return second


def test_overview_shows_the_api_numbers_in_chinese(console_ok: Console) -> None:
    c = console_ok
    page = c.page()
    page.goto(c.base + "/")
    summary = settled(c.api)
    page.reload()
    shown = tiles(page)
    expected = {
        name: {"stations": d["stations"], **{s: d[s] for s in STATUSES}}
        for name, d in summary["districts"].items()
    }
    assert shown == expected
    assert len(shown) == len(DISTRICTS) == 8
    assert totals(page) == {"stations": summary["stations"], **{s: summary[s] for s in STATUSES}}
    alerts = page.eval_on_selector_all(
        "[data-alerts]", "es => es.map(e => Number(e.querySelector('b').textContent))"
    )
    assert len(alerts) == 3 and sum(alerts) == summary["open_alerts"]
    # availability today: what /api/availability gives for the period the page names
    shown = availability(page)
    period = page.evaluate(
        "() => { const d = document.querySelector('.totals').dataset;"
        " return {from: d.todayFrom, to: d.todayTo}; }"
    )
    api = c.api.get("/api/availability", params={"by": "district", **period}).json()
    assert {i["district"]: i["availability"] for i in api["items"]} == pytest.approx(
        {k: v for k, v in shown.items() if k != "fleet"}, abs=1e-9
    )
    online = sum(i["online_s"] for i in api["items"])
    assert shown["fleet"] == pytest.approx(online / sum(i["period_s"] for i in api["items"]))
    assert "今日可用率" in page.inner_text(".totals")
    text = page.inner_text("body")
    for name in CHINESE_DISTRICTS:
        assert name in text
    assert "在线" in text and "政务服务中心" in text
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    # the stream is open and the page says so
    page.wait_for_function("document.body.dataset.live === 'open'", timeout=5000)
    c.shot(page, "overview-zh-1920")
    page.context.close()


def test_a_device_fault_shows_on_the_open_pages_without_a_reload(console_ok: Console) -> None:
    c = console_ok
    agent = c.fleet.agents[2]
    station = agent.station
    overview = c.page()
    overview.goto(c.base + "/")
    detail = c.page(lang="en")
    c.sign_in(detail, "zhao.admin")  # commands need a technician of its district, or an admin
    detail.goto(c.base + f"/stations/{station}")
    for page in (overview, detail):
        page.wait_for_function("document.body.dataset.live === 'open'", timeout=5000)
        page.evaluate("window.notReloaded = true")
    district = c.api.get(f"/api/stations/{station}").json()["district"]
    before = tiles(overview)[district]["degraded"]

    printer = next(s for s in agent.coordinator.sources if s.slot == "printer")
    c.loop.call(printer.break_now)  # type: ignore[attr-defined]
    wait_until(lambda: station_status(c.api, station) == "degraded", timeout=20)
    seen_by_api = time.monotonic()

    overview.wait_for_function(
        f"""() => Number(document.querySelector('.district[data-district="{district}"] '
            + '[data-key="degraded"] dd').textContent) === {before + 1}""",
        timeout=3000,
    )
    detail.wait_for_function(
        "document.getElementById('station-status').dataset.status === 'degraded'", timeout=3000
    )
    detail.wait_for_selector('tr[data-slot="printer"] [data-state="user_error"]', timeout=3000)
    took = time.monotonic() - seen_by_api
    print(f"fault on the pages {took:.2f} s after the API showed it")
    assert took < 3.0
    for page in (overview, detail):
        assert page.evaluate("window.notReloaded") is True
    assert "paper_out" in detail.inner_text('tr[data-slot="printer"]')
    c.shot(detail, "station-en-1920")
    c.shot(overview, "overview-fault-zh-1920")

    # a command from the page: the printer's restart, its reply shown
    detail.click('tr[data-slot="printer"] button[data-command="restart_device"]')
    detail.wait_for_function(
        "['ok', 'error'].includes(document.getElementById('cmd-result').dataset.state)",
        timeout=15000,
    )
    assert "printer" in detail.inner_text("#cmd-result")
    commands = c.api.get(f"/api/stations/{station}/commands").json()["items"]
    assert commands[0]["name"] == "restart_device"
    assert commands[0]["args"] == {"slot": "printer"}

    c.loop.call(printer.repair)  # type: ignore[attr-defined]
    wait_until(lambda: station_status(c.api, station) == "online", timeout=20)
    detail.wait_for_function(
        "document.getElementById('station-status').dataset.status === 'online'", timeout=3000
    )
    overview.context.close()
    detail.context.close()


def test_a_lost_stream_is_shown_and_reconnects(console: Console) -> None:
    page = console.page()
    page.goto(console.base + "/")
    page.wait_for_function("document.body.dataset.live === 'open'", timeout=5000)
    console.served.controller.live.drop()
    page.wait_for_function("document.body.dataset.live === 'lost'", timeout=5000)
    assert "断开" in page.inner_text("#live")
    page.wait_for_function("document.body.dataset.live === 'open'", timeout=10000)
    assert "实时" in page.inner_text("#live")
    page.context.close()


def test_the_language_switch_works_and_is_kept(console_ok: Console) -> None:
    c = console_ok
    page = c.page()
    page.goto(c.base + "/stations?district=Liangxi")
    assert "梁溪区" in page.inner_text("main")
    page.click("#lang-switch")
    page.wait_for_load_state()
    assert page.url.endswith("/stations?district=Liangxi")
    assert "Stations" in page.inner_text("header")
    assert page.evaluate("document.documentElement.lang") == "en"
    # kept: a new page in the same browser is in English too
    page.goto(c.base + "/")
    text = page.inner_text("main")
    assert "Districts" in text and "Liangxi" in text and "梁溪区" not in text
    cookies = {k["name"]: k["value"] for k in page.context.cookies()}
    assert cookies["lang"] == "en"
    c.shot(page, "overview-en-1920")
    page.click("#lang-switch")
    page.wait_for_load_state()
    assert "梁溪区" in page.inner_text("main")
    page.context.close()


def test_search_and_filters_on_the_stations_page(console_ok: Console) -> None:
    c = console_ok
    station = c.fleet.agents[5].station
    page = c.page()
    page.goto(c.base + "/stations")
    page.fill('input[name="q"]', station.upper())
    page.press('input[name="q"]', "Enter")
    page.wait_for_load_state()
    rows = page.eval_on_selector_all("tr[data-station]", "rs => rs.map(r => r.dataset.station)")
    assert rows == [station]
    listed = c.api.get("/api/stations", params={"q": station.upper()}).json()
    assert [s["id"] for s in listed["items"]] == rows
    page.goto(c.base + "/stations?district=Binhu")
    rows = page.eval_on_selector_all("tr[data-station]", "rs => rs.map(r => r.dataset.station)")
    expected = c.api.get("/api/stations", params={"district": "Binhu"}).json()
    assert rows == [s["id"] for s in expected["items"]] and rows
    page.goto(c.base + "/stations")
    c.shot(page, "stations-zh-1920")
    page.context.close()


def test_wall_screen_shows_the_eight_districts_without_scrolling(console_ok: Console) -> None:
    c = console_ok
    page = c.page(1920, 1080)
    page.goto(c.base + "/")
    boxes = page.eval_on_selector_all(
        ".district, .totals [data-key], .totals [data-availability]",
        "es => es.map(e => { const r = e.getBoundingClientRect(); "
        "return [r.left, r.top, r.right, r.bottom]; })",
    )
    assert len(boxes) == 8 + 5 + 1  # tiles (with their availability), totals, availability
    for left, top, right, bottom in boxes:
        assert left >= 0 and top >= 0 and right <= 1920 and bottom <= 1080
    assert page.evaluate("document.documentElement.scrollWidth") <= 1920
    page.context.close()


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_a_phone_never_scrolls_sideways(console_ok: Console, lang: str) -> None:
    c = console_ok
    station = c.fleet.agents[0].station
    page = c.page(390, 844, lang=lang)
    for name, path in (
        ("overview", "/"),
        ("stations", "/stations"),
        ("station", f"/stations/{station}"),
        ("alerts", "/alerts"),
        ("rollouts", "/rollouts"),
    ):
        page.goto(c.base + path)
        page.wait_for_load_state("networkidle")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{path}: {width} px wide"
        c.shot(page, f"{name}-{lang}-390")
    page.context.close()


def test_the_wall_screen_is_anonymous_and_acknowledging_needs_a_technicians_login(
    console_ok: Console,
) -> None:
    c = console_ok
    # a real fault in Binhu: the writer opens the alert
    agent = next(
        a
        for a in c.fleet.agents
        if c.api.get(f"/api/stations/{a.station}").json()["district"] == "Binhu"
    )
    cash = next(s for s in agent.coordinator.sources if s.slot == "cash_acceptor")
    c.loop.call(cash.break_now)  # type: ignore[attr-defined]

    def opened() -> list[dict[str, Any]]:
        found = c.api.get("/api/alerts", params={"station": agent.station, "state": "open"})
        return list(found.json()["items"])

    wait_until(lambda: bool(opened()), timeout=30)
    alert_id = opened()[0]["id"]
    row = f'tr[data-alert="{alert_id}"]'

    # the wall screen: no login, the anonymous operator sees the queue and no button
    wall = c.page()
    wall.goto(c.base + "/alerts?district=Binhu")
    wall.wait_for_selector(row, timeout=10000)  # the 5 s tick at the latest
    assert wall.get_attribute("[data-me]", "data-me") == ""
    assert wall.locator("#login-link").is_visible()
    assert wall.locator("button[data-alert-action]").count() == 0
    # an operator signed in sees no button either
    operator = c.page()
    c.sign_in(operator, "wang.ops")
    operator.goto(c.base + "/alerts?district=Binhu")
    operator.wait_for_selector(row, timeout=10000)
    assert operator.locator("button[data-alert-action]").count() == 0

    # a Binhu technician signs in through the form and acknowledges it from the page
    page = c.page()
    page.goto(c.base + "/login")
    c.shot(page, "login-zh-1920")
    c.sign_in(page, "li.binhu")
    page.goto(c.base + "/alerts?district=Binhu")
    page.wait_for_selector(row, timeout=10000)
    assert page.get_attribute(row, "data-state") == "open"
    assert "滨湖区" in page.inner_text(row)
    c.shot(page, "alerts-zh-1920")
    page.fill("#alert-note", "已通知网点处理")
    page.click(f'{row} button[data-alert-action="ack"]')
    page.wait_for_selector(f'{row}[data-state="acknowledged"]', timeout=5000)
    assert "已确认" in page.inner_text("#alert-result")  # the answer's state, in Chinese
    acked = c.api.get(f"/api/alerts/{alert_id}").json()
    assert acked["state"] == "acknowledged" and acked["acknowledged_by"] == "li.binhu"
    assert any(h.get("note") == "已通知网点处理" for h in acked["history"]), acked["history"]
    # alerts of other districts offer them nothing
    page.goto(c.base + "/alerts")
    page.wait_for_selector(row, timeout=10000)
    buttons = page.eval_on_selector_all(
        "tr[data-alert]:has(button[data-alert-action])",
        "rs => rs.map(r => r.dataset.alert)",
    )
    binhu = {
        a["id"] for a in c.api.get("/api/alerts", params={"district": "Binhu"}).json()["items"]
    }
    assert set(buttons) <= binhu and alert_id in buttons
    page.click(f'{row} button[data-alert-action="resolve"]')
    page.wait_for_selector(row, state="detached", timeout=5000)  # no longer unresolved
    resolved = c.api.get(f"/api/alerts/{alert_id}").json()
    assert resolved["state"] == "resolved" and resolved["resolved_by"] == "li.binhu"
    # its page: the history with who and the note, as the API has it
    page.goto(c.base + f"/alerts/{alert_id}")
    page.wait_for_selector('#alert-state[data-state="resolved"]')
    lines = page.eval_on_selector_all(
        "tr[data-action]",
        "rs => rs.map(r => [r.dataset.action, r.querySelector('.note').textContent])",
    )
    assert [a for a, _ in lines] == [h["action"] for h in resolved["history"]]
    assert ["acknowledge", "已通知网点处理"] in lines
    assert "li.binhu" in page.inner_text("table.alert-history")
    c.shot(page, "alert-zh-1920")
    phone = c.page(390, 844)
    phone.goto(c.base + f"/alerts/{alert_id}")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    c.shot(phone, "alert-zh-390")
    phone.context.close()
    # signing out: the page is the anonymous operator's again
    page.click("#logout")
    page.wait_for_selector("#login-link", timeout=5000)
    c.loop.call(cash.repair)  # type: ignore[attr-defined]
    wait_until(lambda: station_status(c.api, agent.station) == "online", timeout=20)
    for p in (wall, operator, page):
        p.context.close()


def test_pause_and_resume_a_rollout_from_its_page(console_ok: Console) -> None:
    c = console_ok
    # through the API: a release published, a rollout to the fleet starting in an hour (it
    # stays scheduled meanwhile: nothing is installed on the simulated kiosks)
    stations = sorted(a.station for a in c.fleet.agents)
    rollout_id = scheduled_rollout(c.api, stations, version="9.9.9-e2e", waves=(25, 100))
    page = c.page()
    c.sign_in(page, "liu.release")
    page.goto(c.base + "/rollouts")
    page.click(f'tr[data-rollout="{rollout_id}"] a')
    page.wait_for_selector("#rollout-state")
    rows = page.eval_on_selector_all("tr[data-progress]", "rs => rs.length")
    shown = c.api.get(f"/api/rollouts/{rollout_id}").json()
    assert rows == len(shown["stations"]) == len(stations)
    # a wave's count opens its stations
    wave = min(w["wave"] for w in shown["wave_summary"] if w["wave"] >= 1)
    page.click(f'tr[data-wave="{wave}"] td:nth-child(3) a')
    page.wait_for_selector("#rollout-filter")
    assert page.eval_on_selector_all(
        "tr[data-station]", "rs => rs.map(r => r.dataset.station)"
    ) == [s["station"] for s in shown["stations"] if s["wave"] == wave]
    page.click("#rollout-filter a")
    page.wait_for_selector("#rollout-filter", state="detached")
    page.click('button[data-rollout-action="pause"]')
    page.wait_for_selector('#rollout-state[data-state="paused"]', timeout=5000)
    assert "已暂停" in page.inner_text("#rollout-result")
    assert c.api.get(f"/api/rollouts/{rollout_id}").json()["state"] == "paused"
    c.shot(page, "rollout-zh-1920")
    page.click('button[data-rollout-action="resume"]')
    page.wait_for_function(
        "document.getElementById('rollout-state').dataset.state !== 'paused'", timeout=5000
    )
    assert c.api.get(f"/api/rollouts/{rollout_id}").json()["state"] in ("scheduled", "running")
    page.click('button[data-rollout-action="abort"]')
    page.wait_for_selector('#rollout-state[data-state="aborted"]', timeout=5000)
    page.context.close()


def test_an_unknown_station_is_a_404_page(console: Console) -> None:
    page = console.page()
    response = page.goto(console.base + f"/stations/nope-{uuid.uuid4().hex[:6]}")
    assert response is not None and response.status == 404
    assert "没有站点" in page.inner_text("main")
    page.context.close()
