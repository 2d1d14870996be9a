"""`kioskfleet demo` with nothing but the package: embedded broker, SQLite, 30 stations."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import free_port

pytestmark = [pytest.mark.slow]


def test_demo_runs_by_itself_and_prints_its_summary() -> None:
    port = free_port()
    run = subprocess.run(
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
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, run.stdout
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
