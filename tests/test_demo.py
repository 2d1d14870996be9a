"""`kioskfleet demo` with nothing but the package: embedded broker, SQLite, 30 stations."""

from __future__ import annotations

import json
import subprocess
import sys

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
    port = free_port()
    demo = subprocess.Popen(
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
        stdout, stderr = demo.communicate(timeout=180)
    finally:
        demo.kill()
    assert demo.returncode == 0, stderr[-3000:]
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
