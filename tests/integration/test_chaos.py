"""Nothing lost, nothing stored twice: broker restarts and crashes, controller crashes.

Each test runs `kioskfleet simulate` and `kioskfleet controller` as processes against a private
Mosquitto started from deploy/, breaks something in the middle of the stream, and then compares
what the simulator says the broker acknowledged with what the controller says it stored.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import Mosquitto, wait_until
from tests.integration.fleet_helpers import GarbagePublisher, garbage_cases
from tests.integration.processes import ControllerProcess, SimulateProcess

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]


def _run(mosquitto: Mosquitto, tmp_path: Path, chaos: str, db_url: str | None = None) -> None:
    controller = ControllerProcess(
        db_url or f"sqlite:///{tmp_path / 'c.db'}", mosquitto.url, tmp_path
    ).start()
    sim = SimulateProcess(
        mosquitto.url,
        "--stations",
        "15",
        "--duration",
        "20",
        "--telemetry-interval",
        "0.5",
        "--fault-rate",
        "600",
        "--keepalive",
        "5",
        "--id-prefix",
        "chaos",
    )
    # garbage next to the fleet, on a real station's topics and a stranger's: refused and
    # counted, and the exact accounting of the good messages must not notice it
    garbage = (
        GarbagePublisher(mosquitto.port, ["chaos-0003", "wx-garbage-01"]).start()
        if chaos in ("controller_kill", "both")
        else None
    )

    def ingested() -> int:
        try:
            return int(controller.summary()["ingested"]["telemetry"])
        except httpx.HTTPError:
            return 0  # the controller is away (killed) or not serving yet

    try:
        # the chaos strikes mid-stream: once the fleet is reporting and being stored
        wait_until(lambda: ingested() > 100, timeout=30, every=0.2)
        if chaos in ("broker_restart", "both"):
            mosquitto.stop()
            time.sleep(1)  # the outage itself
            mosquitto.start()
        if chaos == "broker_kill":
            mosquitto.kill()
            time.sleep(1)
            mosquitto.start()
        if chaos == "writer_kill":
            killed = controller.kill_writer()
            # the controller starts a new writer and hands it every batch not yet committed
            wait_until(lambda: controller.writer_pids() not in ([], [killed]), timeout=15)
        if chaos in ("controller_kill", "both"):
            # storing again (after a broker restart too) when it is killed
            before = ingested()
            wait_until(lambda: ingested() > before + 50, timeout=30, every=0.2)
            controller.kill()
            time.sleep(2)  # the outage itself: the fleet goes on queueing meanwhile
            controller.start()
        result = sim.result()
        confirmed = garbage.stop() if garbage is not None else 0
        assert result["unconfirmed"] == 0, result
        summary = controller.summary()
        assert summary["ingested"] == result["sent"], (summary, result)
        assert result["sent"]["telemetry"] > 15 * 20
        assert result["sent"]["events"] > 0
        if garbage is not None:
            assert confirmed > 50
            # every bad message the broker confirmed is refused and counted at least once: it
            # is counted in the transaction of its batch, and acked to the broker only after
            # that commit, so a kill -9 before the commit means a redelivery, never a loss
            # (the broker keeps the controller's persistent session across a graceful
            # restart). A redelivery after the kill or the reconnect may count one twice.
            wait_until(lambda: controller.summary()["rejected"] >= confirmed, timeout=15)
    finally:
        if garbage is not None:
            garbage.stop()
        sim.kill()
        controller.stop()


def test_broker_restarted_mid_stream(mosquitto: Mosquitto, tmp_path: Path) -> None:
    _run(mosquitto, tmp_path, "broker_restart")


def test_broker_killed_mid_stream(mosquitto: Mosquitto, tmp_path: Path) -> None:
    _run(mosquitto, tmp_path, "broker_kill")


def test_controller_killed_mid_ingest(mosquitto: Mosquitto, tmp_path: Path) -> None:
    _run(mosquitto, tmp_path, "controller_kill")


def test_ingest_writer_killed_mid_ingest(mosquitto: Mosquitto, tmp_path: Path) -> None:
    _run(mosquitto, tmp_path, "writer_kill")


@pytest.mark.postgres
def test_broker_restart_and_controller_kill_on_postgres(
    mosquitto: Mosquitto, tmp_path: Path, pg_url: str
) -> None:
    _run(mosquitto, tmp_path, "both", db_url=pg_url)


def test_garbage_queued_for_the_controller_across_a_broker_restart_is_counted(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The mechanism behind the exact garbage count: bad messages the broker confirmed while
    the controller was away — killed, and the broker restarted meanwhile — wait in the
    controller's persistent session and are each refused and counted once it is back. (With
    a broker that saves nothing, the restart dropped that session: what was queued, and
    what came before the controller subscribed again, was lost. Stations re-send the good
    messages the controller did not confirm; bad ones nobody re-sends.)"""
    controller = ControllerProcess(
        f"sqlite:///{tmp_path / 'c.db'}", mosquitto.url, tmp_path
    ).start()
    try:
        controller.kill()
        mosquitto.stop()
        mosquitto.start()
        cases = garbage_cases("wx-garbage-02")
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="garbage-once")
        client.connect("127.0.0.1", mosquitto.port)
        client.loop_start()
        try:
            for topic, payload in cases:
                info = client.publish(topic, payload, qos=1)
                info.wait_for_publish(5)
                assert info.is_published()  # the broker confirmed it
        finally:
            client.loop_stop()
            client.disconnect()
        controller.start()
        wait_until(lambda: controller.summary()["rejected"] >= len(cases), timeout=15)
        assert controller.summary()["rejected"] == len(cases)
    finally:
        controller.stop()
