"""ESC/POS driver beyond the family contract: quirks, flow control, ASB, identity, the wire."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from printer_contract import OPTIONS, Rig, assert_fast, make_rig

from kioskfleet.drivers.base import DriverOptions
from kioskfleet.drivers.escpos import EscPosPrinter, EscPosSimulator, frames, status_from_flags
from kioskfleet.drivers.escpos.frames import PrinterFlags
from kioskfleet.drivers.exceptions import DeviceTimeoutError, DriverError
from kioskfleet.drivers.printer import PrinterNotReadyError, Receipt
from kioskfleet.drivers.simulator import DeviceSimulator, SimulatorTransport
from kioskfleet.protocol.devices import DEVICE_STATES, PAPER_LEVELS, PRINTER_FAULTS

SNBC = DriverOptions(
    timeout=0.2,
    retries=1,
    quirks={**OPTIONS.quirks, "dle_eot3_bit2": "paper_jam", "model": "SNBC BT-T080"},
)


@pytest.fixture(params=["memory", "pty"])
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    yield from make_rig(request.param, EscPosSimulator("epson"), EscPosPrinter)


@pytest.fixture(params=["memory", "pty"])
def snbc(request: pytest.FixtureRequest) -> Iterator[Rig]:
    yield from make_rig(request.param, EscPosSimulator("snbc"), EscPosPrinter, SNBC)


# -- meaning of the bits ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (PrinterFlags(), ("online", [], "full")),
        (PrinterFlags(paper_near_end=True), ("online", [], "low")),
        (
            PrinterFlags(offline=True, paper_end_stop=True, paper_near_end=True, paper_end=True),
            ("user_error", ["paper_out"], "out"),
        ),
        (PrinterFlags(offline=True, cover_open=True), ("user_error", ["cover_open"], "full")),
        (
            PrinterFlags(offline=True, error=True, cutter_error=True),
            ("hardware_error", ["cutter_error"], "full"),
        ),
        (
            PrinterFlags(offline=True, error=True, unrecoverable_error=True),
            ("hardware_error", ["unrecoverable_error"], "full"),
        ),
        (
            PrinterFlags(offline=True, error=True, recoverable_error=True),
            ("busy", ["recoverable_error"], "full"),
        ),
        (
            PrinterFlags(offline=True, error=True, mechanical_error=True),
            ("hardware_error", ["mechanical_error"], "full"),
        ),
        (PrinterFlags(offline=True, error=True), ("hardware_error", ["hardware_fault"], "full")),
        (PrinterFlags(offline=True, waiting_recovery=True), ("busy", [], "full")),
        (PrinterFlags(offline=True, feeding=True), ("busy", [], "full")),
        (PrinterFlags(offline=True), ("user_error", ["offline"], "full")),
        # the worst state wins; every fault is listed
        (
            PrinterFlags(offline=True, cover_open=True, error=True, cutter_error=True),
            ("hardware_error", ["cover_open", "cutter_error"], "full"),
        ),
        (
            PrinterFlags(offline=True, cover_open=True, error=True, recoverable_error=True),
            ("user_error", ["cover_open", "recoverable_error"], "full"),
        ),
    ],
)
def test_status_from_flags(flags: PrinterFlags, expected: tuple[str, list[str], str]) -> None:
    assert status_from_flags(flags) == expected


flags_strategy = st.builds(
    PrinterFlags, **{f.name: st.booleans() for f in dataclasses.fields(PrinterFlags)}
)


@given(flags_strategy, st.sampled_from(["mechanical_error", "paper_jam"]))
def test_any_flags_map_into_the_vocabulary(flags: PrinterFlags, jam_bit: str) -> None:
    state, faults, paper = status_from_flags(flags, jam_bit=jam_bit)
    assert state in DEVICE_STATES
    assert paper in PAPER_LEVELS
    assert len(set(faults)) == len(faults)
    assert all(f in PRINTER_FAULTS or f in ("mechanical_error", "hardware_fault") for f in faults)
    if state == "online":
        assert faults == []
    if faults:
        assert state != "online"
    assert ("paper_out" in faults) == (flags.paper_end or flags.paper_end_stop)
    assert ("paper_jam" in faults) == (paper == "jammed")
    if "paper_jam" not in faults:
        assert ("paper_out" in faults) == (paper == "out")


def test_snbc_bit2_is_a_paper_jam() -> None:
    flags = PrinterFlags(offline=True, error=True, mechanical_error=True)
    assert status_from_flags(flags, jam_bit="paper_jam") == ("user_error", ["paper_jam"], "jammed")


def test_snbc_quirk_over_the_wire(snbc: Rig) -> None:
    snbc.sim.set_fault("paper_jam")
    status = snbc.driver.status()
    assert (status.state, status.faults, status.supplies) == (
        "user_error",
        ["paper_jam"],
        {"paper": "jammed"},
    )


def test_without_the_quirk_bit2_is_mechanical(rig: Rig) -> None:
    rig.sim.set_fault("paper_jam")
    status = rig.driver.status()
    assert (status.state, status.faults) == ("hardware_error", ["mechanical_error"])


@pytest.mark.parametrize(
    ("fault", "state", "faults"),
    [
        ("unrecoverable", "hardware_error", ["unrecoverable_error"]),
        ("recoverable", "busy", ["recoverable_error"]),
    ],
)
def test_error_switches(rig: Rig, fault: str, state: str, faults: list[str]) -> None:
    rig.sim.set_fault(fault)
    status = rig.driver.status()
    assert (status.state, status.faults) == (state, faults)


def test_unknown_quirk_value_is_refused() -> None:
    with pytest.raises(ValueError, match="dle_eot3_bit2"):
        EscPosPrinter(
            SimulatorTransport(EscPosSimulator()), DriverOptions(quirks={"dle_eot3_bit2": "x"})
        )


def test_unknown_fault_and_model_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        EscPosSimulator().set_fault("on_fire")
    with pytest.raises(ValueError, match="unknown escpos model"):
        EscPosSimulator("hp")


# -- printing --------------------------------------------------------------------------------------
def test_busy_printer_is_waited_for_then_refused(rig: Rig) -> None:
    rig.sim.set_fault("recoverable")
    started = time.monotonic()
    with pytest.raises(PrinterNotReadyError) as caught:
        rig.driver.print_receipt(Receipt(lines=["x"]))
    assert caught.value.status.state == "busy"
    assert time.monotonic() - started >= 0.2  # busy_wait
    assert_fast(started)


def test_paper_running_out_mid_receipt_is_reported(rig: Rig) -> None:
    rig.sim.paper_lines_left = 2
    with pytest.raises(PrinterNotReadyError) as caught:
        rig.driver.print_receipt(Receipt(lines=["1", "2", "3", "4"]))
    assert caught.value.status.faults == ["paper_out"]
    assert rig.sim.printed_lines == ["1", "2"]
    # a new roll: the rest of the receipt comes out, as on a real printer
    rig.sim.clear_faults()
    assert rig.driver.status().state == "online"
    assert rig.sim.printed_lines[:4] == ["1", "2", "3", "4"]
    assert rig.sim.cuts == 1


def test_cutter_jam_on_the_cut(rig: Rig) -> None:
    rig.sim.jam_next_cut()
    with pytest.raises(PrinterNotReadyError) as caught:
        rig.driver.print_receipt(Receipt(lines=["x"]))
    assert (caught.value.status.state, caught.value.status.faults) == (
        "hardware_error",
        ["cutter_error"],
    )
    assert rig.sim.cuts == 0


def test_bytes_on_the_wire() -> None:
    sim = EscPosSimulator()
    transport = SimulatorTransport(sim, timeout=0.2)
    printer = EscPosPrinter(transport, OPTIONS)
    printer.status()
    assert bytes(transport.written) == b"\x10\x04\x01\x10\x04\x02\x10\x04\x03\x10\x04\x04"
    transport.written.clear()
    printer.print_receipt(Receipt(lines=["无锡"], qr="Q"))
    sent = bytes(transport.written)
    receipt = sent[12 : sent.index(b"\x10\x04", 12)]  # between the status rounds
    assert receipt == frames.encode_receipt(["无锡"], "Q")
    assert receipt.startswith(b"\x1b@\x1c&" + "无锡".encode("gb18030") + b"\n")


def test_profile_cut_and_chinese_quirks() -> None:
    sim = EscPosSimulator()
    transport = SimulatorTransport(sim, timeout=0.2)
    options = DriverOptions(timeout=0.2, quirks={"cut": "full", "chinese": False})
    EscPosPrinter(transport, options).print_receipt(Receipt(lines=["abc"]))
    assert b"\x1c&" not in transport.written
    assert b"\x1dVA\x00" in transport.written
    assert sim.printed_lines[0] == "abc"


def test_xoff_xon_noise_is_handled(rig: Rig) -> None:
    rig.sim.set_fault("xoff_noise")
    assert rig.driver.identify().model == "TM-T82"
    assert rig.driver.status().state == "online"
    long_receipt = Receipt(lines=[f"第{n}行 line {n}" for n in range(40)], qr="x" * 300)
    assert rig.driver.print_receipt(long_receipt).state == "online"
    assert [line for line in rig.sim.receipts[0].lines if line] == list(long_receipt.lines)
    assert not rig.driver.xoff  # type: ignore[attr-defined]


@pytest.mark.parametrize("link", ["memory", "pty"])
def test_xoff_without_xon_times_out(link: str) -> None:
    options = DriverOptions(timeout=0.2, retries=1, quirks={**OPTIONS.quirks, "print_timeout": 0.3})
    for rig in make_rig(link, EscPosSimulator(), EscPosPrinter, options):
        rig.sim.set_fault("xoff_stuck")
        started = time.monotonic()
        with pytest.raises(DeviceTimeoutError, match="XOFF"):
            # over a pty the XOFF may arrive after the last chunk of the first receipt went
            # out (as with real hardware); once seen, it holds every later byte back
            for _ in range(2):
                rig.driver.print_receipt(Receipt(lines=["x" * 100] * 10))
        assert_fast(started, limit=3.0)


# -- ASB, identity, stale replies ------------------------------------------------------------------
def test_asb_blocks_interleave_with_status(rig: Rig) -> None:
    rig.sim.set_fault("asb")
    driver: EscPosPrinter = rig.driver  # type: ignore[assignment]
    assert driver.status().state == "online"
    assert driver.last_asb == PrinterFlags()
    rig.sim.cover_open = True
    status = driver.status()
    assert status.faults == ["cover_open"]
    assert driver.last_asb is not None
    assert driver.last_asb.cover_open


def test_enable_asb_sends_gs_a(rig: Rig) -> None:
    driver: EscPosPrinter = rig.driver  # type: ignore[assignment]
    rig.sim.paper = "low"
    driver.enable_asb()
    driver.status()  # a round trip: the printer has taken GS a by now (a pty is asynchronous)
    assert rig.sim.asb_mask == 0x0F
    assert driver.last_asb is not None
    assert driver.last_asb.paper_near_end
    driver.enable_asb(False)
    driver.status()
    assert rig.sim.asb_mask == 0


def test_identity_of_each_model(rig: Rig, snbc: Rig) -> None:
    info = rig.driver.identify()
    assert (info.model, info.firmware, info.serial) == ("TM-T82", "30.01 ESC/POS", "X4SM012345")
    info = snbc.driver.identify()
    assert (info.model, info.firmware, info.serial) == ("BT-T080", "V1.05", None)


def test_identity_unknown_falls_back_to_the_profile(snbc: Rig) -> None:
    snbc.sim.set_fault("no_identity")
    info = snbc.driver.identify()
    assert (info.model, info.firmware, info.serial) == ("SNBC BT-T080", None, None)
    assert snbc.driver.status().info.model == "SNBC BT-T080"


def test_offline_printer_is_not_asked_gs_i(rig: Rig) -> None:
    rig.sim.set_fault("cover_open")
    info = rig.driver.identify()
    assert info.model is None
    assert not any(c.name == "gs_i" for c in rig.sim.commands)


def test_late_gs_i_reply_does_not_answer_a_status_request(rig: Rig) -> None:
    rig.sim.set_fault("cover_open")
    rig.driver.transport.write(frames.identity_request(frames.ID_MODEL))  # held while offline
    rig.sim.clear_faults()
    # the held "_TM-T82\0" comes out now, ahead of the DLE EOT replies: "R" (0x52) would pass
    # for a DLE EOT reply if the string were not recognised
    for _ in range(3):
        status = rig.driver.status()
        assert (status.state, status.faults) == ("online", [])


# -- garbage ---------------------------------------------------------------------------------------
class _Noise(DeviceSimulator):
    """A device double that answers every write with the given bytes."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply

    def receive(self, data: bytes) -> bytes:
        return self.reply


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(min_size=1, max_size=40))
def test_random_replies_raise_only_driver_errors(reply: bytes) -> None:
    options = DriverOptions(timeout=0.01, retries=0, quirks={"id_timeout": 0.01})
    printer = EscPosPrinter(SimulatorTransport(_Noise(reply), timeout=0.01), options)
    for call in (printer.status, printer.identify):
        with contextlib.suppress(DriverError):
            call()


@settings(max_examples=80)
@given(st.binary(max_size=200))
def test_simulator_swallows_any_input(data: bytes) -> None:
    sim = EscPosSimulator()
    sim.set_fault("asb")
    sim.receive(data)
    sim.receive(data)  # and again, after whatever mode the first left it in
    sim.unsolicited()


@settings(max_examples=60)
@given(
    st.lists(st.text(alphabet="无锡市政务abc 123¥", max_size=12), min_size=1, max_size=6),
    st.none() | st.text(min_size=1, max_size=80),
    st.lists(st.integers(min_value=1, max_value=40), max_size=30),
)
def test_simulator_reassembles_split_writes(
    lines: list[str], qr: str | None, cuts: list[int]
) -> None:
    data = frames.encode_receipt(lines, qr)
    sim = EscPosSimulator()
    pos = 0
    for size in cuts:  # the host's bytes arrive in arbitrary pieces, as over a serial line
        sim.receive(data[pos : pos + size])
        pos += size
    sim.receive(data[pos:])
    [printed] = sim.receipts
    assert [line for line in printed.lines if line] == [line for line in lines if line]
    assert printed.qr == ([qr] if qr else [])
