"""Rollouts through the API (CONTRACT §4) without a broker: the controller is never started;
its rollout runner's passes are called by the test (``tick``), the stations and their
``update`` events are written by the real ``FleetStore`` into ``event_batch``, where the
runner reads them. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from kioskfleet.controller.app import create_app
from kioskfleet.controller.config import Settings
from kioskfleet.controller.db import migrate
from kioskfleet.controller.models import Audit, CommandRecord, EventBatch, RolloutCursor
from kioskfleet.controller.rollout_runner import RolloutRunner
from kioskfleet.controller.service import Controller
from kioskfleet.controller.store import FleetStore
from kioskfleet.controller.tufrepo.service import create_demo_repository
from kioskfleet.updates.software import build_software
from tests.conftest import AUTH, TEST_TOKEN, acting
from tests.test_api import T0, _birth, _message

STATIONS = [f"wx-binhu-gov-{n:02d}" for n in range(1, 6)]


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def controller(db_url: str, tmp_path: Path) -> Iterator[Controller]:
    tuf = create_demo_repository(tmp_path / "tuf")
    controller = Controller(
        Settings(bootstrap_token=TEST_TOKEN, db_url=db_url, tuf=tuf)
    )  # never started: no broker
    migrate(controller.engine)
    FleetStore(controller.engine).apply(
        [_birth(s, "Binhu", versions={"agent": "0.1.0"}) for s in STATIONS]
        + [
            _message(
                "state",
                "wx-xishan-bank-01",
                online=True,
                district="Xishan",
                site="Bank of Jiangsu Anzhen Sub-branch",
                site_type="bank_agent_branch",
                profile="bank-agent-gen1",
                telemetry_interval=10,
            )
        ],
        now=T0,
    )
    yield controller
    controller.engine.dispose()


@pytest.fixture
def app(controller: Controller) -> FastAPI:
    return create_app(controller.settings, controller)


def call(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, headers=AUTH, base_url="http://controller"
        ) as client:
            return await client.request(method, path, **acting(app, kwargs))

    return asyncio.run(run())


def publish(app: FastAPI, version: str) -> str:
    data = build_software(version, {"bin/agent": version.encode()})
    answer = call(
        app,
        "POST",
        "/api/releases",
        data={"kind": "software", "version": version},
        files={"file": ("r.tar.gz", data, "application/gzip")},
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def runner(controller: Controller, clock: Clock) -> RolloutRunner:
    return RolloutRunner(controller.engine, lambda stations: 0, clock=clock, rejudge=0.0)


def report(
    controller: Controller, station: str, seq: int, rollout: str, progress: str, **extra: Any
) -> None:
    event = {
        "type": "update",
        "release": "software-r1",
        "rollout": rollout,
        "progress": progress,
        **extra,
    }
    FleetStore(controller.engine).apply(
        [_message("events", station, seq=seq, ts=T0 + 200 + seq, events=[event])],
        now=T0 + 200 + seq,
    )


def rows(controller: Controller, model: Any) -> list[Any]:
    with controller.engine.connect() as conn:
        return list(conn.execute(select(model.__table__)))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"release": "software-r99"}, "no release 'software-r99'"),
        ({"release": "software-r1", "waves": [50, 10, 100]}, "must grow"),
        ({"release": "software-r1", "waves": [10, 50]}, "last wave must be 100"),
        ({"release": "software-r1", "waves": []}, "at least 1"),
        ({"release": "software-r1", "failure_threshold": 1.5}, "less than 1"),
        ({"release": "software-r1", "on_failure": "explode"}, "'pause' or 'abort'"),
        ({"release": "software-r1", "target": {"stations": ["wx-nowhere-01"]}}, "unknown station"),
        ({"release": "software-r1", "target": {"districts": ["Atlantis"]}}, "selects no known"),
        ({"release": "software-r1", "target": {"towns": ["x"]}}, "Extra inputs"),
        ({"release": "software-r1", "start_at": "2026-12-01T01:00:00"}, "timezone"),
        ({"release": "software-r1", "deadline": "2020-01-01T00:00:00Z"}, "in the future"),
        ({"release": "software-r1", "colour": "red"}, "Extra inputs"),
    ],
)
def test_a_bad_rollout_is_refused_with_422(
    app: FastAPI, body: dict[str, Any], message: str
) -> None:
    publish(app, "1.0.0")
    answer = call(app, "POST", "/api/rollouts", json=body)
    assert answer.status_code == 422, answer.text
    assert message in answer.text
    assert call(app, "GET", "/api/rollouts").json() == {"items": [], "total": 0}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/rollouts/nope"),
        ("POST", "/api/rollouts/nope/pause"),
        ("POST", "/api/rollouts/nope/resume"),
        ("POST", "/api/rollouts/nope/abort"),
        ("POST", "/api/rollouts/nope/revert"),
    ],
)
def test_an_unknown_rollout_is_404(app: FastAPI, method: str, path: str) -> None:
    answer = call(app, method, path)
    assert answer.status_code == 404
    assert "no rollout 'nope'" in answer.json()["detail"]


def test_a_rollout_goes_wave_by_wave_from_the_stations_events(
    app: FastAPI, controller: Controller
) -> None:
    clock = Clock()
    release = publish(app, "1.0.0")
    created = call(
        app,
        "POST",
        "/api/rollouts",
        json={"release": release, "target": {"districts": ["Binhu"]}, "waves": [40, 100]},
    )
    assert created.status_code == 201, created.text
    body = created.json()
    rollout = body["id"]
    assert body["state"] == "scheduled"  # the runner starts it (not running in this test)
    assert body["success_threshold"] == pytest.approx(0.8)
    assert {s["station"] for s in body["stations"]} == set(STATIONS)  # the bank is not in Binhu
    assert all(s["progress"] == "pending" and s["error"] is None for s in body["stations"])
    waves = {s["station"]: s["wave"] for s in body["stations"]}
    assert sorted(waves.values()) == [0, 1, 2, 2, 2]  # one profile: one canary; 40 % = 2

    run = runner(controller, clock)
    run.tick()
    got = call(app, "GET", f"/api/rollouts/{rollout}").json()
    assert (got["state"], got["wave"]) == ("running", 0)
    canary = next(s for s, w in waves.items() if w == 0)
    (command,) = rows(controller, CommandRecord)
    assert (command.station, command.name) == (canary, "install")
    assert command.args["release"] == release and command.args["rollout"] == rollout
    assert command.args["target"] == "software/kioskfleet-1.0.0-r1.tar.gz"
    assert command.sent_at is None  # no broker here: pending, as for an offline station

    report(controller, canary, 1, rollout, "downloading")
    report(controller, canary, 2, rollout, "healthy")
    run.tick()
    got = call(app, "GET", f"/api/rollouts/{rollout}").json()
    assert (got["state"], got["wave"]) == ("running", 1)
    assert {s["station"]: s["progress"] for s in got["stations"]}[canary] == "healthy"
    (first,) = [s for s, w in waves.items() if w == 1]
    assert {c.station for c in rows(controller, CommandRecord)} == {canary, first}

    # the wave-1 station rolls back: 1 of 1 finished failed > 0.2 → paused, with its error
    report(controller, first, 1, rollout, "installed")
    report(controller, first, 2, rollout, "rolled_back", error="health probe failed 6 times")
    report(controller, first, 1, rollout, "downloading")  # a late duplicate changes nothing
    run.tick()
    got = call(app, "GET", f"/api/rollouts/{rollout}").json()
    assert got["state"] == "paused" and "1 of 1 finished failed" in got["reason"]
    mine = next(s for s in got["stations"] if s["station"] == first)
    assert (mine["progress"], mine["error"]) == ("rolled_back", "health probe failed 6 times")
    assert got["summary"]["healthy"] == 1 and got["summary"]["rolled_back"] == 1
    assert len(rows(controller, CommandRecord)) == 2  # wave 2 never started

    # 409s from the state; a person resumes: wave 1 accepted as is, wave 2 starts
    assert call(app, "POST", f"/api/rollouts/{rollout}/pause").status_code == 409
    resumed = call(
        app,
        "POST",
        f"/api/rollouts/{rollout}/resume",
        json={"by": "zhang.min", "note": "known printer issue"},
    )
    assert resumed.status_code == 200 and resumed.json()["state"] == "running"
    assert call(app, "POST", f"/api/rollouts/{rollout}/resume").status_code == 409
    run.tick()
    got = call(app, "GET", f"/api/rollouts/{rollout}").json()
    assert got["wave"] == 2 and len(rows(controller, CommandRecord)) == 5
    aborted = call(app, "POST", f"/api/rollouts/{rollout}/abort", json={"by": "zhang.min"})
    assert aborted.status_code == 200 and aborted.json()["state"] == "aborted"
    assert call(app, "POST", f"/api/rollouts/{rollout}/abort").status_code == 409
    # the abort withdrew the install commands still waiting for their stations
    for command in rows(controller, CommandRecord):
        if command.station in {s for s, w in waves.items() if w == 2}:
            assert command.expires_at <= time.time() < clock.now + 3600

    actions = [
        (a.action, a.actor) for a in rows(controller, Audit) if a.target in (rollout, release)
    ]
    assert ("rollout.create", "bootstrap") in actions
    assert ("rollout.paused", f"rollout:{rollout}") in actions
    assert ("rollout.resume", "zhang.min") in actions
    assert ("rollout.abort", "zhang.min") in actions
    listed = call(app, "GET", "/api/rollouts").json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == rollout
    assert listed["items"][0]["summary"]["rolled_back"] == 1


def test_the_runner_resumes_reading_where_it_stopped(app: FastAPI, controller: Controller) -> None:
    clock = Clock()
    release = publish(app, "1.0.0")
    rollout = call(
        app,
        "POST",
        "/api/rollouts",
        json={"release": release, "target": {"stations": [STATIONS[0]]}},
    ).json()["id"]
    runner(controller, clock).tick()
    report(controller, STATIONS[0], 1, rollout, "failed", error="disk full")
    runner(controller, clock).tick()
    (cursor,) = rows(controller, RolloutCursor)
    assert cursor.value >= 1
    # a new runner (a restarted controller) does not read the same events again
    again = runner(controller, clock)
    with controller.engine.begin() as conn:
        from kioskfleet.controller.rollouts import read_progress

        assert read_progress(conn=conn).batches == 0
    again.tick()
    got = call(app, "GET", f"/api/rollouts/{rollout}").json()
    assert got["state"] == "paused"
    assert got["stations"][0]["error"] == "disk full"


def test_revert_ships_the_previous_content_under_a_new_counter(
    app: FastAPI, controller: Controller
) -> None:
    first = publish(app, "1.0.0")
    assert call(app, "POST", "/api/rollouts", json={"release": first}).status_code == 201
    only = call(app, "GET", "/api/rollouts").json()["items"][0]["id"]
    answer = call(app, "POST", f"/api/rollouts/{only}/revert")
    assert answer.status_code == 409 and "nothing to revert to" in answer.text

    second = publish(app, "1.1.0")
    rollout = call(app, "POST", "/api/rollouts", json={"release": second, "waves": [100]}).json()[
        "id"
    ]
    reverted = call(app, "POST", f"/api/rollouts/{rollout}/revert", json={"by": "li.wei"})
    assert reverted.status_code == 201, reverted.text
    body = reverted.json()
    assert body["release"] == "software-r3" and body["reverts"] == rollout
    assert body["version"] == "1.0.0" and body["waves"] == [100]
    assert call(app, "GET", f"/api/rollouts/{rollout}").json()["state"] == "aborted"
    releases = {r["id"]: r for r in call(app, "GET", "/api/releases").json()["items"]}
    assert (
        releases["software-r3"]["targets"][0]["sha256"] == releases[first]["targets"][0]["sha256"]
    )
    assert releases["software-r3"]["targets"][0]["name"] == "software/kioskfleet-1.0.0-r3.tar.gz"
    actions = [(a.action, a.actor) for a in rows(controller, Audit)]
    assert ("rollout.revert", "li.wei") in actions and ("rollout.abort", "li.wei") in actions


def test_a_catalogue_rollout_sends_each_station_its_site_types_target(
    app: FastAPI, controller: Controller
) -> None:
    from datetime import UTC, datetime

    from kioskfleet.fleetsim.catalogue import demo_catalogue
    from kioskfleet.updates.catalogue import canonical

    data = canonical(demo_catalogue("2026.12", effective_from=datetime.now(UTC)))
    answer = call(
        app,
        "POST",
        "/api/releases",
        data={"kind": "catalogue", "version": "2026.12"},
        files={"file": ("c.json", data, "application/json")},
    )
    assert answer.status_code == 201, answer.text
    rollout = call(
        app,
        "POST",
        "/api/rollouts",
        json={"release": "catalogue-r1", "canary": False, "waves": [100]},
    ).json()["id"]
    runner(controller, Clock()).tick()
    targets = {c.station: c.args["target"] for c in rows(controller, CommandRecord)}
    assert targets["wx-xishan-bank-01"] == "catalogue/bank_agent_branch-2026.12-r1.json"
    assert targets[STATIONS[0]] == "catalogue/government_service_center-2026.12-r1.json"
    assert call(app, "GET", f"/api/rollouts/{rollout}").json()["state"] == "running"


def test_events_stored_before_the_first_pass_ever_are_not_read(
    app: FastAPI, controller: Controller
) -> None:
    from kioskfleet.controller.rollouts import read_progress

    for seq in range(1, 4):
        report(controller, STATIONS[0], seq, "old-rollout", "healthy")
    with controller.engine.begin() as conn:
        assert read_progress(conn=conn).batches == 0  # the cursor starts at the newest stored batch
    report(controller, STATIONS[0], 4, "old-rollout", "healthy")
    with controller.engine.begin() as conn:
        assert read_progress(conn=conn).batches == 1
    (cursor,) = rows(controller, RolloutCursor)
    assert cursor.value == max(r.id for r in rows(controller, EventBatch))


def test_start_at_waits_and_the_deadline_fails_what_has_not_finished(
    app: FastAPI, controller: Controller
) -> None:
    from datetime import UTC, datetime

    clock = Clock()
    release = publish(app, "1.0.0")
    start, deadline = clock.now + 600, clock.now + 3600
    created = call(
        app,
        "POST",
        "/api/rollouts",
        json={
            "release": release,
            "target": {"stations": STATIONS[:2]},
            "waves": [100],
            "canary": False,
            "start_at": datetime.fromtimestamp(start, UTC).isoformat(),
            "deadline": datetime.fromtimestamp(deadline, UTC).isoformat(),
        },
    ).json()
    rollout = created["id"]
    run = runner(controller, clock)
    run.tick()
    assert call(app, "GET", f"/api/rollouts/{rollout}").json()["state"] == "scheduled"
    assert rows(controller, CommandRecord) == []
    clock.now = start + 1  # (the ISO time keeps microseconds only)
    run.tick()
    commands_sent = rows(controller, CommandRecord)
    assert len(commands_sent) == 2
    # the agent is told the deadline; the command waits no longer than it
    assert all(c.args["deadline"] == pytest.approx(deadline) for c in commands_sent)
    assert all(c.expires_at == pytest.approx(deadline) for c in commands_sent)
    report(controller, STATIONS[0], 1, rollout, "healthy")
    report(controller, STATIONS[1], 1, rollout, "deferred", reason="outside the maintenance window")
    run.tick()
    got = call(app, "GET", f"/api/rollouts/{rollout}").json()
    waiting = {s["station"]: s for s in got["stations"]}[STATIONS[1]]
    assert waiting["progress"] == "deferred" and "maintenance window" in waiting["error"]
    clock.now = deadline + 1
    run.tick()
    got = call(app, "GET", f"/api/rollouts/{rollout}").json()
    assert (got["state"], got["reason"]) == ("completed", "deadline")
    final = {s["station"]: s for s in got["stations"]}
    assert final[STATIONS[0]]["progress"] == "healthy"
    assert final[STATIONS[1]]["progress"] == "failed"
    assert final[STATIONS[1]]["error"].startswith("deadline")


def test_a_large_wave_starts_over_several_passes_and_a_report_is_judged_at_once(
    app: FastAPI, controller: Controller
) -> None:
    clock = Clock()
    release = publish(app, "1.0.0")
    rollout = call(
        app,
        "POST",
        "/api/rollouts",
        json={
            "release": release,
            "target": {"districts": ["Binhu"]},
            "waves": [100],
            "canary": False,
        },
    ).json()["id"]
    run = RolloutRunner(controller.engine, lambda stations: 0, clock=clock, sends_per_pass=2)
    assert [run.tick(), run.tick(), run.tick(), run.tick()] == [2, 2, 1, 0]
    assert len(rows(controller, CommandRecord)) == 5
    # judged a moment ago (not due again for 10 s), but a station reported: judged now
    report(controller, STATIONS[0], 1, rollout, "failed", error="disk full")
    clock.now += 1
    run.tick()
    assert call(app, "GET", f"/api/rollouts/{rollout}").json()["state"] == "paused"
