"""The real agent (`run_agent`) with its updater, through a real Mosquitto: a release on
trial is probed and committed (or rolled back, restarting), a due catalogue is swapped in
without a restart, and the birth and ``GET /v1/catalogue`` say so."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from kioskfleet.agent.commands import RESTART_EXIT_CODE
from kioskfleet.agent.service import run_agent
from kioskfleet.agent.updater import SoakPolicy, SoftwareUpdater
from kioskfleet.agent.updater.catalogue import CatalogueStore
from kioskfleet.agent.updater.target import VerifiedTarget
from kioskfleet.drivers.registry import driver_module
from kioskfleet.drivers.simulator import PtyServer
from kioskfleet.fleetsim.catalogue import demo_catalogue
from kioskfleet.protocol import decode_agent_message
from kioskfleet.protocol.catalogue import for_site_type
from tests.conftest import Mosquitto, free_port, wait_until
from tests.integration.fleet_helpers import printer_only_agent
from tests.updater_releases import release

pytestmark = [pytest.mark.mosquitto]

STATION = "wx-binhu-sub-07"
SOAK = SoakPolicy(soak=1.0, interval=0.2, timeout=20.0, max_failures=5)


def _watch(port: int, seen: list[tuple[str, dict[str, Any]]]) -> mqtt.Client:
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{time.monotonic_ns()}")
    watcher.on_message = lambda c, u, m: seen.append((m.topic, json.loads(m.payload)))
    watcher.connect("127.0.0.1", port)
    watcher.subscribe(f"fleet/v1/{STATION}/#", qos=1)
    watcher.loop_start()
    return watcher


def _updates(seen: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str]]:
    return [
        (e["release"], e["progress"])
        for t, p in list(seen)
        if t.endswith("/events")
        for e in p["events"]
        if e["type"] == "update"
    ]


def test_a_healthy_release_is_committed_and_a_due_catalogue_swapped(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    # v1 was installed by the last run, which then restarted; a catalogue is waiting
    software = SoftwareUpdater(state_dir / "software", base_version="0.1.0")
    assert software.install(release(tmp_path, "1.0.0", 1, release_id="rel-1"))
    bundle = for_site_type(
        demo_catalogue("2026.12", effective_from=datetime.now(UTC) - timedelta(minutes=1)),
        "subway_station",
    )
    (tmp_path / "cat.json").write_bytes(bundle.to_json())
    store = CatalogueStore(state_dir / "catalogue", "subway_station")
    store.install(VerifiedTarget(tmp_path / "cat.json", "catalogue", "2026.12", 1, "cat-1"))

    printer = driver_module("escpos").make_simulator(None)
    server = PtyServer(printer).start()
    local_port = free_port()
    config = printer_only_agent(
        station=STATION,
        broker=mosquitto.url,
        state_dir=state_dir,
        printer_port=server.port,
        local_port=local_port,
        telemetry_interval=0.5,
    )
    seen: list[tuple[str, dict[str, Any]]] = []
    watcher = _watch(mosquitto.port, seen)

    async def scenario() -> tuple[int, int, dict[str, Any]]:
        stop = asyncio.Event()
        task = asyncio.create_task(run_agent(config, stop, soak=SOAK))
        await asyncio.to_thread(wait_until, lambda: ("rel-1", "healthy") in _updates(seen))
        token = (state_dir / "local-service.token").read_text().strip()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{local_port}") as local:
            answer = await local.get(
                "/v1/catalogue", headers={"Authorization": f"Bearer {token}"}, timeout=15
            )
        stop.set()
        return await task, answer.status_code, answer.json()

    try:
        code, status, served = asyncio.run(scenario())
    finally:
        server.stop()
    time.sleep(0.3)
    watcher.loop_stop()
    watcher.disconnect()
    assert code == 0
    for topic, payload in seen:
        decode_agent_message(topic.rsplit("/", 1)[1], STATION, json.dumps(payload).encode())
    updates = _updates(seen)
    assert [p for r, p in updates if r == "rel-1"] == ["installed", "healthy"]
    assert [p for r, p in updates if r == "cat-1"] == ["healthy"]
    births = [p for t, p in seen if t.endswith("/state") and p["online"]]
    assert births[0]["versions"]["agent"] == "1.0.0"
    assert births[-1]["versions"] == {"agent": "1.0.0", "catalogue": "2026.12"}
    assert status == 200 and served["version"] == "2026.12"
    assert served["site_type"] == "subway_station"
    state = SoftwareUpdater(state_dir / "software", base_version="0.1.0").state()
    assert state.trial is None and state.installed is not None
    assert state.installed.version == "1.0.0"


def test_a_release_whose_devices_do_not_answer_rolls_back_and_restarts(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    software = SoftwareUpdater(state_dir / "software", base_version="0.1.0")
    assert software.install(release(tmp_path, "1.0.0", 1, release_id="rel-1"))
    config = printer_only_agent(
        station=STATION,
        broker=mosquitto.url,
        state_dir=state_dir,
        printer_port=str(tmp_path / "no-such-port"),  # the printer never answers
        local_port=free_port(),
        telemetry_interval=0.5,
    )
    seen: list[tuple[str, dict[str, Any]]] = []
    watcher = _watch(mosquitto.port, seen)
    started = time.monotonic()
    code = asyncio.run(run_agent(config, asyncio.Event(), soak=SOAK))
    elapsed = time.monotonic() - started
    wait_until(lambda: ("rel-1", "rolled_back") in _updates(seen), timeout=10)
    watcher.loop_stop()
    watcher.disconnect()
    assert code == RESTART_EXIT_CODE
    assert elapsed < SOAK.timeout
    rolled = [
        e for t, p in seen if t.endswith("/events") for e in p["events"] if e["type"] == "update"
    ][-1]
    assert "device printer not answering" in rolled["error"]
    assert software.running_version() == "0.1.0"  # the next start runs the package again
