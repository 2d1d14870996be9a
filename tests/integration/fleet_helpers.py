"""Helpers to run a controller and a simulated fleet side by side in a test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import httpx

from kioskfleet.controller.config import Settings
from kioskfleet.demo import ServedController
from kioskfleet.fleetsim.fleet import Fleet, FleetSpec, wuxi_fleet
from kioskfleet.protocol.broker_url import parse_broker_url
from tests.conftest import LoopThread, free_port


@contextmanager
def served_controller(
    db_url: str, mqtt_url: str, *, wait_connected: bool = True, **overrides: Any
) -> Iterator[tuple[ServedController, httpx.Client]]:
    """A controller serving its API; by default, once it is subscribed at the broker (what is
    published before that is not queued for it: its session does not exist yet)."""
    settings = Settings(
        db_url=db_url,
        mqtt_url=mqtt_url,
        listen=f"127.0.0.1:{free_port()}",
        client_id=f"ctl-{uuid.uuid4().hex[:8]}",
        ack_interval=0.3,
        sweep_interval=0.2,
    )
    settings = replace(settings, **overrides)
    served = ServedController(settings)
    host, port = settings.host_port
    ingest = served.controller.ingest
    if wait_connected and (ingest is None or not ingest.connected.wait(30)):
        served.stop()
        raise RuntimeError("the controller did not connect to the broker in 30 s")
    try:
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=10) as client:
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
