"""Commands to the real agent (`run_agent`) through a real Mosquitto: a redelivered command runs
once, out of service reaches the birth and the local service, restart_agent exits with 75."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from kioskfleet.agent.commands import RESTART_EXIT_CODE
from kioskfleet.agent.service import run_agent
from kioskfleet.drivers.registry import driver_module
from kioskfleet.drivers.simulator import PtyServer
from kioskfleet.protocol import decode_agent_message
from tests.conftest import Mosquitto, free_port, wait_until
from tests.integration.fleet_helpers import printer_only_agent

pytestmark = [pytest.mark.mosquitto]

STATION = "wx-binhu-sub-07"


def test_a_redelivered_command_runs_once_and_restart_agent_exits_for_the_supervisor(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    local_port = free_port()
    printer = driver_module("escpos").make_simulator(None)
    server = PtyServer(printer).start()
    config = printer_only_agent(
        station=STATION,
        broker=mosquitto.url,
        state_dir=tmp_path,
        printer_port=server.port,
        local_port=local_port,
        telemetry_interval=5,
    )
    seen: list[tuple[str, dict[str, Any]]] = []
    subscribed = threading.Event()
    operator = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="operator-cmds")
    operator.on_message = lambda c, u, m: seen.append((m.topic, json.loads(m.payload)))
    operator.on_subscribe = lambda *a: subscribed.set()
    operator.connect("127.0.0.1", mosquitto.port)
    operator.subscribe(f"fleet/v1/{STATION}/#", qos=1)
    operator.loop_start()
    assert subscribed.wait(10)

    def births() -> list[dict[str, Any]]:
        return [p for t, p in list(seen) if t.endswith("/state") and p["online"]]

    def replies(command_id: str) -> list[dict[str, Any]]:
        return [p for t, p in list(seen) if t.endswith("/reply") and p["id"] == command_id]

    def send(name: str, command_id: str, args: dict[str, Any] | None = None) -> None:
        body = {"id": command_id, "expires_at": time.time() + 60, "args": args or {}}
        info = operator.publish(f"fleet/v1/{STATION}/cmd/{name}", json.dumps(body), qos=1)
        info.wait_for_publish(10)

    token_file = tmp_path / "local-service.token"
    outcome: dict[str, Any] = {}

    async def scenario() -> None:
        task = asyncio.create_task(run_agent(config, asyncio.Event()))
        await asyncio.to_thread(wait_until, lambda: bool(births()))
        assert births()[0]["in_service"] is True
        # the controller sends out_of_service; the broker (or the controller after a
        # reconnect) delivers it twice
        send("out_of_service", "cmd-1")
        send("out_of_service", "cmd-1")
        await asyncio.to_thread(wait_until, lambda: len(replies("cmd-1")) == 2)
        await asyncio.to_thread(wait_until, lambda: len(births()) == 2)
        headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{local_port}") as local:
            status = await local.get("/v1/status", headers=headers, timeout=15)
            cash_in = await local.post("/v1/cash-in", json={}, headers=headers, timeout=15)
        outcome["status"], outcome["cash_in"] = status.json(), cash_in
        send("restart_agent", "cmd-2")
        outcome["exit"] = await asyncio.wait_for(task, 30)
        await asyncio.to_thread(
            wait_until, lambda: any(t.endswith("/state") and not p["online"] for t, p in seen)
        )

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
        operator.loop_stop()
        operator.disconnect()

    first, second = replies("cmd-1")
    # executed once: a second run would have found the station already out of service
    assert first["result"] == second["result"] == {"in_service": False, "changed": True}
    assert first["status"] == second["status"] == "ok" and second["seq"] > first["seq"]
    birth_after = births()[1]
    assert birth_after["in_service"] is False and birth_after["session"] == births()[0]["session"]
    assert len(births()) == 2  # one new birth for the one change
    assert outcome["status"]["in_service"] is False
    assert outcome["cash_in"].status_code == 409
    assert outcome["cash_in"].json()["code"] == "out_of_service"
    (restart,) = replies("cmd-2")
    assert restart["status"] == "ok" and restart["result"] == {"restarting": True}
    assert outcome["exit"] == RESTART_EXIT_CODE
    states = [p for t, p in seen if t.endswith("/state")]
    assert states[-1]["online"] is False  # a clean goodbye before the supervisor restarts it
    for topic, payload in seen:
        if "/cmd/" in topic:
            continue  # the operator's own commands
        decode_agent_message(topic.rsplit("/", 1)[1], STATION, json.dumps(payload).encode())
