"""Stations that drop off the network, end to end (CONTRACT §4 ``/api/alerts``): real
``kioskfleet simulate`` processes killed with SIGKILL, a real broker noticing by keepalive, the
controller's writer deciding, the API listing.

Two simulator processes with different id prefixes put their stations in the same sites (the
fleet layout depends on the seed only), so killing one leaves half of each site up: its
kiosks get an ``offline`` alert each; killing both at once takes whole sites down: one
``site_offline`` incident per site, and no kiosk gets an alert of its own.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from tests.conftest import Mosquitto, wait_until
from tests.integration.fleet_helpers import served_controller
from tests.integration.processes import SimulateProcess

pytestmark = [pytest.mark.mosquitto]

OFFLINE_ALERT_AFTER = 2.0


def _simulate(mqtt_url: str, prefix: str) -> SimulateProcess:
    return SimulateProcess(
        mqtt_url,
        "--stations",
        "4",
        "--processes",
        "1",
        "--duration",
        "120",
        "--keepalive",
        "2",
        "--telemetry-interval",
        "1",
        "--id-prefix",
        prefix,
    )


@contextmanager
def _two_halves(mqtt_url: str, api: httpx.Client) -> Iterator[tuple[SimulateProcess, ...]]:
    halves = (_simulate(mqtt_url, "hala"), _simulate(mqtt_url, "halb"))
    try:
        wait_until(lambda: _online(api) == 8, timeout=60)
        yield halves
    finally:
        for half in halves:
            half.kill()


def _online(api: httpx.Client) -> int:
    summary = api.get("/api/fleet/summary").json()
    return int(summary["online"] + summary["degraded"])


def _active(api: httpx.Client, **params: str) -> list[dict[str, Any]]:
    reply = api.get("/api/alerts", params={"state": "active", **params})
    reply.raise_for_status()
    return list(reply.json()["items"])


def test_kiosks_that_drop_alone_get_an_offline_alert_each(
    mosquitto: Mosquitto, db_url: str
) -> None:
    with (
        served_controller(db_url, mosquitto.url, offline_alert_after=OFFLINE_ALERT_AFTER) as (
            _,
            api,
        ),
        _two_halves(mosquitto.url, api) as (first, _),
    ):
        first.signal(signal.SIGKILL)
        wanted = {f"hala-{n:04d}" for n in range(1, 5)}
        wait_until(
            lambda: {a["station"] for a in _active(api, condition="offline")} == wanted,
            timeout=30,
        )
        alerts = _active(api)
        assert {a["condition"] for a in alerts} == {"offline"}  # no incident: half of each site
        assert all(a["severity"] == "critical" and a["device"] is None for a in alerts)
        summary = api.get("/api/fleet/summary").json()
        assert (
            summary["open_alerts"]
            == 4
            == api.get("/api/alerts", params={"state": "active"}).json()["total"]
        )
        # the other half stays quiet
        assert not [a for a in alerts if a["station"].startswith("halb")]


def test_a_whole_site_dropping_is_one_incident(mosquitto: Mosquitto, db_url: str) -> None:
    with (
        served_controller(db_url, mosquitto.url, offline_alert_after=OFFLINE_ALERT_AFTER) as (
            _,
            api,
        ),
        _two_halves(mosquitto.url, api) as halves,
    ):
        for half in halves:
            half.signal(signal.SIGKILL)
        wait_until(lambda: len(_active(api, condition="site_offline")) == 2, timeout=30)
        # what each station's own alert would have been is due by now, and none opened
        wait_until(lambda: _online(api) == 0, timeout=30)
        incidents = _active(api)
        assert {a["condition"] for a in incidents} == {"site_offline"}
        members = [set(a["stations"]) for a in incidents]
        assert all(a["station"] is None for a in incidents)
        assert set().union(*members) == {
            f"{p}-{n:04d}" for p in ("hala", "halb") for n in (1, 2, 3, 4)
        }
        assert all(len(m) == 4 for m in members)
        # each member station shows its incident, and has no alert of its own
        detail = api.get("/api/stations/hala-0001").json()
        assert [a["condition"] for a in detail["alerts"]] == ["site_offline"]

        # the site comes back: the incident resolves itself
        back = (_simulate(mosquitto.url, "hala"), _simulate(mosquitto.url, "halb"))
        try:
            wait_until(lambda: not _active(api), timeout=60)
            resolved = api.get("/api/alerts", params={"state": "resolved"}).json()["items"]
            assert {(a["condition"], a["resolution"]) for a in resolved} == {
                ("site_offline", "cleared")
            }
        finally:
            for half in back:
                half.kill()
