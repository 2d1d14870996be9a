"""A simulated CRT-591 motorized card reader with the ACK/NAK handshake.

Fault switches: ``sim.position`` (``"none"``, ``"gate"``, ``"inside"``), ``sim.jammed``,
``sim.jam_next()`` (the next motion jams), ``sim.bin_full``, ``sim.stacker`` (st1 digit),
``sim.initialised``, ``sim.silent``; ``sim.nak_next()`` and ``sim.corrupt_next()`` exercise the
driver's handshake; ``sim.insert_card()`` / ``sim.take_card()`` are the customer.
"""

from __future__ import annotations

import threading
from typing import ClassVar, Final, Literal

from kioskfleet.drivers.crt591 import frames
from kioskfleet.drivers.exceptions import FrameError
from kioskfleet.drivers.simulator import DeviceSimulator

Position = Literal["none", "gate", "inside"]
FIRMWARE: Final = "CRT-591-MR SIM V1.0"
SERIAL: Final = "SIM591000001"
#: cards the simulated retain bin holds before it reports full
BIN_CAPACITY: Final = 20
_ST0: Final[dict[Position, str]] = {
    "none": frames.ST0_NO_CARD,
    "gate": frames.ST0_AT_GATE,
    "inside": frames.ST0_INSIDE,
}
#: commands a reader answers even before INIT (identity)
_ALWAYS: Final = frozenset({0xA2, 0xA3, 0xA4, 0xA5})
#: commands a jam blocks
_MECHANICAL: Final = frozenset({0x30, 0x31, 0x32, 0x33})


