"""The product's own commands as processes, for tests that kill and restart them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.conftest import AUTH, TEST_TOKEN, free_port, wait_until


class ControllerProcess:
    """`kioskfleet controller` with its settings in the environment."""

    def __init__(self, db_url: str, mqtt_url: str, workdir: Path) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "KIOSKFLEET_DB_URL": db_url,
            "KIOSKFLEET_MQTT_URL": mqtt_url,
            "KIOSKFLEET_LISTEN": f"127.0.0.1:{self.port}",
            "KIOSKFLEET_BOOTSTRAP_TOKEN": TEST_TOKEN,
        }
        self.log = workdir / "controller.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10, headers=AUTH)

    def start(self) -> ControllerProcess:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kioskfleet.cli", "controller"],
                env=self.env,
                stdout=log,
                stderr=log,
            )
        wait_until(self._healthy, timeout=30, every=0.2)
        return self

    def _healthy(self) -> bool:
        try:
            return self.api.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def summary(self) -> dict[str, Any]:
        return dict(self.api.get("/api/fleet/summary").json())

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def writer_pids(self) -> list[int]:
        """The controller's ingest writer process (Settings.writer = "process")."""
        assert self.proc is not None
        pids = []
        for child in psutil.Process(self.proc.pid).children():
            try:
                if "spawn_main" in " ".join(child.cmdline()):
                    pids.append(child.pid)
            except psutil.Error:
                pass  # killed, not yet reaped by the controller
        return pids

    def kill_writer(self) -> int:
        """SIGKILL the ingest writer; returns its pid."""
        (pid,) = self.writer_pids()
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.api.close()


class SimulateProcess:
    """`kioskfleet simulate`; its last stdout line is the JSON summary."""

    def __init__(self, mqtt_url: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kioskfleet.cli", "simulate", "--broker", mqtt_url, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def result(self, timeout: float = 150) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err.decode()[-3000:]
        lines = [line for line in out.decode().splitlines() if line.strip()]
        return dict(json.loads(lines[-1]))

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
