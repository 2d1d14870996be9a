"""Commands from the API to simulated stations over a real Mosquitto (CONTRACT §4): an online
station answers at once; an offline one gets its command at its next birth; an expired
command is never sent. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from kioskfleet.agent.agent import StationIdentity
from kioskfleet.controller.config import Settings
from kioskfleet.controller.service import Controller
from kioskfleet.fleetsim.fleet import Fleet, FleetSpec, wuxi_fleet
from kioskfleet.protocol.broker_url import parse_broker_url
from tests.conftest import LoopThread, Mosquitto, wait_until
from tests.integration.fleet_helpers import served_controller, station_status

pytestmark = [pytest.mark.mosquitto]


def start_fleet(lt: LoopThread, mqtt_url: str, stations: list[StationIdentity]) -> Fleet:
    """A simulated fleet of exactly these stations (the same ones may come back later)."""

    def build() -> Fleet:
        fleet = Fleet(
            FleetSpec(
                stations=stations,
                broker=parse_broker_url(mqtt_url),
                keepalive=5,
                ramp_seconds=0.1,
            )
        )
        fleet.start()
        return fleet

    return lt.call(build)


@contextmanager
def watching(port: int, station: str) -> Iterator[list[dict[str, Any]]]:
    """Every command published to ``station`` (its payloads, with the topic's name added)."""
    seen: list[dict[str, Any]] = []
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4().hex[:8]}")

    def on_message(c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        seen.append({**json.loads(m.payload), "name": m.topic.rsplit("/", 1)[1]})

    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", port)
    client.subscribe(f"fleet/v1/{station}/cmd/#", qos=1)
    client.loop_start()
    assert subscribed.wait(10)
    try:
        yield seen
    finally:
        client.loop_stop()
        client.disconnect()


def command(api: httpx.Client, station: str, command_id: str) -> dict[str, Any]:
    response = api.get(f"/api/stations/{station}/commands/{command_id}")
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def send(api: httpx.Client, station: str, name: str, **body: Any) -> str:
    response = api.post(f"/api/stations/{station}/commands", json={"name": name, **body})
    assert response.status_code == 201, response.text
    command_id: str = response.json()["id"]
    return command_id


def test_an_online_station_answers_its_commands(
    mosquitto: Mosquitto, db_url: str, loop_thread: LoopThread
) -> None:
    stations = wuxi_fleet(1, id_prefix=f"t{uuid.uuid4().hex[:6]}", telemetry_interval=1.0)
    station = stations[0].station
    with served_controller(db_url, mosquitto.url) as (_, api):
        fleet = start_fleet(loop_thread, mosquitto.url, stations)
        try:
            wait_until(lambda: station_status(api, station) in ("online", "degraded"))
            with watching(mosquitto.port, station) as seen:
                tested = send(api, station, "self_test", ttl_s=30)
                unknown = send(api, station, "install", args={"release": "r1"})
                wait_until(lambda: command(api, station, tested)["state"] == "ok", timeout=15)
                wait_until(lambda: command(api, station, unknown)["state"] == "error", timeout=15)
            done = command(api, station, tested)
            assert done["sent_at"] is not None and done["name"] == "self_test"
            reply = done["reply"]
            assert reply["status"] == "ok" and "printer" in reply["result"]
            # an install without its args is refused with why; the API shows it as an error
            refused = command(api, station, unknown)["reply"]
            assert refused["status"] == "error" and "args.kind must be" in refused["error"]
            # published once each, with the stored id, expiry and args
            ours = [c for c in seen if c["id"] in (tested, unknown)]  # not rebirth or resend
            assert sorted((c["name"], c["id"]) for c in ours) == sorted(
                [("self_test", tested), ("install", unknown)]
            )
            (published,) = [c for c in seen if c["id"] == unknown]
            assert published["args"] == {"release": "r1"}
            listed = api.get(f"/api/stations/{station}/commands").json()
            assert [c["id"] for c in listed["items"]] == [unknown, tested]
        finally:
            loop_thread.run(fleet.stop())


def test_an_offline_station_gets_its_command_at_its_next_birth_but_never_an_expired_one(
    mosquitto: Mosquitto, db_url: str, loop_thread: LoopThread
) -> None:
    stations = wuxi_fleet(2, id_prefix=f"t{uuid.uuid4().hex[:6]}", telemetry_interval=1.0)
    station, other = stations[0].station, stations[1].station
    with served_controller(db_url, mosquitto.url) as (_, api):
        fleet = start_fleet(loop_thread, mosquitto.url, stations[:1])
        wait_until(lambda: station_status(api, station) in ("online", "degraded"))
        loop_thread.run(fleet.stop())  # a clean goodbye: offline
        wait_until(lambda: station_status(api, station) == "offline", timeout=10)
        back: Fleet | None = None
        try:
            with watching(mosquitto.port, station) as seen:
                waiting = send(api, station, "out_of_service", ttl_s=120)
                too_late = send(api, station, "self_test", ttl_s=1)
                assert command(api, station, waiting)["state"] == "pending"
                wait_until(lambda: command(api, station, too_late)["state"] == "expired")
                # nothing went out while the station was away
                assert [c for c in seen if c["id"] in (waiting, too_late)] == []

                # it comes back (a new agent, a new session, a birth), another station with it
                back = start_fleet(loop_thread, mosquitto.url, [stations[0], stations[1]])
                wait_until(lambda: command(api, station, waiting)["state"] == "ok", timeout=20)
                wait_until(lambda: station_status(api, other) in ("online", "degraded"))
            done = command(api, station, waiting)
            assert done["reply"]["status"] == "ok"
            assert done["reply"]["result"] == {"in_service": False, "changed": True}
            assert done["sent_at"] is not None
            expired = command(api, station, too_late)
            assert (expired["state"], expired["sent_at"], expired["reply"]) == (
                "expired",
                None,
                None,
            )
            # the waiting command went out exactly once; the expired one never
            ours = [(c["name"], c["id"]) for c in seen if c["id"] in (waiting, too_late)]
            assert ours == [("out_of_service", waiting)]
            assert api.get(f"/api/stations/{other}/commands").json()["total"] == 0
        finally:
            if back is not None:
                loop_thread.run(back.stop())


def test_a_command_stored_but_never_published_goes_out_when_the_controller_starts(
    mosquitto: Mosquitto, db_url: str, loop_thread: LoopThread
) -> None:
    stations = wuxi_fleet(1, id_prefix=f"t{uuid.uuid4().hex[:6]}", telemetry_interval=1.0)
    station = stations[0].station
    fleet: Fleet | None = None
    try:
        with served_controller(db_url, mosquitto.url) as (_, api):
            fleet = start_fleet(loop_thread, mosquitto.url, stations)
            wait_until(lambda: station_status(api, station) in ("online", "degraded"))
        # the controller is gone, the station stays connected (online in the database); a
        # command is stored and not published, as when a controller stops between the two
        # (an unstarted controller has no broker connection: it never claims a command)
        stopped = Controller(Settings(db_url=db_url))
        command_id = stopped.create_command(
            station=station, name="self_test", args={}, ttl_s=60, actor="test"
        )
        stopped.engine.dispose()
        assert command_id is not None
        with served_controller(db_url, mosquitto.url) as (_, api):
            # a slow restart may find the station silent for a moment (its last report older
            # than the silence threshold) until its next telemetry arrives
            wait_until(lambda: station_status(api, station) in ("online", "degraded"))
            wait_until(lambda: command(api, station, command_id)["state"] == "ok", timeout=20)
    finally:
        if fleet is not None:
            loop_thread.run(fleet.stop())
