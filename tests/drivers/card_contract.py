"""Contract suites for the card-reader families, run over a real pty and in memory.

A driver package joins a family's suite by subclassing its contract class in its own test
module and naming its driver, its simulator and (ID readers) the fake card the simulator lays
on the reader. The simulator is the only double: it must know the family's fault names
(``IdCardReaderContract.FAULTS`` / ``MotorCardReaderContract.FAULTS``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import pytest

from kioskfleet.drivers.base import DriverOptions, Transport, open_transport
from kioskfleet.drivers.cards import IdCard, IdCardReader, MotorCardReader
from kioskfleet.drivers.exceptions import (
    DeviceOperationError,
    DeviceTimeoutError,
    DeviceUnavailableError,
    DriverError,
)
from kioskfleet.drivers.simulator import DeviceSimulator, PtyServer, SimulatorTransport

#: short timeouts: the simulators answer at once, and "no answer" tests must stay fast
OPTIONS = DriverOptions(
    timeout=0.2, retries=1, quirks={"read_timeout": 0.4, "inter_byte_timeout": 0.1}
)


class JammableSimulator(Protocol):
    """What the motor-reader suite needs beyond :class:`DeviceSimulator`."""

    def set_fault(self, name: str) -> None: ...
    def jam_next(self) -> None: ...
    def insert_card(self) -> None: ...


@dataclass
class Rig:
    """A simulator, the driver talking to it, and the pty server when there is one."""

    sim: Any
    driver: Any
    transport: Transport
    server: PtyServer | None

    def unplug(self) -> None:
        """Make the port vanish under the driver."""
        if self.server is not None:
            self.server.stop()
            self.server = None
        else:
            assert isinstance(self.transport, SimulatorTransport)
            self.transport.is_open = False


def _rig(link: str, sim: DeviceSimulator, driver_class: Any) -> Iterator[Rig]:
    server: PtyServer | None = None
    if link == "pty":
        server = PtyServer(sim).start()
        transport: Transport = open_transport(server.port, baudrate=115200, timeout=0.2)
    else:
        transport = SimulatorTransport(sim, timeout=0.2)
    rig = Rig(sim, driver_class(transport, OPTIONS), transport, server)
    try:
        yield rig
    finally:
        rig.driver.close()
        if rig.server is not None:
            rig.server.stop()


def _assert_fast(started: float, limit: float = 2.0) -> None:
    assert time.monotonic() - started < limit, "the driver hung instead of timing out"


class IdCardReaderContract:
    """What every :class:`IdCardReader` does, whatever its protocol."""

    FAULTS: ClassVar[tuple[str, ...]] = (
        "no_card",
        "card_present",
        "sam_fault",
        "read_error",
        "no_answer",
    )
    driver_class: ClassVar[type[IdCardReader]]
    #: the card the simulator's ``card_present`` switch lays on the reader
    fake_card: ClassVar[IdCard]

    def make_simulator(self) -> DeviceSimulator:
        raise NotImplementedError

    @pytest.fixture(params=["memory", "pty"])
    def rig(self, request: pytest.FixtureRequest) -> Iterator[Rig]:
        yield from _rig(request.param, self.make_simulator(), self.driver_class)

    def test_simulator_knows_the_family_faults(self) -> None:
        assert set(self.FAULTS) <= set(self.make_simulator().FAULTS)

    def test_identify(self, rig: Rig) -> None:
        info = rig.driver.identify()
        assert info.model

    def test_no_card(self, rig: Rig) -> None:
        rig.sim.set_fault("no_card")
        status = rig.driver.status()
        assert (status.device, status.driver) == ("id_reader", rig.driver.name)
        assert (status.state, status.media, status.faults) == ("online", "not_present", [])
        assert rig.driver.read_card() is None

    def test_card_present_is_read(self, rig: Rig) -> None:
        rig.sim.set_fault("card_present")
        status = rig.driver.status()
        assert (status.state, status.media, status.faults) == ("online", "present", [])
        card = rig.driver.read_card()
        assert card is not None
        for field in ("name", "sex", "nation", "birth_date", "address", "id_number", "issuer"):
            assert getattr(card, field) == getattr(self.fake_card, field), field
        assert (card.valid_from, card.valid_until) == (
            self.fake_card.valid_from,
            self.fake_card.valid_until,
        )

    def test_sam_fault(self, rig: Rig) -> None:
        rig.sim.set_fault("card_present")
        rig.sim.set_fault("sam_fault")
        status = rig.driver.status()
        assert (status.state, status.faults) == ("hardware_error", ["sam_fault"])
        with pytest.raises(DeviceOperationError):
            rig.driver.read_card()

    def test_read_error_shows_until_the_card_leaves(self, rig: Rig) -> None:
        rig.sim.set_fault("read_error")
        with pytest.raises(DeviceOperationError):
            rig.driver.read_card()
        status = rig.driver.status()
        assert (status.state, status.media, status.faults) == (
            "user_error",
            "present",
            ["read_error"],
        )
        rig.sim.set_fault("no_card")
        status = rig.driver.status()
        assert (status.state, status.media, status.faults) == ("online", "not_present", [])

    def test_no_answer_times_out(self, rig: Rig) -> None:
        rig.sim.set_fault("no_answer")
        for call in (rig.driver.identify, rig.driver.status, rig.driver.read_card):
            started = time.monotonic()
            with pytest.raises(DeviceTimeoutError):
                call()
            _assert_fast(started)
        offline = rig.driver.offline_status(DeviceTimeoutError("x"))
        assert (offline.state, offline.media) == ("offline", "unknown")

    def test_recovers_after_the_device_comes_back(self, rig: Rig) -> None:
        rig.sim.set_fault("no_answer")
        with pytest.raises(DeviceTimeoutError):
            rig.driver.status()
        rig.sim.silent = False
        assert rig.driver.status().state == "online"

    def test_unplug_raises_unavailable(self, rig: Rig) -> None:
        rig.driver.status()
        rig.unplug()
        started = time.monotonic()
        with pytest.raises(DeviceUnavailableError):
            rig.driver.status()
        _assert_fast(started)


class MotorCardReaderContract:
    """What every :class:`MotorCardReader` does, whatever its protocol."""

    FAULTS: ClassVar[tuple[str, ...]] = (
        "no_card",
        "card_present",
        "card_at_gate",
        "jammed",
        "retain_bin_full",
        "no_answer",
    )
    driver_class: ClassVar[type[MotorCardReader]]

    def make_simulator(self) -> DeviceSimulator:
        raise NotImplementedError

    @pytest.fixture(params=["memory", "pty"])
    def rig(self, request: pytest.FixtureRequest) -> Iterator[Rig]:
        yield from _rig(request.param, self.make_simulator(), self.driver_class)

    def test_simulator_knows_the_family_faults(self) -> None:
        assert set(self.FAULTS) <= set(self.make_simulator().FAULTS)

    def test_identify(self, rig: Rig) -> None:
        info = rig.driver.identify()
        assert info.model

    @pytest.mark.parametrize(
        ("fault", "media"),
        [("no_card", "not_present"), ("card_present", "present"), ("card_at_gate", "present")],
    )
    def test_media(self, rig: Rig, fault: str, media: str) -> None:
        rig.sim.set_fault(fault)
        status = rig.driver.status()
        assert (status.device, status.driver) == ("card_reader", rig.driver.name)
        assert (status.state, status.media, status.faults) == ("online", media, [])

    def test_jammed(self, rig: Rig) -> None:
        rig.sim.set_fault("jammed")
        status = rig.driver.status()
        assert (status.state, status.media) == ("user_error", "jammed")
        assert "card_jammed" in status.faults
        with pytest.raises(DeviceOperationError):
            rig.driver.eject()

    def test_jam_during_a_move_shows_in_the_status(self, rig: Rig) -> None:
        rig.sim.set_fault("card_present")
        rig.sim.jam_next()
        with pytest.raises(DeviceOperationError):
            rig.driver.eject()
        status = rig.driver.status()
        assert (status.state, status.media) == ("user_error", "jammed")
        assert "card_jammed" in status.faults

    def test_accept_then_eject_then_capture(self, rig: Rig) -> None:
        rig.driver.accept()
        rig.sim.insert_card()
        assert rig.driver.status().media == "present"
        assert rig.driver.eject() == "present"  # at the gate, waiting for the customer
        assert rig.driver.capture() == "not_present"
        assert rig.driver.status().media == "not_present"

    def test_retain_bin_full(self, rig: Rig) -> None:
        rig.sim.set_fault("card_present")
        rig.sim.set_fault("retain_bin_full")
        status = rig.driver.status()
        assert status.state == "online"  # customers can still use it; the fault says why
        assert "retain_bin_full" in status.faults
        with pytest.raises(DeviceOperationError):
            rig.driver.capture()

    def test_no_answer_times_out(self, rig: Rig) -> None:
        rig.sim.set_fault("no_answer")
        for call in (rig.driver.identify, rig.driver.status, rig.driver.eject):
            started = time.monotonic()
            with pytest.raises(DeviceTimeoutError):
                call()
            _assert_fast(started)

    def test_recovers_after_the_device_comes_back(self, rig: Rig) -> None:
        rig.sim.set_fault("no_answer")
        with pytest.raises(DriverError):
            rig.driver.status()
        rig.sim.silent = False
        assert rig.driver.status().state == "online"

    def test_unplug_raises_unavailable(self, rig: Rig) -> None:
        rig.driver.status()
        rig.unplug()
        started = time.monotonic()
        for call in (rig.driver.status, rig.driver.eject):
            with pytest.raises(DeviceUnavailableError):
                call()
        _assert_fast(started)
