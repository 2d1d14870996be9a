"""The receive loop every driver shares (``Driver._receive_frame``) and its error wrapping.

A toy protocol (``STX len payload sum``) drives the loop over a scripted in-memory port and
over pyserial's ``loop://``; then every protocol's own split function goes through the same
loop, fed byte by byte.
"""

from __future__ import annotations

import errno
import functools
import termios
import time
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
import serial
from hypothesis import given
from hypothesis import strategies as st

from kioskfleet.drivers.base import (
    Driver,
    DriverOptions,
    ProbeResult,
    Split,
    Splitter,
    Transport,
    open_transport,
)
from kioskfleet.drivers.cctalk import frames as cctalk
from kioskfleet.drivers.crt591 import frames as crt591
from kioskfleet.drivers.escpos import frames as escpos
from kioskfleet.drivers.exceptions import (
    DeviceTimeoutError,
    DeviceUnavailableError,
    FrameError,
)
from kioskfleet.drivers.ga467 import frames as ga467
from kioskfleet.drivers.ssp import frames as ssp
from kioskfleet.protocol.devices import DeviceInfo, DeviceStatus

STX = 0x02
MAX_PAYLOAD = 8


def toy_encode(payload: bytes) -> bytes:
    return bytes([STX, len(payload)]) + payload + bytes([sum(payload) & 0xFF])


def toy_split(buf: bytes) -> Split[bytes]:
    """STX, a length of at most 8, the payload, its sum: a split function as frames.py write."""
    start = buf.find(STX)
    if start < 0:
        return Split(None, len(buf), 3)
    have = len(buf) - start
    if have < 2:
        return Split(None, start, 2 - have)
    length = buf[start + 1]
    if length > MAX_PAYLOAD:
        return Split(None, start + 1)  # this STX starts no frame
    end = start + length + 3
    if len(buf) < end:
        return Split(None, start, end - len(buf))
    payload = buf[start + 2 : end - 1]
    if sum(payload) & 0xFF != buf[end - 1]:
        return Split(None, start + 1)
    return Split(payload, end)


#: a read that waits out its timeout and returns nothing, as a quiet line does
SILENCE = None


class ScriptedPort:
    """An in-memory port (the ``Transport`` interface) that replays a script.

    Each read returns the next chunk, at most ``size`` bytes of it; :data:`SILENCE` makes one
    read wait its whole timeout; after the script the line stays quiet. ``asked`` records
    ``(size, bytes still to come)`` for every read, ``timeouts`` the timeout it ran with.
    """

    def __init__(self, *script: bytes | None) -> None:
        self.script: deque[bytes | None] = deque(script)
        self.timeout: float | None = None
        self.written = bytearray()
        self.asked: list[tuple[int, int]] = []
        self.timeouts: list[float | None] = []

    def _still_to_come(self) -> int:
        return sum(len(chunk) for chunk in self.script if chunk)

    def read(self, size: int = 1) -> bytes:
        self.asked.append((size, self._still_to_come()))
        self.timeouts.append(self.timeout)
        chunk = self.script.popleft() if self.script else SILENCE
        if chunk is SILENCE:
            time.sleep(self.timeout or 0.0)  # the port's own timeout, as pyserial waits it
            return b""
        if len(chunk) > size:
            self.script.appendleft(chunk[size:])
        return chunk[:size]

    def write(self, data: bytes, /) -> int:
        self.written += data
        return len(data)

    def reset_input_buffer(self) -> None:
        pass

    def close(self) -> None:
        pass


class FailingPort(ScriptedPort):
    """A port whose every call raises ``error`` (what pyserial does once a port is gone)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def read(self, size: int = 1) -> bytes:
        raise self.error

    def write(self, data: bytes, /) -> int:
        raise self.error

    def reset_input_buffer(self) -> None:
        raise self.error


class ToyDriver(Driver):
    """The smallest driver: ``identify`` asks ``?`` and takes the reply's payload as model."""

    name = "toy"  # type: ignore[assignment]
    kind = "printer"

    def receive(self, timeout: float, split: Splitter[Any] = toy_split) -> Any:
        return self._receive_frame(split, time.monotonic() + timeout)

    def send(self, data: bytes) -> None:
        self._write(data)

    def _identify(self) -> DeviceInfo:
        self._resync()
        self._write(b"?")
        return DeviceInfo(model=self.receive(self.options.timeout).decode())

    def _read_status(self) -> DeviceStatus:
        raise NotImplementedError

    def _probe(self, watch: float | None) -> ProbeResult:
        raise NotImplementedError


GAP = 0.05
FAST = DriverOptions(timeout=0.3, retries=1, quirks={"inter_byte_timeout": GAP})


def toy(port: Transport, options: DriverOptions = FAST) -> ToyDriver:
    return ToyDriver(port, options)


