"""ITL SSP packets: pure encode/decode, CRC, byte stuffing, and a stream scanner.

Packet (device-protocols §3.2): ``STX(0x7F) | SEQ/ID | LENGTH | DATA | CRCL | CRCH``. SEQ/ID
carries the sequence flag in bit 7 and the slave address in bits 0-6. The CRC-16 (poly 0x8005,
seed 0xFFFF, MSB-first) covers everything but STX, is sent low byte first, and is computed
before stuffing: every 0x7F after STX goes on the wire as ``7F 7F``. A lone 0x7F inside a
packet is the STX of a new one. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from kioskfleet.drivers.base import Split
from kioskfleet.drivers.exceptions import FrameError

STX: Final = 0x7F
MAX_ADDRESS: Final = 0x7D
MAX_DATA: Final = 255


@dataclass(frozen=True)
class Packet:
    """One SSP packet: slave address, sequence flag, data (command or reply bytes)."""

    address: int
    seq: bool
    data: bytes


def crc16(data: bytes | bytearray, seed: int = 0xFFFF, poly: int = 0x8005) -> int:
    """SSP's CRC-16 (CRC-16/CMS: poly 0x8005, seed 0xFFFF, not reflected)."""
    crc = seed
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def stuff(data: bytes) -> bytes:
    """Double every 0x7F (what follows STX on the wire)."""
    return data.replace(b"\x7f", b"\x7f\x7f")


def encode(packet: Packet) -> bytes:
    """Wire bytes for a packet.

    Raises:
        ValueError: address or data length out of range.
    """
    if not 0 <= packet.address <= MAX_ADDRESS:
        raise ValueError(f"SSP address {packet.address} out of range 0..{MAX_ADDRESS}")
    if not 1 <= len(packet.data) <= MAX_DATA:
        raise ValueError(f"SSP data is 1..{MAX_DATA} bytes, got {len(packet.data)}")
    body = bytes([(0x80 if packet.seq else 0) | packet.address, len(packet.data)]) + packet.data
    crc = crc16(body)
    return bytes([STX]) + stuff(body + bytes([crc & 0xFF, crc >> 8]))


def _packet_from_body(body: bytes) -> Packet:
    """SEQ/ID, LENGTH, DATA, CRCL, CRCH (unstuffed) → packet."""
    if len(body) < 5 or body[1] == 0 or len(body) != body[1] + 4:
        raise FrameError("SSP packet length mismatch")
    crc = crc16(body[:-2])
    if body[-2] != crc & 0xFF or body[-1] != crc >> 8:
        raise FrameError("SSP CRC mismatch")
    return Packet(address=body[0] & 0x7F, seq=bool(body[0] & 0x80), data=bytes(body[2:-2]))


def decode(raw: bytes) -> Packet:
    """Parse exactly one complete stuffed packet (starting with STX).

    Raises:
        FrameError: no STX, bad stuffing, wrong length or CRC.
    """
    if not raw or raw[0] != STX:
        raise FrameError("SSP packet does not start with STX")
    packet, start, end = scan(raw)
    if packet is None or start != 0 or end != len(raw):
        raise FrameError("not exactly one SSP packet")
    return packet


def _unstuff_from(buf: bytes | bytearray, stx: int) -> tuple[bytes | None, int, int | None]:
    """Read the packet body after the STX at ``stx``.

    Returns ``(body, end, restart)``: the unstuffed body and the index after it when complete;
    ``(None, len, None)`` when more bytes are needed; ``(None, j, j)`` when a lone 0x7F at ``j``
    starts a new packet.
    """
    body = bytearray()
    j = stx + 1
    need = 2
    while len(body) < need:
        if j >= len(buf):
            return None, len(buf), None
        byte = buf[j]
        if byte == STX:
            if j + 1 >= len(buf):
                return None, len(buf), None  # cannot tell a stuffed 7F from a new STX yet
            if buf[j + 1] != STX:
                return None, j, j
            j += 2
        else:
            j += 1
        body.append(byte)
        if len(body) == 2:
            need = 4 + body[1]
    return bytes(body), j, None


def scan(buf: bytes | bytearray) -> tuple[Packet | None, int, int]:
    """Find the first valid packet in a byte stream.

    Returns:
        ``(packet, start, end)`` when ``buf[start:end]`` is a valid packet, or
        ``(None, keep, keep)`` where ``buf[:keep]`` can never belong to a packet.
    """
    i = 0
    while i < len(buf):
        if buf[i] != STX:
            i += 1
            continue
        if i + 1 < len(buf) and buf[i + 1] == STX:
            i += 2  # a stuffed 7F from the middle of a packet we joined late
            continue
        body, end, restart = _unstuff_from(buf, i)
        if restart is not None:
            i = restart
            continue
        if body is None:
            return None, i, i
        try:
            return _packet_from_body(body), i, end
        except FrameError:
            i += 1
    return None, len(buf), len(buf)


def bytes_wanted(buf: bytes | bytearray) -> int:
    """A lower bound (>= 1) of the bytes still missing for the packet candidate in ``buf``.

    Never more than are really missing, so a blocking ``read(n)`` cannot wait past a reply.
    """
    _, start, _ = scan(buf)
    tail = bytes(buf[start:])
    if not tail:
        return 3
    # a trailing single 7F counts as one byte: over-counting keeps this a lower bound
    got = tail[1:].replace(b"\x7f\x7f", b"\x7f")
    if len(got) < 2:
        return 2 - len(got)
    return max(1, got[1] + 4 - len(got))


def split(buf: bytes) -> Split[Packet]:
    """The driver's receive loop's view of :func:`scan`: the first valid packet in ``buf``, or
    the garbage to drop and a lower bound of the bytes still missing."""
    packet, start, end = scan(buf)
    if packet is not None:
        return Split(packet, end)
    return Split(None, start, bytes_wanted(buf[start:]))
