"""ccTalk framing: pure encode/decode, checksums, and a scanner for a byte stream.

Frame (device-protocols §2.2): ``[dest] [len] [src] [header] [data…] [checksum]`` where ``len``
counts data bytes only and the 8-bit checksum makes the sum of all bytes 0 mod 256. In 16-bit
CRC mode (§2.3) the CRC-16/XMODEM over ``dest, len, header, data`` replaces the source byte (low
byte) and the checksum byte (high byte). No I/O here.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from kioskfleet.drivers.base import Split
from kioskfleet.drivers.exceptions import FrameError

HOST: Final = 1
BROADCAST: Final = 0
MIN_FRAME: Final = 5
MAX_DATA: Final = 255
#: default addresses by equipment kind (qt-cctalk ``ccCategoryGetDefaultAddress``)
COIN_ADDRESS: Final = 2
BILL_ADDRESS: Final = 40


class Header(IntEnum):
    """The ccTalk headers this package speaks (device-protocols §2.4)."""

    REPLY = 0
    RESET = 1
    COMMS_REVISION = 4
    NAK = 5
    BUSY = 6
    MODIFY_BILL_OPERATING_MODE = 153
    ROUTE_BILL = 154
    COUNTRY_SCALING_FACTOR = 156
    BILL_ID = 157
    READ_BUFFERED_BILL_EVENTS = 159
    COIN_ID = 184
    BUILD_CODE = 192
    MASTER_INHIBIT_STATUS = 227
    MODIFY_MASTER_INHIBIT = 228
    READ_BUFFERED_CREDIT = 229
    INHIBIT_STATUS = 230
    MODIFY_INHIBIT_STATUS = 231
    SELF_CHECK = 232
    SOFTWARE_REVISION = 241
    SERIAL_NUMBER = 242
    PRODUCT_CODE = 244
    EQUIPMENT_CATEGORY = 245
    MANUFACTURER_ID = 246
    VARIABLE_SET = 247
    STATUS = 248
    SIMPLE_POLL = 254


@dataclass(frozen=True)
class Frame:
    """One ccTalk message. ``src`` is ``None`` for frames read in CRC-16 mode (not on the wire)."""

    dest: int
    src: int | None
    header: int
    data: bytes = b""


def checksum(data: bytes) -> int:
    """8-bit simple checksum: the byte that makes the sum of all bytes 0 mod 256."""
    return (-sum(data)) & 0xFF


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM (poly 0x1021, init 0), as ccTalk's CRC mode uses it."""
    return binascii.crc_hqx(data, 0)


def encode(frame: Frame, *, crc16_mode: bool = False) -> bytes:
    """Frame bytes for the wire.

    Raises:
        ValueError: an address, header or length out of range.
    """
    if len(frame.data) > MAX_DATA:
        raise ValueError(f"ccTalk data is at most {MAX_DATA} bytes, got {len(frame.data)}")
    src = HOST if frame.src is None else frame.src
    for name, value in (("dest", frame.dest), ("src", src), ("header", frame.header)):
        if not 0 <= value <= 0xFF:
            raise ValueError(f"ccTalk {name} {value} is not a byte")
    if crc16_mode:
        crc = crc16(bytes([frame.dest, len(frame.data), frame.header]) + frame.data)
        return (
            bytes([frame.dest, len(frame.data), crc & 0xFF, frame.header])
            + frame.data
            + bytes([crc >> 8])
        )
    body = bytes([frame.dest, len(frame.data), src, frame.header]) + frame.data
    return body + bytes([checksum(body)])


def decode(raw: bytes, *, crc16_mode: bool = False) -> Frame:
    """Parse exactly one complete frame.

    Raises:
        FrameError: wrong length or a bad checksum/CRC.
    """
    if len(raw) < MIN_FRAME:
        raise FrameError(f"ccTalk frame too short ({len(raw)} bytes)")
    if len(raw) != raw[1] + MIN_FRAME:
        raise FrameError(f"ccTalk length byte {raw[1]} does not match {len(raw)} bytes")
    data = bytes(raw[4:-1])
    if crc16_mode:
        expected = crc16(bytes([raw[0], raw[1], raw[3]]) + data)
        if raw[2] != expected & 0xFF or raw[-1] != expected >> 8:
            raise FrameError("ccTalk CRC-16 mismatch")
        return Frame(dest=raw[0], src=None, header=raw[3], data=data)
    if sum(raw) & 0xFF:
        raise FrameError("ccTalk checksum mismatch")
    return Frame(dest=raw[0], src=raw[2], header=raw[3], data=data)


def bytes_wanted(buf: bytes | bytearray) -> int:
    """How many more bytes complete the frame candidate at the start of ``buf`` (≥ 1)."""
    if len(buf) < 2:
        return 2 - len(buf)
    return max(1, buf[1] + MIN_FRAME - len(buf))


def scan(buf: bytes | bytearray, *, crc16_mode: bool = False) -> tuple[Frame | None, int, int]:
    """Find the first valid frame in a byte stream.

    ccTalk has no start byte, so every offset is a candidate: a candidate whose length byte
    is complete but whose checksum fails is garbage and skipped.

    Returns:
        ``(frame, start, end)`` for the first valid frame (``buf[start:end]`` are its bytes),
        or ``(None, keep, keep)`` where ``buf[:keep]`` can never start a frame and may be
        dropped (``keep`` is the first still-incomplete candidate).
    """
    keep: int | None = None
    for start in range(len(buf)):
        if len(buf) - start < 2:
            return None, start if keep is None else keep, start if keep is None else keep
        end = start + buf[start + 1] + MIN_FRAME
        if end > len(buf):
            if keep is None:
                keep = start
            continue
        try:
            frame = decode(bytes(buf[start:end]), crc16_mode=crc16_mode)
        except FrameError:
            continue
        return frame, start, end
    final = len(buf) if keep is None else keep
    return None, final, final


def split(buf: bytes, *, crc16_mode: bool = False) -> Split[Frame]:
    """The driver's receive loop's view of :func:`scan`: the first valid frame in ``buf``, or
    the garbage to drop and the bytes the candidate at the front still needs."""
    frame, start, end = scan(buf, crc16_mode=crc16_mode)
    if frame is not None:
        return Split(frame, end)
    return Split(None, start, bytes_wanted(buf[start:]))