# -- frames, garbage, chunks ---------------------------------------------------------------------
def test_a_frame_fed_byte_by_byte() -> None:
    wire = toy_encode(b"hello")
    port = ScriptedPort(*(bytes([b]) for b in wire))
    assert toy(port).receive(1.0) == b"hello"
    assert len(port.asked) == len(wire)
    # pyserial's read(n) waits for all n bytes: the loop never asks for more than will come
    assert all(size <= coming for size, coming in port.asked)


def test_garbage_before_a_frame_is_skipped() -> None:
    port = ScriptedPort(b"\x00\xff\x13", b"\x02\x09" + toy_encode(b"ok"))  # 02 09: length > 8
    assert toy(port).receive(1.0) == b"ok"


def test_frames_back_to_back_come_one_per_call() -> None:
    driver = toy(ScriptedPort(toy_encode(b"one") + toy_encode(b"two")))
    assert (driver.receive(1.0), driver.receive(1.0)) == (b"one", b"two")


@given(
    garbage=st.binary(max_size=24).map(lambda b: b.replace(bytes([STX]), b"")),
    payload=st.binary(max_size=MAX_PAYLOAD),
    cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=8),
)
def test_a_frame_split_across_reads(garbage: bytes, payload: bytes, cuts: list[int]) -> None:
    wire = garbage + toy_encode(payload)
    chunks, at = [], 0
    for cut in sorted(set(cuts)):
        chunks.append(wire[at:cut])
        at = max(at, cut)
    chunks.append(wire[at:])
    port = ScriptedPort(*(chunk for chunk in chunks if chunk))
    assert toy(port).receive(1.0) == payload
    # pyserial's read(n) waits for all n bytes: the loop never asks for more than will come
    assert all(size <= coming for size, coming in port.asked)


# -- deadline, stalls ----------------------------------------------------------------------------
def test_silence_times_out_at_the_deadline() -> None:
    started = time.monotonic()
    with pytest.raises(DeviceTimeoutError, match="no reply"):
        toy(ScriptedPort()).receive(0.2)
    assert 0.2 <= time.monotonic() - started < 1.0


def test_only_garbage_before_the_deadline_is_a_frame_error() -> None:
    with pytest.raises(FrameError, match="3 bytes of garbage"):
        toy(ScriptedPort(b"\x00\x01\x03")).receive(0.2)


def test_a_frame_still_arriving_at_the_deadline_is_a_timeout() -> None:
    slow = DriverOptions(quirks={"inter_byte_timeout": 10.0})  # never counts as stalled
    with pytest.raises(DeviceTimeoutError, match="incomplete"):
        toy(ScriptedPort(toy_encode(b"abc")[:3]), slow).receive(0.2)


def test_a_frame_that_stalls_raises_at_once_and_says_no_content() -> None:
    port = ScriptedPort(toy_encode(b"secret")[:5])
    driver = toy(port)
    started = time.monotonic()
    with pytest.raises(FrameError, match="5 bytes dropped") as caught:
        driver.receive(5.0)
    assert time.monotonic() - started < 2.0, "waited for the deadline instead of the gap"
    assert "sec" not in str(caught.value)
    port.script.append(toy_encode(b"next"))
    assert driver.receive(1.0) == b"next"  # the stalled bytes are gone


def test_a_partial_frame_left_from_before_is_dropped_once_stale_and_the_wait_goes_on() -> None:
    # call 1 ends at its deadline with half a frame (an ESC/POS ASB block cut short, say);
    # call 2 drops it once the inter-byte gap has passed and still takes the next frame
    port = ScriptedPort(toy_encode(b"two")[:3], SILENCE, SILENCE, SILENCE, toy_encode(b"3"))
    driver = toy(port, DriverOptions(quirks={"inter_byte_timeout": 0.2}))
    with pytest.raises(DeviceTimeoutError, match="incomplete"):
        driver.receive(0.05)
    assert driver.receive(1.0) == b"3"


def test_a_frame_hidden_behind_a_corrupt_length_is_found_after_the_stall() -> None:
    # STX 08 promises 11 bytes; the real frame arrives inside them, then the line goes quiet
    port = ScriptedPort(bytes([STX, 8]) + toy_encode(b"hi"))
    assert toy(port).receive(1.0) == b"hi"


def test_a_deadline_already_past_still_looks_at_what_has_arrived() -> None:
    port = ScriptedPort(toy_encode(b"here"))
    driver = toy(port)
    assert driver._receive_frame(toy_split, deadline=0.0) == b"here"
    started = time.monotonic()
    with pytest.raises(DeviceTimeoutError):
        driver._receive_frame(toy_split, deadline=0.0)
    assert time.monotonic() - started < 0.1
    assert port.timeouts[-1] == 0.0  # a look, not a wait


# -- the template around it ----------------------------------------------------------------------
def test_a_garbled_reply_is_retried_by_the_template() -> None:
    port = ScriptedPort(toy_encode(b"TM-T82")[:4], SILENCE, toy_encode(b"TM-T82"))
    assert toy(port).identify().model == "TM-T82"
    assert bytes(port.written) == b"??"


