"""The real agent (`run_agent`) with a real driver on a pty, publishing to a real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from kioskfleet.agent.service import run_agent
from kioskfleet.drivers.registry import driver_module
from kioskfleet.drivers.simulator import PtyServer
from kioskfleet.protocol import decode_agent_message
from tests.conftest import Mosquitto, free_port, wait_until
from tests.integration.fleet_helpers import printer_only_agent

pytestmark = [pytest.mark.mosquitto]

STATION = "wx-binhu-sub-03"


def test_agent_reports_birth_telemetry_device_changes_and_goodbye(
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
        telemetry_interval=0.5,
    )
    seen: list[tuple[str, dict[str, Any]]] = []
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="watcher")
    watcher.on_message = lambda c, u, m: seen.append((m.topic, json.loads(m.payload)))
    watcher.connect("127.0.0.1", mosquitto.port)
    watcher.subscribe(f"fleet/v1/{STATION}/#", qos=1)
    watcher.loop_start()

    def printer_state(state: str) -> bool:
        return any(
            t.endswith("/telemetry") and p["devices"]["printer"]["state"] == state
            for t, p in list(seen)
        )

    def listening() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", local_port)):
            return True
        return False

    token_file = tmp_path / "local-service.token"  # the default: <state_dir>/local-service.token

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(run_agent(config, stop))
        await asyncio.to_thread(wait_until, lambda: printer_state("online") and listening())
        # the kiosk's own application prints a receipt through the local device service,
        # with the token the agent left for it (CONTRACT §6)
        receipt = {
            "lines": ["无锡市民卡缴费", "金额 100.00 元"],
            "qr": "https://example.invalid/r/1",
        }
        token = token_file.read_text().strip()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{local_port}") as local:
            refused = await local.post("/v1/receipts", json=receipt, timeout=15)
            response = await local.post(
                "/v1/receipts",
                json=receipt,
                headers={"Authorization": f"Bearer {token}"},
                timeout=15,
            )
        assert refused.status_code == 401, refused.text
        assert response.status_code == 200, response.text
        printer.set_fault("paper_out")
        await asyncio.to_thread(wait_until, lambda: printer_state("user_error"))
        stop.set()
        await task

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
    time.sleep(0.5)
    watcher.loop_stop()
    watcher.disconnect()

    # every payload the agent sent is valid under the contract
    for topic, payload in seen:
        kind = topic.rsplit("/", 1)[1]
        decode_agent_message(kind, STATION, json.dumps(payload).encode())
    states = [p for t, p in seen if t.endswith("/state")]
    birth, goodbye = states[0], states[-1]
    assert birth["online"] is True and goodbye["online"] is False
    assert birth["session"] == goodbye["session"] and birth["seq"] == 0
    assert birth["devices"]["printer"]["state"] == "online"
    assert birth["devices"]["printer"]["driver"] == "escpos"
    sequenced = [p for t, p in seen if t.endswith(("/telemetry", "/events"))]
    assert [p["seq"] for p in sequenced] == list(range(1, len(sequenced) + 1))
    telemetry = [p for t, p in seen if t.endswith("/telemetry")]
    assert {"cpu_percent", "memory_percent", "disk_percent", "uptime_s"} <= set(
        telemetry[0]["host"]
    )
    assert telemetry[-1]["devices"]["printer"]["state"] == "user_error"
    assert token_file.stat().st_mode & 0o777 == 0o640
    assert "paper_out" in telemetry[-1]["devices"]["printer"]["faults"]
    changes = [e for t, p in seen if t.endswith("/events") for e in p["events"]]
    assert printer.receipts[-1].lines[0] == "无锡市民卡缴费"
    assert any(e["type"] == "transaction" and e["kind"] == "receipt" for e in changes)
    assert any(
        e["type"] == "device_status" and "paper_out" in e["status"]["faults"] for e in changes
    )
