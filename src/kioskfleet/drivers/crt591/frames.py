"""Creator CRT-591 STX/ETX/BCC frames — pure codec, no I/O.

Frame (device-protocols.md §4b)::

    STX(F2) | ADDR | LENH LENL | TEXT[LEN] | ETX(03) | BCC
    TEXT: 'C' CM PM [DATA]  (command)
          'P' CM PM st0 st1 st2 [DATA]  (positive reply)
          'N' CM PM e1 e0 [DATA]  (negative reply)

BCC is the XOR of every byte from STX through ETX. Around the frames runs a one-byte
handshake: the device answers a command with ACK (NAK: send it again), then sends the reply
when the operation is done; the host NAKs a corrupt reply to have it sent again; EOT cancels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from kioskfleet.drivers.base import Split
from kioskfleet.drivers.exceptions import FrameError

STX: Final = 0xF2
ETX: Final = 0x03
ACK: Final = 0x06
NAK: Final = 0x15
EOT: Final = 0x04

HEAD_COMMAND: Final = 0x43  # 'C'
HEAD_POSITIVE: Final = 0x50  # 'P'
HEAD_NEGATIVE: Final = 0x4E  # 'N' (the spec scan prints 45h; hardware sends 4Eh)

#: DATA is at most 512 bytes; the longest TEXT head is 'P' CM PM st0 st1 st2
MAX_DATA: Final = 512
MAX_TEXT: Final = MAX_DATA + 6
#: STX ADDR LENH LENL
HEADER_SIZE: Final = 4

# Commands as (CM, PM).
INIT_TO_GATE: Final = (0x30, 0x30)
INIT_CAPTURE: Final = (0x30, 0x31)
INIT_LEAVE: Final = (0x30, 0x33)
STATUS: Final = (0x31, 0x30)
SENSORS: Final = (0x31, 0x31)
MOVE_TO_GATE: Final = (0x32, 0x30)
MOVE_TO_IC: Final = (0x32, 0x31)
MOVE_TO_RF: Final = (0x32, 0x32)
MOVE_TO_BIN: Final = (0x32, 0x33)
MOVE_OUT: Final = (0x32, 0x39)
ENTRY_ENABLE: Final = (0x33, 0x30)
ENTRY_DISABLE: Final = (0x33, 0x31)
SERIAL_NUMBER: Final = (0xA2, 0x30)
VERSION: Final = (0xA4, 0x30)
BIN_COUNTER: Final = (0xA5, 0x30)

# st0 card position, st1 stacker, st2 error (retain) bin — ASCII digits.
ST0_NO_CARD: Final = "0"
ST0_AT_GATE: Final = "1"
ST0_INSIDE: Final = "2"
ST1_EMPTY: Final = "0"
ST1_LOW: Final = "1"
ST1_ENOUGH: Final = "2"
ST2_NOT_FULL: Final = "0"
ST2_FULL: Final = "1"

# e1e0 error codes (partial table, device-protocols.md §4b).
E_UNDEFINED: Final = "00"
E_UNSUPPORTED: Final = "03"
E_JAM: Final = "10"
E_MOVE: Final = "16"
E_NO_IC_MOVE: Final = "43"
E_MOVED_BY_HAND: Final = "45"
E_NOT_ACTIVATED: Final = "65"
E_STACKER_EMPTY: Final = "A0"
E_BIN_FULL: Final = "A1"
E_NOT_INITIALISED: Final = "B0"

ERRORS: Final[dict[str, str]] = {
    E_UNDEFINED: "undefined command",
    E_UNSUPPORTED: "not supported by the hardware",
    E_JAM: "card jam",
    E_MOVE: "card position movement error",
    E_NO_IC_MOVE: "cannot move the card to the IC position",
    E_MOVED_BY_HAND: "card moved by hand",
    E_NOT_ACTIVATED: "card not activated",
    E_STACKER_EMPTY: "stacker empty",
    E_BIN_FULL: "error bin full",
    E_NOT_INITIALISED: "not initialised (power cycled)",
}


def describe_error(code: str) -> str:
    """Human text for an e1e0 code."""
    return ERRORS.get(code, f"error {code!r}")


def bcc(data: bytes) -> int:
    """XOR of ``data`` (STX through ETX)."""
    value = 0
    for byte in data:
        value ^= byte
    return value


@dataclass(frozen=True)
class Command:
    """A host → reader command."""

    cm: int
    pm: int
    data: bytes = b""
    addr: int = 0


@dataclass(frozen=True)
class Positive:
    """A positive reply: the operation succeeded; ``st`` is st0 st1 st2 as ASCII digits."""

    cm: int
    pm: int
    st: str
    data: bytes = b""
    addr: int = 0


@dataclass(frozen=True)
class Negative:
    """A negative reply: the operation failed with ``error`` (e1e0, two ASCII characters)."""

    cm: int
    pm: int
    error: str
    data: bytes = b""
    addr: int = 0


Frame = Command | Positive | Negative


def _frame(text: bytes, addr: int) -> bytes:
    if len(text) > MAX_TEXT:
        raise ValueError(f"TEXT of {len(text)} bytes is longer than {MAX_TEXT}")
    body = bytes([STX, addr]) + len(text).to_bytes(2, "big") + text + bytes([ETX])
    return body + bytes([bcc(body)])


def _ascii(text: str, size: int) -> bytes:
    raw = text.encode("ascii")
    if len(raw) != size:
        raise ValueError(f"expected {size} ASCII characters")
    return raw


def encode(frame: Frame) -> bytes:
    """Encode a command or a reply."""
    if isinstance(frame, Command):
        text = bytes([HEAD_COMMAND, frame.cm, frame.pm]) + frame.data
    elif isinstance(frame, Positive):
        text = bytes([HEAD_POSITIVE, frame.cm, frame.pm]) + _ascii(frame.st, 3) + frame.data
    else:
        text = bytes([HEAD_NEGATIVE, frame.cm, frame.pm]) + _ascii(frame.error, 2) + frame.data
    return _frame(text, frame.addr)


def encode_command(cm: int, pm: int, data: bytes = b"", addr: int = 0) -> bytes:
    """Encode a command, e.g. ``encode_command(0x31, 0x30)`` (status)."""
    return encode(Command(cm, pm, data, addr))


def _digits(raw: bytes, what: str) -> str:
    # st and e1e0 are printable ASCII; anything else means a corrupt frame
    if not all(0x20 <= b < 0x7F for b in raw):
        raise FrameError(f"{what} is not printable ASCII")
    return raw.decode("ascii")


def decode(frame: bytes) -> Frame:
    """Decode one frame (STX … BCC).

    Raises:
        FrameError: not a valid frame.
    """
    if len(frame) < HEADER_SIZE + 3 + 2 or frame[0] != STX:
        raise FrameError(f"not a CRT-591 frame ({len(frame)} bytes)")
    length = int.from_bytes(frame[2:4], "big")
    if length != len(frame) - HEADER_SIZE - 2:
        raise FrameError(f"length field says {length}, frame carries {len(frame) - 6}")
    if frame[-2] != ETX:
        raise FrameError("no ETX where the length puts it")
    if bcc(frame[:-1]) != frame[-1]:
        raise FrameError("BCC mismatch")
    addr = frame[1]
    text = frame[HEADER_SIZE:-2]
    head, cm, pm = text[0], text[1], text[2]
    if head == HEAD_COMMAND:
        return Command(cm, pm, text[3:], addr)
    if head == HEAD_POSITIVE:
        if len(text) < 6:
            raise FrameError("positive reply without st0 st1 st2")
        return Positive(cm, pm, _digits(text[3:6], "status"), text[6:], addr)
    if head == HEAD_NEGATIVE:
        if len(text) < 5:
            raise FrameError("negative reply without e1 e0")
        return Negative(cm, pm, _digits(text[3:5], "error code"), text[5:], addr)
    raise FrameError(f"unknown TEXT head 0x{head:02X}")


def next_frame(buffer: bytes) -> Split[bytes]:
    """Find the next complete frame in a byte stream (length-driven, skipping garbage).

    Handshake bytes (ACK, NAK, EOT) are garbage to this function; the caller deals with them
    before it looks for a frame. The BCC is checked by :func:`decode`, not here.
    """
    start = buffer.find(bytes([STX]))
    if start < 0:
        return Split(None, len(buffer), HEADER_SIZE)
    have = len(buffer) - start
    if have < HEADER_SIZE:
        return Split(None, start, HEADER_SIZE - have)
    length = int.from_bytes(buffer[start + 2 : start + 4], "big")
    if length < 3 or length > MAX_TEXT:
        return Split(None, start + 1, 1)  # not a real STX: look for the next one
    end = start + HEADER_SIZE + length + 2
    if len(buffer) < end:
        return Split(None, start, end - len(buffer))
    if buffer[end - 2] != ETX:
        return Split(None, start + 1, 1)
    return Split(buffer[start:end], end, HEADER_SIZE)


def next_handshake(buffer: bytes) -> Split[bool]:
    """The reader's answer to a command: ACK (``True``) or NAK (``False``, send it again).

    A reply frame that starts without an ACK before it counts as an ACK (the command was
    clearly taken); its STX stays in the buffer for :func:`next_frame`. Other bytes are noise.
    """
    for index, byte in enumerate(buffer):
        if byte in (ACK, NAK):
            return Split(byte == ACK, index + 1)
        if byte == STX:
            return Split(True, index)
    return Split(None, len(buffer))