# -- port errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("error", "wrapped"),
    [
        (OSError(errno.EIO, "Input/output error"), DeviceUnavailableError),
        (
            serial.SerialException("device reports readiness to read but returned no data"),
            DeviceUnavailableError,
        ),
        (termios.error(errno.EBADF, "Bad file descriptor"), DeviceUnavailableError),
        (serial.SerialTimeoutException("Write timeout"), DeviceTimeoutError),
        (TimeoutError("timed out"), DeviceTimeoutError),
    ],
)
@pytest.mark.parametrize(
    "call",
    [
        lambda driver: driver.receive(0.2),
        lambda driver: driver.send(b"x"),
        lambda driver: driver._resync(),
        lambda driver: driver.identify(),
    ],
    ids=["read", "write", "reset", "identify"],
)
def test_port_errors_become_driver_errors_once(
    error: BaseException, wrapped: type[Exception], call: Callable[[ToyDriver], object]
) -> None:
    with pytest.raises(wrapped) as caught:
        call(toy(FailingPort(error)))
    assert caught.value.__cause__ is error


def test_a_closed_loop_port_is_unavailable_and_not_retried() -> None:
    port = open_transport("loop://", baudrate=9600, timeout=0.1)
    driver = toy(port, DriverOptions(timeout=0.2, retries=3))
    port.close()
    for call in (driver.identify, lambda: driver.send(b"?"), lambda: driver.receive(0.2)):
        started = time.monotonic()
        with pytest.raises(DeviceUnavailableError) as caught:
            call()
        assert isinstance(caught.value.__cause__, serial.SerialException)
        assert time.monotonic() - started < 0.5


def test_a_write_that_times_out_on_a_loop_port_is_a_timeout() -> None:
    # loop:// refuses a write that would take longer than write_timeout at its baud rate
    port = open_transport("loop://", baudrate=300, timeout=0.1, write_timeout=0.05)
    with pytest.raises(DeviceTimeoutError) as caught:
        toy(port).send(b"x" * 100)
    assert isinstance(caught.value.__cause__, serial.SerialTimeoutException)


def test_garbage_and_a_frame_over_a_loop_port() -> None:
    port = open_transport("loop://", baudrate=9600, timeout=0.1)
    driver = toy(port)
    driver.send(b"\xff\x00" + toy_encode(b"looped") + toy_encode(b"again")[:2])
    started = time.monotonic()
    assert driver.receive(1.0) == b"looped"
    assert time.monotonic() - started < GAP, "asked the port for bytes that were not coming"
    with pytest.raises(FrameError, match="2 bytes dropped"):
        driver.receive(1.0)


# -- every protocol's split function through the same loop -------------------------------------
class Case:
    """A protocol's split function, its wire bytes (after some garbage) and what it yields."""

    ALL: ClassVar[dict[str, Case]] = {}

    def __init__(self, name: str, split: Splitter[Any], garbage: bytes, wire: bytes, frame: Any):
        self.split, self.garbage, self.wire, self.frame = split, garbage, wire, frame
        Case.ALL[name] = self


_cctalk = cctalk.Frame(dest=1, src=40, header=0, data=b"NV9")
Case("cctalk", cctalk.split, b"\x00", cctalk.encode(_cctalk), _cctalk)
Case(
    "cctalk-crc16",
    functools.partial(cctalk.split, crc16_mode=True),
    b"\x00",
    cctalk.encode(_cctalk, crc16_mode=True),
    cctalk.Frame(dest=1, src=None, header=0, data=b"NV9"),
)
_packet = ssp.Packet(address=0, seq=True, data=b"\xf0\x7f\x01")  # a stuffed 7F inside
Case("ssp", ssp.split, b"\x00\x01", ssp.encode(_packet), _packet)
_sam = ga467.encode_response(ga467.SW_OK, b"\x01\x02")
Case("ga467", ga467.next_frame, b"\xaa\xaa\x13", _sam, _sam)
_reply = crt591.encode(crt591.Positive(0x31, 0x30, "020"))
Case("crt591", crt591.next_frame, b"\x00\x13", _reply, _reply)
Case("crt591-ack", crt591.next_handshake, b"\x00\x13", bytes([crt591.ACK]), True)
Case("crt591-nak", crt591.next_handshake, b"", bytes([crt591.NAK]), False)
_asb = escpos.encode_asb(escpos.PrinterFlags())
Case("escpos-asb", escpos.next_replies, b"", _asb, (escpos.Asb(_asb),))


@pytest.mark.parametrize("name", sorted(Case.ALL))
def test_every_split_function_fed_byte_by_byte(name: str) -> None:
    case = Case.ALL[name]
    stream = case.garbage + case.wire
    port = ScriptedPort(*(bytes([b]) for b in stream))
    assert toy(port).receive(1.0, case.split) == case.frame
    assert all(size <= coming for size, coming in port.asked)
