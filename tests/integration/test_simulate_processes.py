"""`kioskfleet simulate --processes N`: one fleet over several processes, one result line.

The fleet is the same for any N (ids, sites, which stations fail their updates, where each
keeps its outbox), the counts are the whole fleet's, and the processes live and die together.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from kioskfleet.fleetsim.fleet import (
    OUTBOX_SHARDS,
    FleetSpec,
    choose_update_failures,
    outbox_shard,
    wuxi_fleet,
)
from kioskfleet.fleetsim.processes import default_processes, partition
from kioskfleet.protocol.broker_url import parse_broker_url
from tests.conftest import Mosquitto, wait_until
from tests.integration.processes import ControllerProcess, SimulateProcess

RESULT_KEYS = {"stations", "sent", "unconfirmed", "connected", "update_failures", "processes"}


def _stations(controller: ControllerProcess) -> list[dict[str, Any]]:
    items = controller.api.get("/api/stations", params={"limit": 1000}).json()["items"]
    keys = ("id", "district", "site", "site_type", "profile")
    return [{k: item[k] for k in keys} for item in items]


def _layout(state_dir: Path) -> dict[str, list[str]]:
    """Each outbox file under a state dir and the stations whose outbox it holds."""
    layout = {}
    for path in sorted(state_dir.rglob("*.db")):
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT station FROM station ORDER BY station").fetchall()
        layout[str(path.relative_to(state_dir))] = [row[0] for row in rows]
    return layout


def _simulator_children(sim: SimulateProcess) -> list[psutil.Process]:
    try:
        kids = psutil.Process(sim.proc.pid).children()
    except psutil.NoSuchProcess:
        return []
    out = []
    for kid in kids:
        try:
            if "spawn_main" in " ".join(kid.cmdline()):
                out.append(kid)
        except psutil.Error:
            continue  # gone meanwhile
    return out


@pytest.mark.mosquitto
def test_one_or_two_processes_run_the_same_fleet_and_count_it_whole(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    controller = ControllerProcess(f"sqlite:///{tmp_path / 'c.db'}", mosquitto.url, tmp_path)
    controller.start()
    try:
        seen: dict[int, list[dict[str, Any]]] = {}
        results: dict[int, dict[str, Any]] = {}
        for processes in (1, 2):
            before = controller.summary()["ingested"]
            sim = SimulateProcess(
                mosquitto.url,
                *("--stations", "7", "--duration", "2", "--telemetry-interval", "0.5"),
                *("--id-prefix", "par", "--update-failure-rate", "0.3", "--keepalive", "5"),
                *("--processes", str(processes), "--state-dir", str(tmp_path / f"p{processes}")),
            )
            try:
                result = sim.result(timeout=90)
            finally:
                sim.kill()
            assert set(result) == RESULT_KEYS, result
            assert set(result["sent"]) == {"telemetry", "events"}
            assert result["processes"] == processes
            assert result["stations"] == result["connected"] == 7
            assert result["unconfirmed"] == 0
            assert result["update_failures"] == round(0.3 * 7)
            assert result["sent"]["telemetry"] >= 7  # every station reported
            after = controller.summary()["ingested"]
            # every message the broker acknowledged was stored, once, whatever ran it
            assert {k: after[k] - before[k] for k in after} == result["sent"]
            seen[processes] = _stations(controller)
            results[processes] = result
        # the second run re-announced every station: had it named one differently, the list
        # would have grown or changed
        assert seen[1] == seen[2]
        assert [s["id"] for s in seen[1]] == [f"par-{n:04d}" for n in range(1, 8)]
        assert _layout(tmp_path / "p1") == _layout(tmp_path / "p2")
        assert sum(len(ids) for ids in _layout(tmp_path / "p1").values()) == 7
    finally:
        controller.stop()


@pytest.mark.mosquitto
def test_sigterm_stops_every_process_and_the_counts_still_add_up(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    controller = ControllerProcess(f"sqlite:///{tmp_path / 'c.db'}", mosquitto.url, tmp_path)
    controller.start()
    sim = SimulateProcess(
        mosquitto.url,
        *("--stations", "6", "--duration", "600", "--telemetry-interval", "0.5"),
        *("--id-prefix", "term", "--keepalive", "5", "--processes", "2"),
    )
    try:
        wait_until(lambda: controller.summary()["ingested"]["telemetry"] >= 12, timeout=30)
        children = _simulator_children(sim)
        assert len(children) == 2
        sim.signal(signal.SIGTERM)
        result = sim.result(timeout=90)
        assert result["processes"] == 2 and result["unconfirmed"] == 0
        assert controller.summary()["ingested"] == result["sent"]
        for child in children:
            assert not child.is_running()
        # they said goodbye: every station offline
        wait_until(lambda: controller.summary()["online"] == 0, timeout=15)
    finally:
        sim.kill()
        controller.stop()


@pytest.mark.mosquitto
def test_a_process_that_dies_fails_the_command_and_takes_the_others_down(
    mosquitto: Mosquitto,
) -> None:
    sim = SimulateProcess(
        mosquitto.url,
        *("--stations", "6", "--duration", "600", "--id-prefix", "die", "--processes", "2"),
    )
    try:
        wait_until(lambda: len(_simulator_children(sim)) == 2, timeout=30)
        victim, other = _simulator_children(sim)
        victim.kill()
        out, err = sim.proc.communicate(timeout=60)
        assert sim.proc.returncode == 1
        assert out.decode().strip() == ""  # no result line: the counts would be incomplete
        message = err.decode().strip().splitlines()[-1]
        assert message.startswith("kioskfleet simulate: simulator process"), message
        assert f"pid {victim.pid}) was killed by signal 9" in message, message
        assert not other.is_running()
    finally:
        sim.kill()


def test_the_parts_of_a_fleet_are_the_fleet() -> None:
    """Partitioning keeps every station once, in fleet order within a part, with the whole
    fleet's choice of update failures; a station's part follows from its outbox shard."""
    fleet = wuxi_fleet(300, seed=5, id_prefix="part")
    spec = FleetSpec(
        stations=fleet,
        broker=parse_broker_url("mqtt://127.0.0.1:1"),
        seed=5,
        update_failure_rate=0.1,
    )
    chosen = choose_update_failures(fleet, 0.1, 5)
    assert len(chosen) == 30
    for processes in (1, 2, 3, 7, OUTBOX_SHARDS, OUTBOX_SHARDS + 5):
        parts = partition(spec, processes)
        assert len(parts) == min(processes, OUTBOX_SHARDS)
        assert sorted(s.station for p in parts for s in p.stations) == [s.station for s in fleet]
        assert sorted(f for p in parts for f in p.update_failures or []) == chosen
        for part in parts:
            assert part.stations == [s for s in fleet if s in part.stations]
            assert len({outbox_shard(s.station) % len(parts) for s in part.stations}) == 1
            assert part.ramp_seconds == 1.5 and part.duration is None


@pytest.mark.parametrize(
    ("stations", "cores", "expected"),
    [(1, 2, 1), (2500, 2, 1), (2501, 2, 2), (10_000, 2, 2), (10_000, 8, 4), (10**6, 64, 32)],
)
def test_default_processes_follow_the_cores_and_the_fleet(
    stations: int, cores: int, expected: int
) -> None:
    assert default_processes(stations, cores) == expected


def test_simulate_refuses_zero_processes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kioskfleet.cli", "simulate", "--stations", "1", "--processes", "0"],
        capture_output=True,
        check=False,
    )
    assert done.returncode == 2 and b"--processes" in done.stderr
