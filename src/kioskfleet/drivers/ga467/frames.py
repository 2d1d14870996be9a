"""GA 467-2013 SAM_V UART frames and the ID card text record — pure codec, no I/O.

Frame (device-protocols.md §4a)::

    host → SAM:  AA AA AA 96 69 | Len1 Len2 | CMD  Para        | Data | CHK
    SAM → host:  AA AA AA 96 69 | Len1 Len2 | SW1  SW2  SW3    | Data | CHK

The length is big-endian and counts every byte after itself, checksum included; the checksum
is the XOR of every byte between the preamble and itself.

Nothing here puts card contents into an exception message: a codec error says *what* is wrong
(a length, a field name), never the bytes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final

from kioskfleet.drivers.base import Split
from kioskfleet.drivers.cards import IdCard, Sex
from kioskfleet.drivers.exceptions import FrameError

PREAMBLE: Final = b"\xaa\xaa\xaa\x96\x69"
#: preamble + length field
HEADER_SIZE: Final = len(PREAMBLE) + 2
#: the largest frame we accept after the length field; the biggest known reply (text + photo +
#: fingerprint) counts 0x090A bytes, anything much larger is a corrupt length
MAX_LENGTH: Final = 0x1000

# Commands as (CMD, Para).
RESET: Final = (0x10, 0xFF)
SAM_STATUS: Final = (0x11, 0xFF)
SAM_ID: Final = (0x12, 0xFF)
FIND_CARD: Final = (0x20, 0x01)
SELECT_CARD: Final = (0x20, 0x02)
READ_TEXT_PHOTO: Final = (0x30, 0x01)
READ_NEW_ADDRESS: Final = (0x30, 0x03)
READ_WITH_FINGERPRINT: Final = (0x30, 0x10)

# Status word SW3.
SW_OK: Final = 0x90
SW_NO_CONTENT: Final = 0x91
SW_CARD_FOUND: Final = 0x9F
SW_HOST_CHECKSUM: Final = 0x10
SW_HOST_LENGTH: Final = 0x11
SW_COMMAND_ERROR: Final = 0x21
SW_UNAUTHORISED: Final = 0x23
SW_UNRECOGNISED: Final = 0x24
SW_CARD_AUTH_SAM: Final = 0x31
SW_SAM_AUTH_CARD: Final = 0x32
SW_VERIFY_ERROR: Final = 0x33
SW_CARD_TYPE: Final = 0x40
SW_READ_FAILED: Final = 0x41
SW_RANDOM_FAILED: Final = 0x47
SW_SAM_SELF_TEST: Final = 0x60
SW_SAM_NOT_AUTHORISED: Final = 0x66
SW_NO_CARD: Final = 0x80
SW_SELECT_FAILED: Final = 0x81

STATUS_WORDS: Final[dict[int, str]] = {
    SW_OK: "operation succeeded",
    SW_NO_CONTENT: "no content for this item on the card",
    SW_CARD_FOUND: "find card succeeded",
    SW_HOST_CHECKSUM: "checksum error in data received from host",
    SW_HOST_LENGTH: "length error in data received from host",
    SW_COMMAND_ERROR: "command error",
    SW_UNAUTHORISED: "unauthorised operation",
    SW_UNRECOGNISED: "unrecognised error",
    SW_CARD_AUTH_SAM: "card failed to authenticate SAM_V",
    SW_SAM_AUTH_CARD: "SAM_V failed to authenticate card",
    SW_VERIFY_ERROR: "information verification error",
    SW_CARD_TYPE: "unrecognised card type",
    SW_READ_FAILED: "read card operation failed",
    SW_RANDOM_FAILED: "get random number failed",
    SW_SAM_SELF_TEST: "SAM_V self-test failed",
    SW_SAM_NOT_AUTHORISED: "SAM_V not authorised",
    SW_NO_CARD: "find card failed (no card)",
    SW_SELECT_FAILED: "select card failed",
}
#: the SAM module itself is broken: hardware_error / sam_fault
SAM_FAULT_WORDS: Final = frozenset({SW_SAM_SELF_TEST, SW_SAM_NOT_AUTHORISED})
#: a card is there but could not be read: read_error
READ_ERROR_WORDS: Final = frozenset(
    {
        SW_CARD_AUTH_SAM,
        SW_SAM_AUTH_CARD,
        SW_VERIFY_ERROR,
        SW_CARD_TYPE,
        SW_READ_FAILED,
        SW_RANDOM_FAILED,
        SW_SELECT_FAILED,
    }
)
#: the SAM did not understand our frame: a transmission error, worth a retry
HOST_FRAME_WORDS: Final = frozenset({SW_HOST_CHECKSUM, SW_HOST_LENGTH})


def describe_status(sw3: int) -> str:
    """Human text for a status word (safe to log: it never carries card data)."""
    return STATUS_WORDS.get(sw3, f"unknown status 0x{sw3:02X}")


def checksum(data: bytes) -> int:
    """XOR of ``data`` (everything between the preamble and the checksum)."""
    value = 0
    for byte in data:
        value ^= byte
    return value


@dataclass(frozen=True)
class Command:
    """A host → SAM frame."""

    cmd: int
    para: int
    data: bytes = b""


@dataclass(frozen=True, repr=False)
class Response:
    """A SAM → host frame. ``repr`` omits ``data``: it may be a citizen's card."""

    sw1: int
    sw2: int
    sw3: int
    data: bytes = b""

    def __repr__(self) -> str:
        return (
            f"Response(sw1=0x{self.sw1:02X}, sw2=0x{self.sw2:02X}, sw3=0x{self.sw3:02X}, "
            f"data=<{len(self.data)} bytes>)"
        )


