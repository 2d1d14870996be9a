"""The sender against a real Prometheus Alertmanager (Debian's ``prometheus-alertmanager``,
which ``make test`` installs): an alert posted through the outbox is listed by
``GET /api/v2/alerts``, stays active past Alertmanager's resolve timeout because it is posted
again, and ends at the time it was resolved."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from kioskfleet.controller.alerts import lifecycle
from kioskfleet.controller.alerts.config import Routing
from kioskfleet.controller.alerts.model import Alert
from kioskfleet.controller.db import make_engine, migrate
from kioskfleet.controller.notify.config import ReceiversSettings
from kioskfleet.controller.notify.outbox import notifications_for
from kioskfleet.controller.notify.sender import Sender, insert_rows

pytestmark = pytest.mark.alertmanager

BINARY = "/usr/bin/prometheus-alertmanager"
RESOLVE_TIMEOUT = 6.0
CONFIG = f"""
global:
  resolve_timeout: {RESOLVE_TIMEOUT:g}s
route:
  receiver: "null"
receivers:
  - name: "null"
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    if not Path(BINARY).exists() and shutil.which("prometheus-alertmanager") is None:
        pytest.fail(f"{BINARY} missing: `make system-deps` installs prometheus-alertmanager")
    config = tmp_path / "alertmanager.yml"
    config.write_text(CONFIG)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "alertmanager.log").open("wb")
    proc = subprocess.Popen(
        [
            BINARY,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'data'}",
            "--cluster.listen-address=",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "alertmanager.log").read_text()
            assert time.monotonic() < deadline, "alertmanager did not get ready"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'controller.db'}")
    migrate(engine)
    yield engine
    engine.dispose()


def _listed(url: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/api/v2/alerts", timeout=5)
    response.raise_for_status()
    return [a for a in response.json() if a["labels"].get("station") == "kiosk-007"]


def _time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _wait(check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_alerts_reach_alertmanager_stay_active_and_end_on_resolve(
    alertmanager: str, engine: Engine
) -> None:
    settings = ReceiversSettings.model_validate(
        {
            "alertmanagers": {
                "am": {
                    "url": f"{alertmanager}/api/v2",
                    "repost_interval": 1.0,
                    "resolve_timeout": RESOLVE_TIMEOUT,
                }
            },
            "public_url": "https://fleet.example",
        }
    )
    routing = Routing()
    opened_at = round(time.time()) - 60.0
    alert = Alert(
        id="a-am-1",
        district="binhu",
        site="市民中心",
        station="kiosk-007",
        device="printer",
        condition="paper_out",
        severity="critical",
        state="open",
        opened_at=opened_at,
        details={"summary": "printer: paper_out (user_error)"},
    )
    opened = lifecycle.opening(alert)
    with engine.begin() as conn:
        insert_rows(conn, notifications_for(opened, settings, routing))
    sender = Sender(engine, settings, poll_interval=0.1)
    sender.start()
    try:
        [listed] = _wait(lambda: _listed(alertmanager))
        assert listed["labels"] == {
            "alertname": "paper_out",
            "district": "binhu",
            "site": "市民中心",
            "station": "kiosk-007",
            "device": "printer",
            "severity": "critical",
            "condition": "paper_out",
        }
        assert listed["annotations"]["alert_id"] == "a-am-1"
        assert listed["generatorURL"] == "https://fleet.example/?alert=a-am-1"
        assert listed["status"]["state"] == "active"
        assert _time(listed["startsAt"]) == opened_at
        first_end = _time(listed["endsAt"])
        assert first_end > time.time()
        posted_at = time.time()

        # past Alertmanager's resolve timeout, still active: the sender posted it again
        def still_active_after_timeout() -> dict[str, Any] | None:
            if time.time() < posted_at + RESOLVE_TIMEOUT + 1:
                return None
            [again] = _listed(alertmanager)
            return again

        again = _wait(still_active_after_timeout)
        assert again["status"]["state"] == "active"
        assert _time(again["endsAt"]) > first_end
        assert _time(again["startsAt"]) == opened_at

        resolved_at = time.time()
        resolved = lifecycle.resolve(opened.alert, by="李工", now=resolved_at)
        with engine.begin() as conn:
            insert_rows(conn, notifications_for(resolved, settings, routing))
        sender.wake()

        def ended() -> bool:
            # Alertmanager lists an alert only while it is active: ended at ``endsAt``
            return _listed(alertmanager) == []

        _wait(ended)
        # ended by the posted endsAt, not by Alertmanager timing it out (it was posted
        # again within the last second, so a timeout would take about RESOLVE_TIMEOUT)
        assert time.time() - resolved_at < RESOLVE_TIMEOUT / 2
        # and it stays ended: the sender posts a resolved alert no more
        time.sleep(1.5)
        assert _listed(alertmanager) == []
    finally:
        sender.stop()
