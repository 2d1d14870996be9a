"""Contract suite for the receipt-printer family, run over a real pty and in memory.

A printer driver package joins by subclassing :class:`PrinterContract` in its own test module,
naming its driver class and its simulator. The simulator is the only double: it must know the
family's fault names (``PrinterContract.FAULTS``), ``clear_faults()``, ``silent``, and record
what it printed as ``receipts`` (each with ``lines``, ``qr``, ``cut``) and ``printed_lines``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from kioskfleet.drivers.base import DriverOptions, Transport, open_transport
from kioskfleet.drivers.exceptions import DeviceTimeoutError, DeviceUnavailableError
from kioskfleet.drivers.printer import (
    InvalidReceiptError,
    PrinterNotReadyError,
    Receipt,
    ReceiptPrinter,
)
from kioskfleet.drivers.simulator import DeviceSimulator, PtyServer, SimulatorTransport
from kioskfleet.protocol.devices import PRINTER_FAULTS

#: short timeouts: the simulators answer at once, and "no answer" tests must stay fast
OPTIONS = DriverOptions(
    timeout=0.2,
    retries=1,
    quirks={"id_timeout": 0.1, "busy_wait": 0.2, "print_timeout": 2.0},
)
RECEIPT = Receipt(
    lines=["无锡市政务服务中心", "业务: 社保缴费 Social insurance", "金额 Amount: ¥120.00"],
    qr="https://zwfw.wuxi.example/r/20240501-0001",
)


@dataclass
class Rig:
    """A simulator, the driver talking to it, and the pty server when there is one."""

    sim: Any
    driver: ReceiptPrinter
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


def make_rig(
    link: str, sim: DeviceSimulator, driver_class: Any, options: DriverOptions = OPTIONS
) -> Iterator[Rig]:
    """A driver on ``sim`` over a real pty (``link="pty"``) or in memory."""
    server: PtyServer | None = None
    if link == "pty":
        server = PtyServer(sim).start()
        transport: Transport = open_transport(server.port, baudrate=115200, timeout=0.2)
    else:
        transport = SimulatorTransport(sim, timeout=0.2)
    rig = Rig(sim, driver_class(transport, options), transport, server)
    try:
        yield rig
    finally:
        rig.driver.close()
        if rig.server is not None:
            rig.server.stop()


def assert_fast(started: float, limit: float = 2.0) -> None:
    """The driver gave up in time instead of hanging."""
    assert time.monotonic() - started < limit, "the driver hung instead of timing out"


class PrinterContract:
    """What every :class:`ReceiptPrinter` does, whatever its protocol."""

    FAULTS: ClassVar[tuple[str, ...]] = (
        "paper_low",
        "paper_out",
        "cover_open",
        "cutter_jam",
        "no_answer",
    )
    driver_class: ClassVar[type[ReceiptPrinter]]

    def make_simulator(self) -> DeviceSimulator:
        raise NotImplementedError

    @pytest.fixture(params=["memory", "pty"])
    def rig(self, request: pytest.FixtureRequest) -> Iterator[Rig]:
        yield from make_rig(request.param, self.make_simulator(), self.driver_class)

    def test_simulator_knows_the_family_faults(self) -> None:
        assert set(self.FAULTS) <= set(self.make_simulator().FAULTS)

    def test_identify(self, rig: Rig) -> None:
        info = rig.driver.identify()
        assert info.model

    def test_healthy_status(self, rig: Rig) -> None:
        status = rig.driver.status()
        assert (status.device, status.driver) == ("printer", rig.driver.name)
        assert (status.state, status.faults, status.supplies) == ("online", [], {"paper": "full"})
        assert status.events == []

    @pytest.mark.parametrize(
        ("fault", "state", "faults", "paper"),
        [
            ("paper_low", "online", [], "low"),
            ("paper_out", "user_error", ["paper_out"], "out"),
            ("cover_open", "user_error", ["cover_open"], "full"),
            ("cutter_jam", "hardware_error", ["cutter_error"], "full"),
        ],
    )
    def test_fault_switches(
        self, rig: Rig, fault: str, state: str, faults: list[str], paper: str
    ) -> None:
        rig.sim.set_fault(fault)
        status = rig.driver.status()
        assert (status.state, status.faults, status.supplies) == (state, faults, {"paper": paper})
        assert set(status.faults) <= set(PRINTER_FAULTS)
        rig.sim.clear_faults()
        assert rig.driver.status().state == "online"

    def test_prints_text_qr_and_cuts(self, rig: Rig) -> None:
        status = rig.driver.print_receipt(RECEIPT)
        assert status.state == "online"
        [printed] = rig.sim.receipts
        assert [line for line in printed.lines if line] == list(RECEIPT.lines)
        assert printed.qr == [RECEIPT.qr]
        assert printed.cut

    def test_prints_without_cut(self, rig: Rig) -> None:
        rig.driver.print_receipt(Receipt(lines=["第一联"], cut=False))
        rig.driver.print_receipt(Receipt(lines=["第二联"]))
        [printed] = rig.sim.receipts
        assert [line for line in printed.lines if line] == ["第一联", "第二联"]

    def test_paper_low_still_prints(self, rig: Rig) -> None:
        rig.sim.set_fault("paper_low")
        status = rig.driver.print_receipt(Receipt(lines=["ok"]))
        assert (status.state, status.supplies["paper"]) == ("online", "low")
        assert "ok" in rig.sim.printed_lines

    @pytest.mark.parametrize("fault", ["paper_out", "cover_open", "cutter_jam"])
    def test_refuses_to_print_into_a_fault(self, rig: Rig, fault: str) -> None:
        rig.sim.set_fault(fault)
        with pytest.raises(PrinterNotReadyError) as caught:
            rig.driver.print_receipt(RECEIPT)
        assert caught.value.status.state in ("user_error", "hardware_error")
        assert caught.value.status.faults
        rig.sim.clear_faults()
        assert rig.sim.printed_lines == []  # nothing was sent, nothing comes out later
        rig.driver.print_receipt(RECEIPT)
        assert len(rig.sim.receipts) == 1

    @pytest.mark.parametrize(
        "receipt",
        [
            Receipt(lines=[]),
            Receipt(lines=["a\x1b@b"]),
            Receipt(lines=["x" * 1000]),
            Receipt(lines=["x"] * 1000),
            Receipt(lines=["ok"], qr=""),
            Receipt(lines=["ok"], qr="x" * 5000),
        ],
    )
    def test_invalid_receipt_sends_nothing(self, rig: Rig, receipt: Receipt) -> None:
        with pytest.raises(InvalidReceiptError):
            rig.driver.print_receipt(receipt)
        assert rig.sim.printed_lines == []
        assert rig.sim.receipts == []

    def test_receipt_repr_hides_its_text(self) -> None:
        assert "无锡" not in repr(RECEIPT)
        assert "zwfw" not in str(RECEIPT)

    def test_no_answer_times_out(self, rig: Rig) -> None:
        rig.sim.set_fault("no_answer")
        for call in (
            rig.driver.identify,
            rig.driver.status,
            lambda: rig.driver.print_receipt(RECEIPT),
        ):
            started = time.monotonic()
            with pytest.raises(DeviceTimeoutError):
                call()
            assert_fast(started)
        offline = rig.driver.offline_status(DeviceTimeoutError("x"))
        assert (offline.state, offline.faults, offline.supplies) == (
            "offline",
            ["offline"],
            {"paper": "unknown"},
        )

    def test_recovers_after_the_device_comes_back(self, rig: Rig) -> None:
        rig.sim.set_fault("no_answer")
        with pytest.raises(DeviceTimeoutError):
            rig.driver.status()
        rig.sim.silent = False
        assert rig.driver.status().state == "online"

    def test_unplug_raises_unavailable(self, rig: Rig) -> None:
        rig.driver.status()
        rig.unplug()
        for call in (rig.driver.status, lambda: rig.driver.print_receipt(RECEIPT)):
            started = time.monotonic()
            with pytest.raises(DeviceUnavailableError):
                call()
            assert_fast(started)
