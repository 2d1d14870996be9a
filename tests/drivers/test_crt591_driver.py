"""CRT-591 driver specifics: bytes on the wire, the ACK/NAK handshake, faults, probe JSON."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kioskfleet.drivers.base import DriverOptions
from kioskfleet.drivers.crt591 import Crt591Driver, Crt591Simulator, frames, make_simulator, probe
from kioskfleet.drivers.exceptions import DeviceOperationError, DriverError, FrameError
from kioskfleet.drivers.registry import ProbeOptions, driver_module
from kioskfleet.drivers.simulator import DeviceSimulator, PtyServer, SimulatorTransport

FAST = DriverOptions(timeout=0.2, retries=1, quirks={"inter_byte_timeout": 0.05})
PROBE = ProbeOptions(timeout=0.2, retries=1)


@pytest.fixture
def sim() -> Crt591Simulator:
    return Crt591Simulator()


@pytest.fixture
def rig(sim: Crt591Simulator) -> tuple[Crt591Driver, SimulatorTransport]:
    transport = SimulatorTransport(sim)
    return Crt591Driver(transport, FAST), transport


@pytest.fixture
def server(sim: Crt591Simulator) -> Iterator[PtyServer]:
    server = PtyServer(sim).start()
    yield server
    server.stop()


def test_package_is_registered() -> None:
    module = driver_module("crt591")
    assert module.probe is probe
    assert isinstance(module.make_simulator(), Crt591Simulator)


def test_status_bytes_on_the_wire(rig: tuple[Crt591Driver, SimulatorTransport]) -> None:
    driver, transport = rig
    driver.status()
    assert bytes(transport.written) == bytes.fromhex("f2000003433130 03b0")


def test_address_quirk(sim: Crt591Simulator) -> None:
    transport = SimulatorTransport(sim)
    driver = Crt591Driver(transport, DriverOptions(timeout=0.2, quirks={"address": 5}))
    driver.status()
    assert transport.written[1] == 5


def test_a_nak_makes_the_driver_send_the_command_again(
    rig: tuple[Crt591Driver, SimulatorTransport], sim: Crt591Simulator
) -> None:
    driver, transport = rig
    sim.set_fault("card_present")
    sim.nak_next()
    assert driver.capture() == "not_present"
    command = frames.encode_command(*frames.MOVE_TO_BIN)
    assert bytes(transport.written) == command + command
    assert sim.commands.count(frames.MOVE_TO_BIN) == 1


def test_a_corrupt_reply_is_nakked_and_the_motion_runs_once(
    rig: tuple[Crt591Driver, SimulatorTransport], sim: Crt591Simulator
) -> None:
    driver, transport = rig
    sim.set_fault("card_present")
    sim.corrupt_next()
    assert driver.capture() == "not_present"
    assert bytes(transport.written) == frames.encode_command(*frames.MOVE_TO_BIN) + bytes(
        [frames.NAK]
    )
    assert sim.commands.count(frames.MOVE_TO_BIN) == 1
    assert sim.bin_count == 1


class _NakForever(DeviceSimulator):
    def receive(self, data: bytes) -> bytes:
        return bytes([frames.NAK])


def test_a_reader_that_always_naks_gives_up() -> None:
    transport = SimulatorTransport(_NakForever())
    driver = Crt591Driver(transport, FAST)
    with pytest.raises(FrameError, match="NAKed"):
        driver.eject()
    assert bytes(transport.written) == frames.encode_command(*frames.MOVE_TO_GATE) * 3


def test_initialise_clears_a_cleared_jam_and_reports_firmware(
    rig: tuple[Crt591Driver, SimulatorTransport], sim: Crt591Simulator
) -> None:
    driver, _ = rig
    sim.set_fault("jammed")
    with pytest.raises(DeviceOperationError, match="jam"):
        driver.initialise()
    assert driver.status().faults == ["card_jammed"]
    sim.clear_jam()
    assert driver.initialise("gate") == "CRT-591-MR SIM V1.0"
    status = driver.status()
    assert (status.state, status.media, status.faults) == ("online", "present", [])


def test_not_initialised_until_init(
    rig: tuple[Crt591Driver, SimulatorTransport], sim: Crt591Simulator
) -> None:
    driver, _ = rig
    sim.set_fault("not_initialised")
    status = driver.status()
    assert (status.state, status.faults, status.media) == (
        "offline",
        ["not_initialised"],
        "unknown",
    )
    with pytest.raises(DeviceOperationError, match="not initialised"):
        driver.accept()
    driver.initialise()
    assert driver.status().state == "online"


def test_stacker_and_retain_bin_supplies(
    rig: tuple[Crt591Driver, SimulatorTransport], sim: Crt591Simulator
) -> None:
    driver, _ = rig
    assert driver.status().supplies == {"stacker": "ok", "retain_bin": "ok"}
    sim.set_fault("stacker_empty")
    sim.set_fault("retain_bin_full")
    assert driver.status().supplies == {"stacker": "empty", "retain_bin": "full"}


def test_insertion_only_with_entry_enabled(
    rig: tuple[Crt591Driver, SimulatorTransport], sim: Crt591Simulator
) -> None:
    driver, _ = rig
    driver.refuse()
    sim.insert_card()
    assert sim.position == "gate"
    sim.take_card()
    driver.accept()
    sim.insert_card()
    assert sim.position == "inside"


class _RandomDevice(DeviceSimulator):
    def __init__(self, replies: list[bytes]) -> None:
        self.replies = replies

    def receive(self, data: bytes) -> bytes:
        return self.replies.pop(0) if self.replies else b""


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=40).map(lambda b: b"\x06" + b), max_size=6))
def test_a_device_that_answers_garbage_only_raises_driver_errors(replies: list[bytes]) -> None:
    options = DriverOptions(
        timeout=0.01,
        retries=1,
        quirks={"inter_byte_timeout": 0.005, "ack_timeout": 0.01, "motion_timeout": 0.01},
    )
    driver = Crt591Driver(SimulatorTransport(_RandomDevice(replies)), options)
    for call in (driver.identify, driver.status, driver.eject, driver.capture):
        with contextlib.suppress(DriverError):
            call()


def test_simulator_faults_table(sim: Crt591Simulator) -> None:
    for name in Crt591Simulator.FAULTS:
        make_simulator().set_fault(name)
    with pytest.raises(ValueError, match="unknown fault"):
        sim.set_fault("on_fire")


# -- probe -------------------------------------------------------------------------------------
def _probe_json(port: str, options: ProbeOptions = PROBE) -> tuple[dict[str, object], bool]:
    result = probe(port, options)
    return json.loads(result.status.model_dump_json()), result.answered


def test_probe_idle(server: PtyServer, sim: Crt591Simulator) -> None:
    status, answered = _probe_json(server.port)
    assert answered
    assert status == {
        "device": "card_reader",
        "driver": "crt591",
        "state": "online",
        "info": {"model": "CRT-591", "serial": "SIM591000001", "firmware": "CRT-591-MR SIM V1.0"},
        "faults": [],
        "supplies": {"stacker": "ok", "retain_bin": "ok"},
        "media": "not_present",
        "events": [],
    }
    # a probe reads identity and status only: no INIT, no motion, no entry change
    assert set(sim.commands) == {frames.VERSION, frames.SERIAL_NUMBER, frames.STATUS}


@pytest.mark.parametrize(
    ("fault", "state", "faults", "media"),
    [
        ("no_card", "online", [], "not_present"),
        ("card_present", "online", [], "present"),
        ("card_at_gate", "online", [], "present"),
        ("jammed", "user_error", ["card_jammed"], "jammed"),
        ("retain_bin_full", "online", ["retain_bin_full"], "not_present"),
        ("not_initialised", "offline", ["not_initialised"], "unknown"),
    ],
)
def test_probe_faults(
    server: PtyServer, sim: Crt591Simulator, fault: str, state: str, faults: list[str], media: str
) -> None:
    sim.set_fault(fault)
    status, answered = _probe_json(server.port)
    assert answered
    assert (status["state"], status["faults"], status["media"]) == (state, faults, media)


def test_probe_no_answer(server: PtyServer, sim: Crt591Simulator) -> None:
    sim.set_fault("no_answer")
    status, answered = _probe_json(server.port)
    assert not answered
    assert (status["state"], status["media"]) == ("offline", "unknown")


def test_probe_no_device() -> None:
    status, answered = _probe_json("/dev/kioskfleet-no-such-port")
    assert not answered
    assert (status["device"], status["driver"], status["state"]) == (
        "card_reader",
        "crt591",
        "no_device",
    )


def test_probe_watch_reports_insertion_and_removal(server: PtyServer, sim: Crt591Simulator) -> None:
    threading.Timer(0.1, sim.set_fault, args=("card_at_gate",)).start()
    threading.Timer(0.6, sim.take_card).start()
    status, answered = _probe_json(server.port, ProbeOptions(timeout=0.2, watch=1.2))
    assert answered
    assert status["events"] == [{"type": "card_inserted"}, {"type": "card_removed"}]
