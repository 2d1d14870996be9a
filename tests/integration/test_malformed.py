"""Bad payloads on every agent → controller topic are rejected and counted; good ones flow."""

from __future__ import annotations

import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import LoopThread, Mosquitto, wait_until
from tests.integration.fleet_helpers import KINDS, garbage_cases, make_fleet, served_controller

pytestmark = [pytest.mark.mosquitto]


def _publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"garbage-{time.monotonic_ns()}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def test_garbage_on_every_topic_is_rejected_counted_and_harmless(
    mosquitto: Mosquitto, tmp_path: Any, loop_thread: LoopThread
) -> None:
    with served_controller(f"sqlite:///{tmp_path / 'c.db'}", mosquitto.url) as (_, api):
        fleet = make_fleet(loop_thread, mosquitto.url, 3, interval=0.5)
        try:
            wait_until(lambda: api.get("/api/fleet/summary").json()["online"] == 3)
            victim = "wx-garbage-01"  # a station nobody runs: an invalid message registers nothing
            cases = garbage_cases(victim)
            pub = _publisher(mosquitto.port)
            for topic, payload in cases:
                pub.publish(topic, payload, qos=1).wait_for_publish(5)
            wait_until(lambda: api.get("/api/fleet/summary").json()["rejected"] >= len(cases))
            summary = api.get("/api/fleet/summary").json()
            assert summary["rejected"] == len(cases)
            assert api.get(f"/api/stations/{victim}").status_code == 404
            # ingestion goes on: telemetry keeps arriving from the real stations
            before = summary["ingested"]["telemetry"]
            wait_until(
                lambda: api.get("/api/fleet/summary").json()["ingested"]["telemetry"] > before + 3
            )
            metrics = api.get("/metrics").text
            for reason in ("not_json", "schema", "version", "station_mismatch", "too_large"):
                assert f'kioskfleet_rejected_messages_total{{reason="{reason}"}}' in metrics
            pub.loop_stop()
            pub.disconnect()
        finally:
            loop_thread.run(fleet.stop())


def test_random_payloads_never_stop_ingestion(
    mosquitto: Mosquitto, tmp_path: Any, loop_thread: LoopThread
) -> None:
    with served_controller(f"sqlite:///{tmp_path / 'c.db'}", mosquitto.url) as (_, api):
        fleet = make_fleet(loop_thread, mosquitto.url, 2, interval=0.5)
        pub = _publisher(mosquitto.port)
        sent: list[int] = []
        try:

            @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
            @given(kind=st.sampled_from(KINDS), payload=st.binary(max_size=200))
            def blast(kind: str, payload: bytes) -> None:
                pub.publish(f"fleet/v1/wx-fuzz-01/{kind}", payload, qos=1).wait_for_publish(5)
                sent.append(1)

            blast()
            wait_until(lambda: api.get("/api/fleet/summary").json()["rejected"] == len(sent))
            before = api.get("/api/fleet/summary").json()["ingested"]["telemetry"]
            wait_until(
                lambda: api.get("/api/fleet/summary").json()["ingested"]["telemetry"] > before + 2
            )
            assert api.get("/healthz").json() == {"status": "ok"}
        finally:
            pub.loop_stop()
            pub.disconnect()
            loop_thread.run(fleet.stop())
