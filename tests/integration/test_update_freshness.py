"""Expired update metadata and a kiosk clock far from the controller's become alerts, end to
end: the real agent (``run_agent``) checks the controller's TUF repository every second
(``[updates] check_interval_s``), reports both in telemetry, and the controller's writer opens
``update_metadata_expired`` and ``clock_skew`` for the station and resolves them when the
next reports are fine again. The kiosk's clock is a parameter of the agent (a test double of
our own interface); the repository is the controller's own, its timestamp made expired with
the online key. The birth also carries the maintenance window, which the station's detail
shows."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from kioskfleet.agent.config import agent_config_from_dict
from kioskfleet.agent.service import run_agent
from kioskfleet.controller.tufrepo.service import create_demo_repository, open_repository
from kioskfleet.drivers.registry import driver_module
from kioskfleet.drivers.simulator import PtyServer
from tests.conftest import Mosquitto, wait_until
from tests.integration.fleet_helpers import served_controller
from tests.tuf_helpers import online_signer, read, real_now, write

pytestmark = [pytest.mark.mosquitto]

STATION = "wx-binhu-sub-09"


class Clock:
    """The kiosk's wall clock, ``offset`` seconds off."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


def _active(api: httpx.Client) -> dict[str, dict[str, Any]]:
    items = api.get("/api/alerts", params={"station": STATION, "state": "active"}).json()["items"]
    return {a["condition"]: a for a in items}


def _resolved(api: httpx.Client) -> set[str]:
    items = api.get("/api/alerts", params={"station": STATION, "state": "resolved"}).json()
    return {a["condition"] for a in items["items"] if a["resolution"] == "cleared"}


def test_expired_metadata_and_a_skewed_clock_open_alerts_and_clear(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    tuf = create_demo_repository(tmp_path / "tuf")
    repo = open_repository(tuf)
    (tmp_path / "root.json").write_bytes(repo.root_bytes(1))
    printer = driver_module("escpos").make_simulator(None)
    server = PtyServer(printer).start()
    db_url = f"sqlite:///{tmp_path / 'controller.db'}"
    clock = Clock(-3600.0)  # an hour behind
    with served_controller(db_url, mosquitto.url, tuf=tuf) as (_, api):
        # its re-signing timer ran at start (the next run is minutes away): the timestamp is
        # made to have expired an hour ago, as if the controller had stopped re-signing
        stale = read(repo, "timestamp.json")
        stale.signed.version += 1
        stale.signed.expires = (real_now() - timedelta(hours=1)).replace(microsecond=0)
        stale.signatures.clear()
        stale.sign(online_signer(repo, "timestamp"))
        write(repo, "timestamp.json", stale)
        config = agent_config_from_dict(
            {
                "station": STATION,
                "district": "Binhu",
                "site": "Taihu Square Metro Station",
                "site_type": "subway_station",
                "profile": "estation-gen2",
                "broker": mosquitto.url,
                "telemetry_interval": 0.5,
                "state_dir": str(tmp_path / "kiosk"),
                "use_profile_devices": False,
                "local_service": False,
                "devices": {
                    "printer": {"driver": "escpos", "port": server.port, "profile": "snbc-btt080"}
                },
                "update_root": str(tmp_path / "root.json"),
                "update_url": str(api.base_url).rstrip("/") + "/tuf/",
                "maintenance_window": "23:00-02:00",
                "updates": {"check_interval_s": 1},
            }
        )

        async def scenario() -> int:
            stop = asyncio.Event()
            agent = asyncio.create_task(run_agent(config, stop, clock=clock))
            try:
                await asyncio.to_thread(
                    wait_until,
                    lambda: {"clock_skew", "update_metadata_expired"} <= set(_active(api)),
                    30,
                )
                active = _active(api)
                assert active["clock_skew"]["severity"] == "warning"
                assert active["update_metadata_expired"]["severity"] == "warning"
                detail = api.get(f"/api/stations/{STATION}").json()
                assert detail["maintenance_window"] == "23:00-02:00"
                # the clock is set right and the controller signs again: both clear
                clock.offset = 0.0
                assert "timestamp" in repo.resign_online(real_now())
                await asyncio.to_thread(
                    wait_until,
                    lambda: (
                        not _active(api)
                        and {"clock_skew", "update_metadata_expired"} <= _resolved(api)
                    ),
                    30,
                )
            finally:
                stop.set()
            return await agent

        try:
            assert asyncio.run(scenario()) == 0
        finally:
            server.stop()
