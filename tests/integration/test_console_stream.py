"""``GET /api/events`` over HTTP from a served controller: a station's status change reaches the
stream within a second of the API showing it."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LoopThread, Mosquitto, wait_until
from tests.integration.fleet_helpers import make_fleet, served_controller, station_status

pytestmark = pytest.mark.mosquitto


def test_a_status_change_reaches_the_event_stream(
    mosquitto: Mosquitto, tmp_path: Path, loop_thread: LoopThread
) -> None:
    with served_controller(f"sqlite:///{tmp_path / 'c.db'}", mosquitto.url) as (served, api):
        fleet = make_fleet(loop_thread, mosquitto.url, 2, interval=1.0)
        try:
            wait_until(lambda: api.get("/api/fleet/summary").json()["online"] == 2)
            agent = fleet.agents[1]
            events: list[tuple[str, Any, float]] = []
            opened = threading.Event()

            def listen() -> None:
                with (
                    httpx.Client(base_url=api.base_url, timeout=30, headers=api.headers) as client,
                    client.stream("GET", "/api/events") as response,
                ):
                    assert response.headers["content-type"].startswith("text/event-stream")
                    name = ""
                    for line in response.iter_lines():
                        if line.startswith("event: "):
                            name = line.removeprefix("event: ")
                        elif line.startswith("data: "):
                            events.append((name, json.loads(line[6:]), time.monotonic()))
                            opened.set()
                            if name == "changes":
                                return

            reader = threading.Thread(target=listen, daemon=True)
            reader.start()
            assert opened.wait(10)
            assert events[0][:2] == ("hello", {})
            printer = next(s for s in agent.coordinator.sources if s.slot == "printer")
            loop_thread.call(printer.break_now)  # type: ignore[attr-defined]
            wait_until(lambda: station_status(api, agent.station) == "degraded", timeout=20)
            seen_by_api = time.monotonic()
            reader.join(10)
            name, data, at = events[-1]
            assert name == "changes"
            assert {"station": agent.station, "old": "online", "new": "degraded"} in data["changes"]
            assert at - seen_by_api < 1.0
            assert served.controller.live.published >= 1
        finally:
            loop_thread.run(fleet.stop())
