"""Controller + simulated stations on a real Mosquitto and a real database (SQLite, PostgreSQL)."""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from kioskfleet.fleetsim.fleet import DISTRICTS, SITE_TYPES
from tests.conftest import LoopThread, Mosquitto, wait_until
from tests.integration.fleet_helpers import make_fleet, served_controller, station_status

pytestmark = [pytest.mark.mosquitto]


def test_twenty_stations_online_then_offline_by_will_and_by_goodbye(
    mosquitto: Mosquitto, db_url: str, loop_thread: LoopThread
) -> None:
    with served_controller(db_url, mosquitto.url) as (served, api):
        fleet = make_fleet(loop_thread, mosquitto.url, 20, interval=1.0)
        ids = [a.station for a in fleet.agents]
        try:
            wait_until(
                lambda: api.get("/api/stations", params={"limit": 1000}).json()["total"] >= 20
            )
            wait_until(
                lambda: (
                    sum(
                        1
                        for s in api.get("/api/stations", params={"limit": 1000}).json()["items"]
                        if s["id"] in ids and s["status"] == "online"
                    )
                    == 20
                )
            )
            items = [
                s
                for s in api.get("/api/stations", params={"limit": 1000}).json()["items"]
                if s["id"] in ids
            ]
            assert {s["district"] for s in items} == {name for name, _ in DISTRICTS}
            assert {s["site_type"] for s in items} <= {t for t, *_ in SITE_TYPES}
            assert all(s["versions"]["agent"] and s["last_seen"].endswith("Z") for s in items)
            summary = api.get("/api/fleet/summary").json()
            assert summary["stations"] == 20 and summary["online"] == 20
            assert sum(d["stations"] for d in summary["districts"].values()) == 20

            # a dropped connection (no DISCONNECT): the broker publishes the will
            dropped = fleet.agents[0]
            loop_thread.call(dropped.link.abort)
            wait_until(lambda: station_status(api, dropped.station) == "offline", timeout=10)

            # a clean shutdown says goodbye itself and disconnects (no will)
            leaving = fleet.agents[1]
            loop_thread.run(leaving.stop())
            wait_until(lambda: station_status(api, leaving.station) == "offline", timeout=10)
            detail = api.get(f"/api/stations/{leaving.station}").json()
            assert detail["history"][0]["status"] == "offline"
            assert set(detail["devices"]) >= {
                "printer",
                "id_reader",
                "card_reader",
                "cash_acceptor",
            }

            # the others are untouched
            assert station_status(api, fleet.agents[2].station) == "online"
            summary = api.get("/api/fleet/summary").json()
            assert (summary["online"], summary["offline"]) == (18, 2)
        finally:
            loop_thread.run(fleet.stop())


def test_stale_will_of_an_older_session_is_ignored(
    mosquitto: Mosquitto, tmp_path, loop_thread: LoopThread
) -> None:
    db_url = f"sqlite:///{tmp_path / 'c.db'}"
    with served_controller(db_url, mosquitto.url) as (served, api):
        fleet = make_fleet(loop_thread, mosquitto.url, 1, interval=1.0)
        agent = fleet.agents[0]
        try:
            wait_until(lambda: station_status(api, agent.station) == "online")
            current = api.get(f"/api/stations/{agent.station}").json()["session"]
            # what a broker delivers when a half-open connection of an older session finally
            # times out after the station reconnected: that session's will
            will = {"v": 1, "station": agent.station, "seq": 0, "ts": time.time(), "online": False}
            pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="stale-will-test")
            pub.connect("127.0.0.1", mosquitto.port)
            pub.loop_start()
            try:
                pub.publish(
                    f"fleet/v1/{agent.station}/state",
                    json.dumps({**will, "session": current - 1}),
                    qos=1,
                ).wait_for_publish(5)
                # a barrier: the broker hands one publisher's messages to the controller in
                # order, and the controller stores them in order; once the barrier is stored,
                # the stale will has been processed (not merely "not yet")
                barrier = "wx-barrier-02"
                body = {"v": 1, "station": barrier, "session": 1, "seq": 1, "ts": time.time()}
                pub.publish(f"fleet/v1/{barrier}/telemetry", json.dumps(body), qos=1)
                wait_until(lambda: station_status(api, barrier) == "online")
                assert station_status(api, agent.station) == "online"
                history = api.get(f"/api/stations/{agent.station}").json()["history"]
                assert all(h["status"] != "offline" for h in history)

                # the same will of the current session does count: the path above works
                pub.publish(
                    f"fleet/v1/{agent.station}/state",
                    json.dumps({**will, "session": current}),
                    qos=1,
                )
                wait_until(lambda: station_status(api, agent.station) == "offline")
                history = api.get(f"/api/stations/{agent.station}").json()["history"]
                assert [h["session"] for h in history if h["status"] == "offline"] == [current]
            finally:
                pub.loop_stop()
                pub.disconnect()
        finally:
            loop_thread.run(fleet.stop())


def test_every_sent_message_is_stored_once(
    mosquitto: Mosquitto, db_url: str, loop_thread: LoopThread
) -> None:
    with served_controller(db_url, mosquitto.url) as (served, api):
        fleet = make_fleet(loop_thread, mosquitto.url, 20, interval=0.5, fault_rate=3600.0)
        try:
            # a fleet that has both reported and faulted a good deal
            wait_until(
                lambda: (
                    (sent := loop_thread.call(fleet.result).sent)["telemetry"] > 100
                    and sent["events"] > 0
                ),
                timeout=30,
            )
            loop_thread.call(fleet.stop_producing)
            left = loop_thread.run(fleet.wait_confirmed(30), timeout=40)
            assert left == 0
            result = fleet.result()
            assert result.sent["telemetry"] > 100 and result.sent["events"] > 0
            summary = api.get("/api/fleet/summary").json()
            assert summary["ingested"] == result.sent
            assert summary["rejected"] == 0
        finally:
            loop_thread.run(fleet.stop())


