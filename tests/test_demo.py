"""`kioskfleet demo` with nothing but the package: embedded broker, SQLite, 30 stations."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from kioskfleet.demo import DEMO_PEOPLE
from tests.conftest import free_port, wait_until

pytestmark = [pytest.mark.slow]


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def test_demo_runs_by_itself_and_prints_its_summary() -> None:
    """…and, while it runs, shows its published releases and a finished rollout of its
    software release to one district (the console's rollouts page reads the same)."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kioskfleet.cli",
            "demo",
            "--stations",
            "30",
            "--duration",
            "40",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # the wall screen reads without a login; writes need a person
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _status(base + "/healthz") in (200, 503), timeout=60)
        assert httpx.get(base + "/api/fleet/summary", timeout=10).status_code == 200
        answer = httpx.post(base + "/api/stations/x/commands", json={"name": "rebirth"})
        assert answer.status_code == 401
        finished = _watch_rollouts(port, process)
        stdout, stderr = process.communicate(timeout=180)
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-3000:]
    # one account per role, with its password, on stderr
    for name, (role, districts) in DEMO_PEOPLE.items():
        (line,) = [line.split() for line in stderr.splitlines() if line.split()[:1] == [name]]
        assert line[1:3] == [role, ",".join(districts) or "-"] and len(line[3]) >= 16
    assert ("tech-binhu", ("technician", ["Binhu"])) in DEMO_PEOPLE.items()
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, stdout
    summary = json.loads(lines[0])
    assert summary["stations"] == 30
    assert summary["online"] + summary["degraded"] == 30
    assert set(summary["districts"]) == {
        "Liangxi",
        "Xishan",
        "Huishan",
        "Binhu",
        "Xinwu",
        "Jiangyin",
        "Yixing",
        "Economic Development Zone",
    }
    # every message the stations sent was stored, once
    assert summary["sent"] == summary["ingested"]
    assert summary["sent"]["telemetry"] >= 30 * 5
    assert summary["unconfirmed"] == 0
    # a finished rollout: every targeted station healthy on the demo's software release
    assert finished is not None, "no completed rollout while the demo ran"
    assert finished["release"] == "software-r1" and finished["created_by"] == "demo"
    assert finished["summary"]["healthy"] == sum(finished["summary"].values()) > 0
    assert finished["target"]["districts"]


def _watch_rollouts(port: int, process: subprocess.Popen[str]) -> dict[str, Any] | None:
    """The first completed rollout ``GET /api/rollouts`` lists while the demo runs (None if
    none before it ends); the releases are checked once the API answers."""
    releases_seen = False
    while process.poll() is None:
        time.sleep(0.5)
        try:
            listed = httpx.get(f"http://127.0.0.1:{port}/api/rollouts", timeout=5).json()
            if not releases_seen:
                # published just after the API starts answering (after the demo's accounts)
                releases = httpx.get(f"http://127.0.0.1:{port}/api/releases", timeout=5).json()
                ids = {r["id"] for r in releases["items"]}
                releases_seen = {"software-r1", "catalogue-r1"} <= ids
        except httpx.HTTPError:
            continue  # not serving yet, or stopping
        done = [r for r in listed["items"] if r["state"] == "completed"]
        if done:
            assert releases_seen, "a rollout completed before its releases were listed"
            return dict(done[0])
    return None