def _frame(body: bytes) -> bytes:
    length = len(body) + 1  # + checksum
    if length > MAX_LENGTH:
        raise ValueError(f"frame body of {len(body)} bytes is too long")
    head = length.to_bytes(2, "big")
    return PREAMBLE + head + body + bytes([checksum(head + body)])


def encode_command(cmd: int, para: int, data: bytes = b"") -> bytes:
    """Encode a host command, e.g. ``encode_command(0x20, 0x01)`` (find card)."""
    return _frame(bytes([cmd, para]) + data)


def encode_response(sw3: int, data: bytes = b"", *, sw1: int = 0, sw2: int = 0) -> bytes:
    """Encode a SAM reply (the simulator's side)."""
    return _frame(bytes([sw1, sw2, sw3]) + data)


def _body(frame: bytes, minimum: int) -> bytes:
    """Check preamble, length and checksum; return what lies between length and checksum."""
    if not frame.startswith(PREAMBLE):
        raise FrameError("frame does not start with the SAM preamble")
    if len(frame) < HEADER_SIZE + 1:
        raise FrameError(f"frame of {len(frame)} bytes is shorter than a header")
    length = int.from_bytes(frame[5:7], "big")
    if length != len(frame) - HEADER_SIZE:
        raise FrameError(f"length field says {length}, frame carries {len(frame) - HEADER_SIZE}")
    if length < minimum + 1:
        raise FrameError(f"length {length} is too short for this frame")
    if checksum(frame[5:-1]) != frame[-1]:
        raise FrameError("checksum mismatch")
    return frame[HEADER_SIZE:-1]


def decode_command(frame: bytes) -> Command:
    """Decode a host → SAM frame.

    Raises:
        FrameError: not a valid frame.
    """
    body = _body(frame, 2)
    return Command(body[0], body[1], body[2:])


def decode_response(frame: bytes) -> Response:
    """Decode a SAM → host frame.

    Raises:
        FrameError: not a valid frame.
    """
    body = _body(frame, 3)
    return Response(body[0], body[1], body[2], body[3:])


def next_frame(buffer: bytes) -> Split[bytes]:
    """Find the next complete frame in a byte stream (length-driven, skipping garbage).

    Returns:
        A :class:`~kioskfleet.drivers.base.Split`: the frame (``None`` if none is complete
        yet), how many bytes of ``buffer`` to drop (garbage plus the frame) and how many more
        bytes are needed. The frame's checksum is not checked here; decoding does that.
    """
    start = buffer.find(PREAMBLE)
    if start < 0:
        # keep a tail that could be the beginning of a preamble
        keep = next(
            (n for n in range(len(PREAMBLE) - 1, 0, -1) if buffer.endswith(PREAMBLE[:n])), 0
        )
        return Split(None, len(buffer) - keep, HEADER_SIZE - keep)
    have = len(buffer) - start
    if have < HEADER_SIZE:
        return Split(None, start, HEADER_SIZE - have)
    length = int.from_bytes(buffer[start + 5 : start + 7], "big")
    if length < 3 or length > MAX_LENGTH:
        # a corrupt length: skip this preamble and look for the next one
        return Split(None, start + 1, 1)
    end = start + HEADER_SIZE + length
    if len(buffer) < end:
        return Split(None, start, end - len(buffer))
    return Split(buffer[start:end], end, HEADER_SIZE)


# -- the 256-byte text record ------------------------------------------------------------------

TEXT_SIZE: Final = 256
PHOTO_SIZE: Final = 1024
#: (field, size in bytes) in record order; UCS-2 little-endian, space padded
TEXT_LAYOUT: Final[tuple[tuple[str, int], ...]] = (
    ("name", 30),
    ("sex", 2),
    ("nation", 4),
    ("birth_date", 16),
    ("address", 70),
    ("id_number", 36),
    ("issuer", 30),
    ("valid_from", 16),
    ("valid_until", 16),
    ("reserved", 36),
)
SEX_CODES: Final[dict[str, Sex]] = {"0": "unknown", "1": "male", "2": "female", "9": "unspecified"}
_SEX_TO_CODE: Final[dict[Sex, str]] = {sex: code for code, sex in SEX_CODES.items()}
#: what the card holds in valid-until for a card valid for life
LIFELONG: Final = "长期"


