"""Contract suite for the cash family (banknote validators, coin acceptors).

Every cash driver joins by subclassing :class:`CashAcceptorContract` in its own test module:
it names how to build its simulator and driver, which channel to insert and what it is worth,
and what each fault switch must look like in the status. Each test runs twice: over a real
pseudo-terminal (``PtyServer``) and in memory (``SimulatorTransport``). The simulators are the
only doubles.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from kioskfleet.drivers.base import DriverOptions, Transport, open_transport
from kioskfleet.drivers.cash import CashAcceptor, CashEvent
from kioskfleet.drivers.exceptions import (
    DeviceOperationError,
    DeviceTimeoutError,
    DeviceUnavailableError,
    DriverError,
)
from kioskfleet.drivers.simulator import DeviceSimulator, PtyServer, SimulatorTransport
from kioskfleet.protocol.devices import CASH_FAULTS, CASHBOX_LEVELS, DEVICE_STATES

#: short timeouts: simulators answer at once, and "no answer" tests must stay fast
OPTIONS = DriverOptions(timeout=0.25, retries=1)


@dataclass
class CashRig:
    """A simulator, the driver talking to it, and the pty server when there is one."""

    sim: Any
    driver: CashAcceptor
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


def poll_until(
    driver: CashAcceptor, found: Callable[[CashEvent], bool], polls: int = 6
) -> list[CashEvent]:
    """Poll a few times (no sleeping: simulators act at once) until an event matches."""
    seen: list[CashEvent] = []
    for _ in range(polls):
        seen.extend(driver.poll())
        if any(found(event) for event in seen):
            break
    return seen


def of_type(kind: str) -> Callable[[CashEvent], bool]:
    """Event predicate on ``type``."""
    return lambda event: event["type"] == kind


class CashAcceptorContract:
    """The behaviour every cash driver shows against its simulator."""

    #: the device kind the status must carry
    device_kind: ClassVar[str] = "cash_acceptor"
    #: a channel the simulator knows, and its value in fen
    credit_channel: ClassVar[int]
    credit_value: ClassVar[int]
    #: a second channel, used to test per-channel inhibits
    other_channel: ClassVar[int]
    escrow: ClassVar[bool] = True
    cashbox_known: ClassVar[bool] = True
    baudrate: ClassVar[int] = 9600
    open_kwargs: ClassVar[dict[str, Any]] = {}
    #: fault switch → (state, faults) the status must show
    fault_expectations: ClassVar[dict[str, tuple[str, list[str]]]]
    #: fault switch → the event the next poll must carry
    fault_events: ClassVar[dict[str, CashEvent]] = {}

    def make_simulator(self) -> DeviceSimulator:
        raise NotImplementedError

    def make_driver(self, transport: Transport, options: DriverOptions) -> CashAcceptor:
        raise NotImplementedError

    # -- fixtures --------------------------------------------------------------------------
    @pytest.fixture(params=["pty", "memory"])
    def rig(self, request: pytest.FixtureRequest) -> Iterator[CashRig]:
        sim = self.make_simulator()
        server: PtyServer | None = None
        if request.param == "pty":
            server = PtyServer(sim).start()
            transport: Transport = open_transport(
                server.port, baudrate=self.baudrate, timeout=0.25, **self.open_kwargs
            )
        else:
            transport = SimulatorTransport(sim, timeout=0.25)
        rig = CashRig(sim, self.make_driver(transport, OPTIONS), transport, server)
        try:
            yield rig
        finally:
            rig.driver.close()
            if rig.server is not None:
                rig.server.stop()

    @pytest.fixture
    def ready(self, rig: CashRig) -> CashRig:
        """Identified and baselined: what an agent does before enabling."""
        rig.driver.identify()
        rig.driver.baseline()
        return rig

    # -- identity and status ---------------------------------------------------------------
    def test_identify_reports_identity_and_channels(self, rig: CashRig) -> None:
        info = rig.driver.identify()
        assert info.model
        assert info.serial
        assert info.firmware
        channels = rig.driver.channels
        assert channels[self.credit_channel].value == self.credit_value
        for number, channel in channels.items():
            assert channel.channel == number
            assert isinstance(channel.value, int)
            assert channel.value > 0
            assert channel.currency == "CNY"

    def test_healthy_status_in_vocabulary(self, ready: CashRig) -> None:
        status = ready.driver.status().model_dump()
        assert status["device"] == self.device_kind
        assert status["state"] == "online"
        assert status["faults"] == []
        assert status["supplies"] == {"cashbox": "ok" if self.cashbox_known else "unknown"}
        assert status["events"] == []
        assert status["info"]["serial"]

    def test_poll_interval_hint_fast_when_enabled_slow_when_inhibited(self, ready: CashRig) -> None:
        assert ready.driver.poll_interval_hint >= 1.0
        ready.driver.enable()
        assert ready.driver.poll_interval_hint <= 0.5
        ready.driver.disable()
        assert ready.driver.poll_interval_hint >= 1.0

    # -- accepting cash --------------------------------------------------------------------
    def test_insert_gives_one_credit_in_fen(self, ready: CashRig) -> None:
        ready.driver.enable()
        assert ready.sim.insert(self.credit_channel)
        events = poll_until(ready.driver, of_type("credit"))
        credits = [e for e in events if e["type"] == "credit"]
        assert credits == [
            {
                "type": "credit",
                "value": self.credit_value,
                "currency": "CNY",
                "channel": self.credit_channel,
            }
        ]
        # and it is reported once only
        assert not [
            e for e in poll_until(ready.driver, of_type("credit"), 2) if e["type"] == "credit"
        ]

    def test_disabled_acceptor_takes_nothing(self, ready: CashRig) -> None:
        ready.driver.enable()
        ready.driver.disable()
        assert not ready.driver.enabled
        assert not ready.sim.insert(self.credit_channel)
        assert not [
            e for e in poll_until(ready.driver, of_type("credit"), 3) if e["type"] == "credit"
        ]

    def test_inhibited_channel_is_rejected(self, ready: CashRig) -> None:
        ready.driver.enable(channels=[self.credit_channel])
        ready.sim.insert(self.other_channel)
        events = poll_until(ready.driver, of_type("rejected"))
        assert {"credit"}.isdisjoint(e["type"] for e in events)
        rejected = [e for e in events if e["type"] == "rejected"]
        assert rejected
        assert isinstance(rejected[0]["reason"], str)

    def test_status_never_consumes_events(self, ready: CashRig) -> None:
        ready.driver.enable()
        ready.sim.insert(self.credit_channel)
        ready.driver.status()
        ready.driver.status()
        events = poll_until(ready.driver, of_type("credit"))
        assert [e["value"] for e in events if e["type"] == "credit"] == [self.credit_value]

    def test_escrow_accept_then_credit(self, ready: CashRig) -> None:
        if not self.escrow:
            pytest.skip("this device has no escrow")
        ready.driver.enable(escrow=True)
        ready.sim.insert(self.credit_channel)
        events = poll_until(ready.driver, of_type("escrow"))
        assert {"type": "escrow", "channel": self.credit_channel} in events
        assert not [e for e in events if e["type"] == "credit"]
        assert ready.driver.escrow == self.credit_channel
        assert ready.driver.status().state == "busy"
        # holding: more polls do not credit it by themselves
        assert not [
            e for e in poll_until(ready.driver, of_type("credit"), 2) if e["type"] == "credit"
        ]
        ready.driver.accept_escrow()
        events = poll_until(ready.driver, of_type("credit"))
        assert [e["value"] for e in events if e["type"] == "credit"] == [self.credit_value]
        assert ready.driver.escrow is None

    def test_escrow_return_gives_no_credit(self, ready: CashRig) -> None:
        if not self.escrow:
            pytest.skip("this device has no escrow")
        ready.driver.enable(escrow=True)
        ready.sim.insert(self.credit_channel)
        poll_until(ready.driver, of_type("escrow"))
        ready.driver.return_escrow()
        events = poll_until(ready.driver, of_type("rejected"))
        assert [e["type"] for e in events if e["type"] in ("credit", "rejected")] == ["rejected"]

    def test_escrow_calls_without_a_note_fail_cleanly(self, ready: CashRig) -> None:
        with pytest.raises(DeviceOperationError):
            ready.driver.accept_escrow()
        with pytest.raises(DeviceOperationError):
            ready.driver.return_escrow()

    # -- faults ----------------------------------------------------------------------------
    def test_fault_switches_show_in_status(self) -> None:
        for name, (state, faults) in self.fault_expectations.items():
            sim = self.make_simulator()
            transport = SimulatorTransport(sim, timeout=0.25)
            driver = self.make_driver(transport, OPTIONS)
            driver.identify()
            driver.baseline()
            sim.set_fault(name)
            events = driver.poll()
            status = driver.status()
            assert status.state == state, name
            assert status.state in DEVICE_STATES
            assert status.faults == faults, name
            assert set(status.faults) <= set(CASH_FAULTS)
            assert status.supplies["cashbox"] in CASHBOX_LEVELS
            if name in self.fault_events:
                assert self.fault_events[name] in events, (name, events)

    def test_fault_seen_over_the_rig_transport(self, ready: CashRig) -> None:
        name, (state, faults) = next(iter(self.fault_expectations.items()))
        ready.sim.set_fault(name)
        ready.driver.poll()
        status = ready.driver.status()
        assert (status.state, status.faults) == (state, faults)

    def test_unknown_fault_name_is_refused(self, rig: CashRig) -> None:
        with pytest.raises(ValueError, match="unknown fault"):
            rig.sim.set_fault("no_such_fault")

    def test_no_answer_times_out_quickly(self, ready: CashRig) -> None:
        ready.sim.set_fault("no_answer")
        started = time.monotonic()
        with pytest.raises(DeviceTimeoutError):
            ready.driver.status()
        assert time.monotonic() - started < 2.0, "the driver hung instead of timing out"

    def test_line_noise_is_skipped(self, ready: CashRig) -> None:
        ready.sim.set_fault("line_noise")
        assert ready.driver.status().state == "online"

    def test_unplugged_port_raises_driver_error(self, ready: CashRig) -> None:
        ready.unplug()
        started = time.monotonic()
        with pytest.raises(DriverError) as caught:
            ready.driver.status()
        assert time.monotonic() - started < 2.0
        if ready.transport.__class__ is SimulatorTransport:
            assert isinstance(caught.value, DeviceUnavailableError)
