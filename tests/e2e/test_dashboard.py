"""The operators' dashboard, rendered by a real headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import LoopThread, Mosquitto, wait_until
from tests.integration.fleet_helpers import make_fleet, served_controller, station_status

pytestmark = [pytest.mark.chromium, pytest.mark.mosquitto]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("Chromium is not installed: run `make test`, which installs it")


def render(url: str) -> str:
    """The DOM after the page's scripts ran (virtual time lets fetches and timers finish)."""
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=5000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_dashboard_shows_the_fleet_by_district_and_who_needs_attention(
    mosquitto: Mosquitto, tmp_path: Path, loop_thread: LoopThread
) -> None:
    with served_controller(f"sqlite:///{tmp_path / 'c.db'}", mosquitto.url) as (served, api):
        # kiosks stand in sites of 2-6: from 16 on, every district has one
        fleet = make_fleet(loop_thread, mosquitto.url, 16, interval=1.0)
        try:
            wait_until(lambda: api.get("/api/fleet/summary").json()["online"] == 16)
            gone = fleet.agents[3]
            loop_thread.run(gone.stop())
            wait_until(lambda: station_status(api, gone.station) == "offline")
            dom = render(str(api.base_url) + "/")
            assert "Chengquan e-Stations" in dom
            for district in ("Liangxi", "Binhu", "Economic Development Zone"):
                assert f'data-district="{district}"' in dom
            assert 'data-key="online"><b>15</b>' in dom
            assert 'data-key="offline"><b>1</b>' in dom
            assert gone.station in dom  # listed under "needing attention"
            assert '<span id="error"></span>' in dom  # no fetch failed
        finally:
            loop_thread.run(fleet.stop())