def _parse_date(text: str, field: str) -> dt.date:
    # fixed-format YYYYMMDD; the message names the field, never the value (it is personal data)
    if len(text) != 8 or not text.isascii() or not text.isdigit():
        raise FrameError(f"text record: {field} is not a YYYYMMDD date")
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError as err:
        raise FrameError(f"text record: {field} is not a valid date") from err


def decode_text(record: bytes, photo: bytes = b"") -> IdCard:
    """Decode the 256-byte UCS-2 text record into an :class:`IdCard`.

    Raises:
        FrameError: wrong size, not UCS-2, or a date field that is not a date.
    """
    if len(record) != TEXT_SIZE:
        raise FrameError(f"text record has {len(record)} bytes, expected {TEXT_SIZE}")
    fields: dict[str, str] = {}
    offset = 0
    for field, size in TEXT_LAYOUT:
        try:
            text = record[offset : offset + size].decode("utf-16-le")
        except UnicodeDecodeError:
            # ``from None``: the UnicodeDecodeError holds the raw record (personal data)
            raise FrameError(f"text record: {field} is not UCS-2") from None
        fields[field] = text.rstrip(" \x00")
        offset += size
    valid_until = fields["valid_until"]
    return IdCard(
        name=fields["name"],
        sex=SEX_CODES.get(fields["sex"], "unknown"),
        nation=fields["nation"],
        birth_date=_parse_date(fields["birth_date"], "birth date"),
        address=fields["address"],
        id_number=fields["id_number"],
        issuer=fields["issuer"],
        valid_from=_parse_date(fields["valid_from"], "valid-from"),
        valid_until=None if valid_until == LIFELONG else _parse_date(valid_until, "valid-until"),
        photo=photo,
    )


def encode_text(card: IdCard) -> bytes:
    """Encode an :class:`IdCard` as the 256-byte text record (the simulator's side).

    Raises:
        ValueError: a field does not fit its slot.
    """
    values = {
        "name": card.name,
        "sex": _SEX_TO_CODE[card.sex],
        "nation": card.nation,
        "birth_date": card.birth_date.strftime("%Y%m%d"),
        "address": card.address,
        "id_number": card.id_number,
        "issuer": card.issuer,
        "valid_from": card.valid_from.strftime("%Y%m%d"),
        "valid_until": LIFELONG
        if card.valid_until is None
        else card.valid_until.strftime("%Y%m%d"),
        "reserved": "",
    }
    out = bytearray()
    for field, size in TEXT_LAYOUT:
        raw = values[field].encode("utf-16-le")
        if len(raw) > size:
            raise ValueError(f"{field} does not fit its {size}-byte slot")
        out += raw + " ".encode("utf-16-le") * ((size - len(raw)) // 2)
    return bytes(out)


def decode_read_reply(data: bytes) -> IdCard:
    """Decode the data of a read reply (``30 01`` / ``30 10``): lengths, text, photo[, finger].

    Raises:
        FrameError: the lengths do not match the data.
    """
    if len(data) < 4:
        raise FrameError(f"read reply of {len(data)} bytes has no length fields")
    text_len = int.from_bytes(data[0:2], "big")
    photo_len = int.from_bytes(data[2:4], "big")
    if text_len != TEXT_SIZE or len(data) < 4 + text_len + photo_len:
        raise FrameError(
            f"read reply: text {text_len} + photo {photo_len} bytes do not fit {len(data) - 4}"
        )
    text = data[4 : 4 + text_len]
    photo = data[4 + text_len : 4 + text_len + photo_len]
    return decode_text(text, photo)


def encode_read_reply(card: IdCard) -> bytes:
    """The data of a ``30 01`` reply for ``card`` (the simulator's side)."""
    photo = card.photo.ljust(PHOTO_SIZE, b"\x00")[:PHOTO_SIZE]
    return TEXT_SIZE.to_bytes(2, "big") + PHOTO_SIZE.to_bytes(2, "big") + encode_text(card) + photo


def format_sam_id(data: bytes) -> str | None:
    """Format the SAM management info (``12 FF``) as the usual ``05.01-YYYYMMDD-…`` string.

    The reply layout is not confirmed (device-protocols.md §7.4); the 16-byte little-endian
    reading below is what the common SDKs print. Anything else is shown as hex.
    """
    if not data:
        return None
    if len(data) != 16:
        return data.hex().upper()
    first = int.from_bytes(data[0:2], "little")
    second = int.from_bytes(data[2:4], "little")
    date = int.from_bytes(data[4:8], "little")
    serial = int.from_bytes(data[8:12], "little")
    check = int.from_bytes(data[12:16], "little")
    return f"{first:02d}.{second:02d}-{date:08d}-{serial:010d}-{check:010d}"


def encode_sam_id(text: str) -> bytes:
    """Inverse of :func:`format_sam_id` for its 16-byte form (the simulator's side)."""
    head, date, serial, check = text.split("-")
    first, second = head.split(".")
    return (
        int(first).to_bytes(2, "little")
        + int(second).to_bytes(2, "little")
        + int(date).to_bytes(4, "little")
        + int(serial).to_bytes(4, "little")
        + int(check).to_bytes(4, "little")
    )
