"""The same fleet on the machine's running Mosquitto (127.0.0.1:1883, Debian's defaults).

The product's own broker configuration is not required to work: this checks we rely on
nothing but standard MQTT. The test cleans up what it leaves on the shared broker (retained
states, the controller's persistent session).
"""

from __future__ import annotations

import socket
import sqlite3
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import LoopThread, wait_until
from tests.integration.fleet_helpers import make_fleet, served_controller

pytestmark = [pytest.mark.mosquitto]

SYSTEM = ("127.0.0.1", 1883)


def _reachable() -> bool:
    try:
        with socket.create_connection(SYSTEM, 1):
            return True
    except OSError:
        return False


def _clean(client_id: str, prefix: str) -> None:
    topics: set[str] = set()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cleanup-{uuid.uuid4().hex[:6]}")

    def collect(cl: mqtt.Client, userdata: object, m: mqtt.MQTTMessage) -> None:
        station = m.topic.split("/")[2]
        if m.retain and (station.startswith(f"{prefix}-") or station == "controller"):
            topics.add(m.topic)

    barrier = f"kf-test/barrier/{uuid.uuid4().hex}"
    reached = threading.Event()

    def collect_or_barrier(cl: mqtt.Client, userdata: object, m: mqtt.MQTTMessage) -> None:
        if m.topic == barrier:
            reached.set()
        else:
            collect(cl, userdata, m)

    c.on_message = collect_or_barrier
    c.connect(*SYSTEM)
    c.subscribe([("fleet/v1/+/state", 1), (barrier, 1)])
    c.loop_start()
    # the broker hands out the retained states on SUBACK, before our barrier comes back
    c.publish(barrier, b"", qos=1)
    assert reached.wait(10), "the broker never echoed our barrier"
    for topic in topics:
        c.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()
    # end the controller's persistent session, so the broker stops queueing for it
    d = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    connected = threading.Event()
    d.on_connect = lambda *args: connected.set()
    d.connect(*SYSTEM, clean_start=True)
    d.loop_start()
    connected.wait(10)  # the CONNACK: the old session is gone
    d.disconnect()
    d.loop_stop()


def test_twenty_stations_on_the_running_mosquitto(tmp_path: Path, loop_thread: LoopThread) -> None:
    if not _reachable():
        pytest.skip("no Mosquitto on 127.0.0.1:1883 (CI has one)")
    url = "mqtt://127.0.0.1:1883"
    client_id = f"ctl-sys-{uuid.uuid4().hex[:6]}"
    fleet = None
    try:
        with served_controller(f"sqlite:///{tmp_path / 'c.db'}", url, client_id=client_id) as (
            _,
            api,
        ):
            fleet = make_fleet(loop_thread, url, 20, interval=1.0)
            prefix = fleet.agents[0].station.rsplit("-", 1)[0]
            ids = {a.station for a in fleet.agents}

            def online() -> int:
                items = api.get("/api/stations", params={"limit": 1000, "status": "online"}).json()[
                    "items"
                ]
                return sum(1 for s in items if s["id"] in ids)

            wait_until(lambda: online() == 20)
            # a network failure (no DISCONNECT): the will marks it offline, then it comes back
            # and sends what it queued meanwhile
            dropped = fleet.agents[0]
            loop_thread.call(lambda: dropped.link.abort(reconnect=True))

            def statuses() -> list[str]:
                detail = api.get(f"/api/stations/{dropped.station}").json()
                return [h["status"] for h in detail["history"]]

            wait_until(lambda: statuses()[:2] == ["online", "offline"], timeout=15)
            loop_thread.call(fleet.stop_producing)
            assert loop_thread.run(fleet.wait_confirmed(30), timeout=40) == 0
            sent = fleet.result().sent
            # the system broker is shared: the summary may count other clients' stations too,
            # so count what the controller stored for this fleet's own stations
            marks = ",".join("?" * len(ids))
            with sqlite3.connect(tmp_path / "c.db") as db:
                stored = {
                    kind: db.execute(
                        f"SELECT count(*) FROM {table} WHERE station IN ({marks})", sorted(ids)
                    ).fetchone()[0]
                    for kind, table in (("telemetry", "telemetry"), ("events", "event_batch"))
                }
            assert stored == sent
            loop_thread.run(fleet.stop())
            fleet = None
    finally:
        if fleet is not None:
            loop_thread.run(fleet.stop())
        _clean(client_id, prefix if "prefix" in locals() else "t")