def test_unknown_station_is_registered_and_asked_for_a_birth(
    mosquitto: Mosquitto, tmp_path
) -> None:
    with served_controller(f"sqlite:///{tmp_path / 'c.db'}", mosquitto.url) as (_, api):
        wait_until(lambda: api.get("/healthz").status_code == 200)
        station = "wx-stranger-01"
        commands: list[tuple[str, dict]] = []
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=station)
        client.on_message = lambda c, u, m: commands.append((m.topic, json.loads(m.payload)))
        subscribed = threading.Event()
        client.on_subscribe = lambda *args: subscribed.set()
        client.connect("127.0.0.1", mosquitto.port)
        client.subscribe(f"fleet/v1/{station}/cmd/#", qos=1)
        client.loop_start()
        try:
            assert subscribed.wait(10)  # the SUBACK: the rebirth command cannot pass us by
            telemetry = {"v": 1, "station": station, "session": 42, "seq": 1, "ts": time.time()}
            client.publish(f"fleet/v1/{station}/telemetry", json.dumps(telemetry), qos=1)
            wait_until(lambda: station_status(api, station) == "online")
            wait_until(lambda: any(t.endswith("/cmd/rebirth") for t, _ in commands))
            rebirth = next(p for t, p in commands if t.endswith("/cmd/rebirth"))
            assert rebirth["id"] and rebirth["expires_at"] > time.time()
            assert api.get("/api/fleet/summary").json()["ingested"]["telemetry"] == 1
        finally:
            client.loop_stop()
            client.disconnect()


def test_healthz_says_why_when_the_broker_is_unreachable(tmp_path) -> None:
    from tests.conftest import free_port

    dead = f"mqtt://127.0.0.1:{free_port()}"
    with served_controller(f"sqlite:///{tmp_path / 'c.db'}", dead, wait_connected=False) as (
        _,
        api,
    ):
        response = api.get("/healthz")
        assert response.status_code == 503
        assert "broker" in response.json()["reason"]


def test_a_simulated_estation_serves_without_its_coin_acceptor(
    mosquitto: Mosquitto, tmp_path, loop_thread: LoopThread
) -> None:
    """Its station profile says the coin acceptor is optional: broken, it leaves the station
    online; a broken printer, which the station needs, degrades it."""
    with served_controller(f"sqlite:///{tmp_path / 'c.db'}", mosquitto.url) as (_, api):
        fleet = make_fleet(loop_thread, mosquitto.url, 2, interval=0.3)
        agent = fleet.agents[0]
        assert agent.identity.profile == "estation-gen2"
        devices = {source.slot: source for source in agent.coordinator.sources}

        def device_state(slot: str) -> str:
            detail = api.get(f"/api/stations/{agent.station}").json()
            return str(detail["devices"].get(slot, {}).get("state"))

        try:
            wait_until(lambda: station_status(api, agent.station) == "online")
            loop_thread.call(devices["coin_acceptor"].break_now)  # type: ignore[attr-defined]
            wait_until(lambda: device_state("coin_acceptor") == "hardware_error")
            assert station_status(api, agent.station) == "online"
            loop_thread.call(devices["printer"].break_now)  # type: ignore[attr-defined]
            wait_until(lambda: station_status(api, agent.station) == "degraded")
        finally:
            loop_thread.run(fleet.stop())


def test_the_api_shows_device_info_after_lean_telemetry(
    mosquitto: Mosquitto, db_url: str, loop_thread: LoopThread
) -> None:
    """Telemetry leaves out each device's info once the birth carried it (CONTRACT §3); the
    station's devices in the API still show it after many such messages."""
    with served_controller(db_url, mosquitto.url) as (_, api):
        seen: list[dict] = []
        spy = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"spy-{time.monotonic_ns()}")
        spy.on_message = lambda c, u, m: seen.append(json.loads(m.payload))
        subscribed = threading.Event()
        spy.on_subscribe = lambda *args: subscribed.set()
        spy.connect("127.0.0.1", mosquitto.port)
        spy.loop_start()
        fleet = None
        try:
            spy.subscribe("fleet/v1/+/telemetry", qos=0)
            assert subscribed.wait(10)
            fleet = make_fleet(loop_thread, mosquitto.url, 2, interval=0.2)
            agent = fleet.agents[0]
            wait_until(
                lambda: (
                    len(ours := [m for m in seen if m["station"] == agent.station]) >= 6
                    and ours[-1]["seq"] > 6
                ),
                timeout=20,
            )
            ours = [m for m in seen if m["station"] == agent.station]
            lean = [m for m in ours if not any("info" in d for d in m["devices"].values())]
            assert len(lean) >= 5  # after the birth, no device repeats its info
            loop_thread.call(fleet.stop_producing)
            assert loop_thread.run(fleet.wait_confirmed(15), timeout=20) == 0
            detail = api.get(f"/api/stations/{agent.station}").json()
            statuses = loop_thread.call(lambda: dict(agent.coordinator.statuses))
            assert set(detail["devices"]) == set(statuses)
            for slot, status in statuses.items():
                shown = detail["devices"][slot]["info"]
                assert shown == status.info.model_dump(), slot
                assert shown["serial"] and shown["model"]
        finally:
            if fleet is not None:
                loop_thread.run(fleet.stop())
            spy.loop_stop()
            spy.disconnect()
