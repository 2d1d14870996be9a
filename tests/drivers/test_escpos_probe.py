"""``kioskfleet device probe escpos``: the package's probe() against a simulator on a real pty."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kioskfleet.drivers.escpos import EscPosSimulator, make_simulator, probe
from kioskfleet.drivers.registry import ProbeOptions, driver_module
from kioskfleet.drivers.simulator import PtyServer
from kioskfleet.firmware_profiles import load_model_profile

FAST = {"timeout": 0.2, "retries": 1}


@pytest.fixture
def sim() -> EscPosSimulator:
    return make_simulator()


@pytest.fixture
def port(sim: EscPosSimulator) -> Iterator[str]:
    server = PtyServer(sim).start()
    try:
        yield server.port
    finally:
        server.stop()


def run(port: str, **options: Any) -> tuple[dict[str, Any], bool]:
    result = probe(port, ProbeOptions(**{**FAST, **options}))
    return result.status.model_dump(mode="json"), result.answered


def test_registry_finds_the_package() -> None:
    module = driver_module("escpos")
    assert module.probe is probe
    assert isinstance(module.make_simulator("snbc"), EscPosSimulator)


def test_healthy_printer(port: str) -> None:
    status, answered = run(port)
    assert answered
    assert status == {
        "device": "printer",
        "driver": "escpos",
        "state": "online",
        "info": {"model": "TM-T82", "serial": "X4SM012345", "firmware": "30.01 ESC/POS"},
        "faults": [],
        "supplies": {"paper": "full"},
        "media": None,
        "events": [],
    }


@pytest.mark.parametrize(
    ("fault", "state", "faults", "paper"),
    [
        ("paper_low", "online", [], "low"),
        ("paper_out", "user_error", ["paper_out"], "out"),
        ("cover_open", "user_error", ["cover_open"], "full"),
        ("cutter_jam", "hardware_error", ["cutter_error"], "full"),
        ("paper_jam", "hardware_error", ["mechanical_error"], "full"),
        ("unrecoverable", "hardware_error", ["unrecoverable_error"], "full"),
        ("recoverable", "busy", ["recoverable_error"], "full"),
        ("xoff_noise", "online", [], "full"),
        ("asb", "online", [], "full"),
    ],
)
def test_fault_json(
    sim: EscPosSimulator, port: str, fault: str, state: str, faults: list[str], paper: str
) -> None:
    sim.set_fault(fault)
    status, answered = run(port)
    assert answered  # a printer that answers with an error still answered (exit 0)
    assert (status["state"], status["faults"], status["supplies"]) == (
        state,
        faults,
        {"paper": paper},
    )
    assert status["events"] == []


def test_snbc_profile_applies_its_quirk() -> None:
    sim = make_simulator("snbc")
    sim.set_fault("paper_jam")
    server = PtyServer(sim).start()
    try:
        profile = load_model_profile("snbc-btt080").as_options()
        status, answered = run(server.port, profile=profile)
    finally:
        server.stop()
    assert answered
    assert (status["state"], status["faults"], status["supplies"]) == (
        "user_error",
        ["paper_jam"],
        {"paper": "jammed"},
    )
    # offline with a jam: GS I is not asked, the profile names the model
    assert status["info"] == {"model": "SNBC BT-T080", "serial": None, "firmware": None}


def test_probe_changes_nothing(sim: EscPosSimulator, port: str) -> None:
    run(port)
    assert {c.name for c in sim.commands} <= {"dle_eot", "gs_i"}
    assert sim.asb_mask == 0
    assert sim.printed_lines == []


def test_stale_asb_blocks_are_not_news(sim: EscPosSimulator, port: str) -> None:
    sim.set_fault("asb")
    sim.cover_open = True
    time.sleep(0.1)  # the server sends ASB blocks nobody reads yet
    sim.cover_open = False
    time.sleep(0.1)
    status, answered = run(port)
    assert answered
    assert (status["state"], status["faults"], status["events"]) == ("online", [], [])


def test_no_answer_is_offline(sim: EscPosSimulator, port: str) -> None:
    sim.set_fault("no_answer")
    started = time.monotonic()
    status, answered = run(port)
    assert time.monotonic() - started < 2.0
    assert not answered
    assert (status["state"], status["faults"], status["supplies"]) == (
        "offline",
        ["offline"],
        {"paper": "unknown"},
    )


def test_missing_port_is_no_device(tmp_path: Any) -> None:
    status, answered = run(str(tmp_path / "ttyUSB9"))
    assert not answered
    assert (status["device"], status["driver"], status["state"]) == (
        "printer",
        "escpos",
        "no_device",
    )


def test_watch_reports_the_last_status(sim: EscPosSimulator, port: str) -> None:
    timer = threading.Timer(0.2, lambda: setattr(sim, "paper", "low"))
    timer.start()
    started = time.monotonic()
    try:
        status, answered = run(port, watch=0.6)
    finally:
        timer.cancel()
    assert 0.6 <= time.monotonic() - started < 2.0
    assert answered
    assert (status["state"], status["supplies"]) == ("online", {"paper": "low"})


# -- the command line ------------------------------------------------------------------------------
def _cli(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kioskfleet.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        **kwargs,
    )


def test_cli_probe_against_cli_simulate(tmp_path: Any) -> None:
    link = tmp_path / "printer"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kioskfleet.cli",
            "device",
            "simulate",
            "escpos",
            "--link",
            str(link),
            "--fault",
            "paper_low",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        assert os.path.realpath(link) == port
        done = _cli("device", "probe", "escpos", str(link), "--profile", "epson-tm-t82")
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        assert (status["state"], status["supplies"], status["info"]["model"]) == (
            "online",
            {"paper": "low"},
            "TM-T82",
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
    assert server.returncode == 0


def test_cli_probe_exit_3_when_nothing_answers(tmp_path: Any) -> None:
    done = _cli("device", "probe", "escpos", str(tmp_path / "nothing"))
    assert done.returncode == 3
    assert json.loads(done.stdout)["state"] == "no_device"


def test_cli_simulate_rejects_unknown_faults() -> None:
    done = _cli("device", "simulate", "escpos", "--fault", "on_fire")
    assert done.returncode == 2
    assert "paper_out" in done.stderr
