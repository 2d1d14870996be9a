"""Helpers to run a controller and a simulated fleet side by side in a test."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from kioskfleet.agent.config import AgentConfig, agent_config_from_dict
from kioskfleet.controller.config import Settings
from kioskfleet.demo import ServedController
from kioskfleet.fleetsim.fleet import Fleet, FleetSpec, wuxi_fleet
from kioskfleet.protocol.broker_url import parse_broker_url
from tests.conftest import AUTH, TEST_TOKEN, LoopThread, free_port, wait_until


@contextmanager
def served_controller(
    db_url: str, mqtt_url: str, *, wait_connected: bool = True, **overrides: Any
) -> Iterator[tuple[ServedController, httpx.Client]]:
    """A controller serving its API; by default, once it is subscribed at the broker (what is
    published before that is not queued for it: its session does not exist yet)."""
    settings = Settings(
        **{
            "db_url": db_url,
            "mqtt_url": mqtt_url,
            "listen": f"127.0.0.1:{free_port()}",
            "client_id": f"ctl-{uuid.uuid4().hex[:8]}",
            "ack_interval": 0.3,
            "sweep_interval": 0.2,
            "bootstrap_token": TEST_TOKEN,
            **overrides,
        }
    )
    served = ServedController(settings)
    host, port = settings.host_port
    ingest = served.controller.ingest
    if wait_connected and (ingest is None or not ingest.connected.wait(30)):
        served.stop()
        raise RuntimeError("the controller did not connect to the broker in 30 s")
    try:
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=10, headers=AUTH) as client:
            yield served, client
    finally:
        served.stop()


def make_fleet(
    lt: LoopThread,
    mqtt_url: str,
    count: int,
    *,
    interval: float = 1.0,
    keepalive: int = 5,
    **spec: Any,
) -> Fleet:
    prefix = f"t{uuid.uuid4().hex[:6]}"
    stations = wuxi_fleet(count, id_prefix=prefix, telemetry_interval=interval)

    def build() -> Fleet:
        fleet = Fleet(
            FleetSpec(
                stations=stations,
                broker=parse_broker_url(mqtt_url),
                keepalive=keepalive,
                ramp_seconds=0.5,
                **spec,
            )
        )
        fleet.start()
        return fleet

    return lt.call(build)


def station_status(client: httpx.Client, station: str) -> str:
    response = client.get(f"/api/stations/{station}")
    if response.status_code == 404:
        return "unknown"
    response.raise_for_status()
    return str(response.json()["status"])


KINDS = ["state", "telemetry", "events", "reply"]


def garbage_cases(victim: str) -> list[tuple[str, bytes]]:
    """A bad message of every kind on each agent → controller topic of station ``victim``."""
    good = {"v": 1, "station": victim, "session": 5, "seq": 7, "ts": time.time()}
    cases: list[tuple[str, bytes]] = []
    for kind in KINDS:
        topic = f"fleet/v1/{victim}/{kind}"
        cases += [
            (topic, b"not json at all"),
            (topic, json.dumps({"hello": "world"}).encode()),
            (topic, json.dumps({**good, "seq": "7"}).encode()),  # wrong type
            (topic, json.dumps({**good, "v": 99}).encode()),  # future version
            (topic, json.dumps({**good, "station": "wx-someone-else"}).encode()),
            (topic, json.dumps({**good, "pad": "x" * 70_000}).encode()),  # oversized
        ]
    # valid in every other way, but NaN is not JSON and no database column takes it
    nan = json.dumps({**good, "host": {"cpu_percent": float("nan")}}).encode()
    cases.append((f"fleet/v1/{victim}/telemetry", nan))
    return cases


class GarbagePublisher:
    """Publishes bad messages (QoS 1) in the background, through broker restarts, and counts
    those the broker confirmed."""

    def __init__(self, port: int, victims: list[str], every: float = 0.1) -> None:
        self.cases = [case for victim in victims for case in garbage_cases(victim)]
        self.every = every
        self.confirmed = 0
        self.published = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"garbage-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_publish = self._on_publish
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _on_publish(self, *args: Any) -> None:
        with self._lock:
            self.confirmed += 1

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self.every):
            if self.client.is_connected():
                self.client.publish(*self.cases[n % len(self.cases)], qos=1)
                n += 1
                self.published = n

    def start(self) -> GarbagePublisher:
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop publishing (once); how many the broker confirmed."""
        if self._stop.is_set():
            return self.confirmed
        self._stop.set()
        self._thread.join(5)
        # the last PUBACKs (those published while the broker was away may never come)
        with contextlib.suppress(AssertionError):
            wait_until(lambda: self.confirmed >= self.published, timeout=3, every=0.02)
        self.client.loop_stop()
        self.client.disconnect()
        with self._lock:
            return self.confirmed


def printer_only_agent(
    *,
    station: str,
    broker: str,
    state_dir: Path,
    printer_port: str,
    local_port: int,
    telemetry_interval: float,
) -> AgentConfig:
    """A Binhu metro kiosk whose only device is a simulated receipt printer on ``printer_port``,
    its local service on ``local_port``."""
    return agent_config_from_dict(
        {
            "station": station,
            "district": "Binhu",
            "site": "Taihu Square Metro Station",
            "site_type": "subway_station",
            "profile": "estation-gen2",
            "broker": broker,
            "telemetry_interval": telemetry_interval,
            "state_dir": str(state_dir),
            "use_profile_devices": False,  # only the printer is plugged in here
            "local_service": f"127.0.0.1:{local_port}",
            "devices": {
                "printer": {"driver": "escpos", "port": printer_port, "profile": "snbc-btt080"}
            },
        }
    )