class Crt591Simulator(DeviceSimulator):
    """The reader end of the link."""

    FAULTS: ClassVar[dict[str, str]] = {
        "no_card": "no card in the reader",
        "card_present": "a card inside, at the IC/RF position",
        "card_at_gate": "a card waiting in the gate",
        "jammed": "a card jammed in the path (every mechanical command answers e1e0 '10')",
        "retain_bin_full": "the retain (error) bin is full (st2 '1', capture answers 'A1')",
        "not_initialised": "power-cycled, every command but identity answers 'B0' until INIT",
        "stacker_empty": "the card stacker is empty (st1 '0')",
        "no_answer": "the reader does not answer at all",
    }

    def __init__(self) -> None:
        self.position: Position = "none"
        self.stacker = frames.ST1_ENOUGH
        self.bin_count = 0
        self.bin_full = False
        self.jammed = False
        self.initialised = True
        self.entry_enabled = False
        self.silent = False
        self._jam_next = False
        self._nak_next = False
        self._corrupt_next = False
        self._last_reply = b""
        self._buffer = bytearray()
        self._lock = threading.Lock()
        #: commands executed, as (CM, PM), for tests that assert on the wire
        self.commands: list[tuple[int, int]] = []

    # -- switches ----------------------------------------------------------------------------
    def insert_card(self) -> None:
        """A customer pushes a card into the gate; it is drawn in if entry is enabled."""
        self.position = "inside" if self.entry_enabled else "gate"

    def take_card(self) -> None:
        """The customer takes the card out of the gate."""
        if self.position == "gate":
            self.position = "none"

    def jam_next(self) -> None:
        """The next motion command jams the card."""
        self._jam_next = True

    def clear_jam(self) -> None:
        """A technician frees the card (it is left at the gate)."""
        self.jammed = False
        self.position = "gate"

    def nak_next(self) -> None:
        """NAK the next command once (the host must send it again)."""
        self._nak_next = True

    def corrupt_next(self) -> None:
        """Send the next reply with a wrong BCC once (the host must NAK it)."""
        self._corrupt_next = True

    def set_fault(self, name: str) -> None:
        """Switch on a fault from :attr:`FAULTS`."""
        if name == "no_card":
            self.position = "none"
        elif name == "card_present":
            self.position = "inside"
        elif name == "card_at_gate":
            self.position = "gate"
        elif name == "jammed":
            self.position = "inside"
            self.jammed = True
        elif name == "retain_bin_full":
            self.bin_full = True
        elif name == "not_initialised":
            self.initialised = False
        elif name == "stacker_empty":
            self.stacker = frames.ST1_EMPTY
        elif name == "no_answer":
            self.silent = True
        else:
            super().set_fault(name)

    # -- device ------------------------------------------------------------------------------
    def receive(self, data: bytes) -> bytes:
        """Handle handshake bytes and command frames (buffered across calls)."""
        with self._lock:
            self._buffer += data
            out = bytearray()
            while self._buffer:
                first = self._buffer[0]
                if first != frames.STX:
                    del self._buffer[:1]
                    if first == frames.NAK:  # the host wants the last reply again
                        out += self._last_reply
                    elif first == frames.EOT:
                        self._last_reply = b""
                    continue
                frame, consumed, _ = frames.next_frame(bytes(self._buffer))
                if frame is None and not consumed:
                    break  # wait for the rest
                del self._buffer[:consumed]
                if frame is not None:
                    out += self._answer(frame)
            return b"" if self.silent else bytes(out)

    def _answer(self, frame: bytes) -> bytes:
        try:
            command = frames.decode(frame)
        except FrameError:
            return bytes([frames.NAK])
        if not isinstance(command, frames.Command):
            return b""  # a reply frame from the host side makes no sense: ignore it
        if self._nak_next:
            self._nak_next = False
            return bytes([frames.NAK])
        self.commands.append((command.cm, command.pm))
        reply = frames.encode(self._execute(command))
        self._last_reply = reply
        if self._corrupt_next:
            self._corrupt_next = False
            reply = reply[:-1] + bytes([reply[-1] ^ 0xFF])
        return bytes([frames.ACK]) + reply

    def _st(self) -> str:
        st2 = frames.ST2_FULL if self.bin_full else frames.ST2_NOT_FULL
        return _ST0[self.position] + self.stacker + st2

    def _ok(self, command: frames.Command, data: bytes = b"") -> frames.Positive:
        return frames.Positive(command.cm, command.pm, self._st(), data, command.addr)

    def _no(self, command: frames.Command, error: str) -> frames.Negative:
        return frames.Negative(command.cm, command.pm, error, b"", command.addr)

    def _execute(self, command: frames.Command) -> frames.Positive | frames.Negative:
        key = (command.cm, command.pm)
        if command.cm not in _ALWAYS:
            if self.jammed and command.cm in _MECHANICAL:
                return self._no(command, frames.E_JAM)
            if not self.initialised and command.cm != 0x30:
                return self._no(command, frames.E_NOT_INITIALISED)
        if command.cm == 0x30:
            return self._init(command)
        if key in (frames.STATUS,):
            return self._ok(command)
        if key == frames.SENSORS:
            gate = "1" if self.position == "gate" else "0"
            inside = "1" if self.position == "inside" else "0"
            return self._ok(command, (gate + inside + "000000").encode())
        if command.cm == 0x32:
            return self._move(command)
        if key == frames.ENTRY_ENABLE:
            self.entry_enabled = True
            return self._ok(command)
        if key == frames.ENTRY_DISABLE:
            self.entry_enabled = False
            return self._ok(command)
        if key == frames.SERIAL_NUMBER:
            return self._ok(command, bytes([len(SERIAL)]) + SERIAL.encode())
        if key == frames.VERSION:
            return self._ok(command, FIRMWARE.encode())
        if key == frames.BIN_COUNTER:
            return self._ok(command, f"{self.bin_count:03d}".encode())
        return self._no(command, frames.E_UNDEFINED)

    def _init(self, command: frames.Command) -> frames.Positive | frames.Negative:
        # 34/35/37 are 30/31/33 with the retract counter on
        mode = command.pm - 4 if command.pm in (0x34, 0x35, 0x37) else command.pm
        if mode == 0x31 and self.position != "none":
            result = self._to_bin(command)
            if isinstance(result, frames.Negative):
                return result
        elif mode == 0x30 and self.position == "inside":
            self.position = "gate"
        self.initialised = True
        return self._ok(command, FIRMWARE.encode())

    def _to_bin(self, command: frames.Command) -> frames.Positive | frames.Negative:
        if self.bin_full:
            return self._no(command, frames.E_BIN_FULL)
        self.position = "none"
        self.bin_count += 1
        self.bin_full = self.bin_count >= BIN_CAPACITY
        return self._ok(command)

    def _move(self, command: frames.Command) -> frames.Positive | frames.Negative:
        key = (command.cm, command.pm)
        if self._jam_next:
            self._jam_next = False
            self.jammed = True
            return self._no(command, frames.E_JAM)
        if key == frames.MOVE_TO_GATE:
            if self.position == "inside":
                self.position = "gate"
            return self._ok(command)
        if key in (frames.MOVE_TO_IC, frames.MOVE_TO_RF):
            if self.position == "none" and self.stacker == frames.ST1_EMPTY:
                return self._no(command, frames.E_STACKER_EMPTY)
            self.position = "inside"
            return self._ok(command)
        if key == frames.MOVE_TO_BIN:
            if self.position == "none":
                return self._ok(command)
            return self._to_bin(command)
        if key == frames.MOVE_OUT:
            self.position = "none"
            return self._ok(command)
        return self._no(command, frames.E_UNDEFINED)


def make_simulator(kind: str | None = None) -> Crt591Simulator:
    """The simulator ``kioskfleet device simulate crt591`` runs: initialised, no card."""
    return Crt591Simulator()
