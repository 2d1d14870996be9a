"""SSP meanings: commands, generic responses, poll events, reject codes, setup. Pure functions.

Tables from device-protocols §3.5-3.9 (ITL GA138). The poll-event parser must know each
event's data size; unknown events stop parsing (their size is unknown).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from kioskfleet.drivers.cash import CashChannel, currency_of_iso
from kioskfleet.drivers.exceptions import FrameError

log = logging.getLogger(__name__)


class Command(IntEnum):
    """SSP commands for banknote validators (§3.6)."""

    RESET = 0x01
    SET_INHIBITS = 0x02
    SETUP_REQUEST = 0x05
    HOST_PROTOCOL_VERSION = 0x06
    POLL = 0x07
    REJECT = 0x08
    DISABLE = 0x09
    ENABLE = 0x0A
    GET_SERIAL_NUMBER = 0x0C
    SYNC = 0x11
    LAST_REJECT_CODE = 0x17
    HOLD = 0x18
    GET_FIRMWARE_VERSION = 0x20
    GET_DATASET_VERSION = 0x21


OK: Final = 0xF0
GENERIC_RESPONSES: Final[dict[int, str]] = {
    0xF0: "ok",
    0xF2: "command not known",
    0xF3: "wrong number of parameters",
    0xF4: "parameter out of range",
    0xF5: "command cannot be processed",
    0xF6: "software error",
    0xF8: "fail",
    0xFA: "key not set",
}
CANNOT_PROCESS: Final = 0xF5
FAIL: Final = 0xF8


class Event(IntEnum):
    """Banknote validator poll events (§3.7)."""

    SLAVE_RESET = 0xF1
    READ = 0xEF
    CREDIT = 0xEE
    REJECTING = 0xED
    REJECTED = 0xEC
    STACKING = 0xCC
    STACKED = 0xEB
    SAFE_JAM = 0xEA
    UNSAFE_JAM = 0xE9
    DISABLED = 0xE8
    STACKER_FULL = 0xE7
    FRAUD_ATTEMPT = 0xE6
    NOTE_CLEARED_FROM_FRONT = 0xE1
    NOTE_CLEARED_INTO_CASHBOX = 0xE2
    CASHBOX_REMOVED = 0xE3
    CASHBOX_REPLACED = 0xE4
    NOTE_PATH_OPEN = 0xE0
    CHANNEL_DISABLE = 0xB5
    INITIALISING = 0xB6


#: bytes of data after each event code (validators, protocol versions below 9)
EVENT_DATA_SIZE: Final[dict[int, int]] = {
    Event.SLAVE_RESET: 0,
    Event.READ: 1,
    Event.CREDIT: 1,
    Event.REJECTING: 0,
    Event.REJECTED: 0,
    Event.STACKING: 0,
    Event.STACKED: 0,
    Event.SAFE_JAM: 0,
    Event.UNSAFE_JAM: 0,
    Event.DISABLED: 0,
    Event.STACKER_FULL: 0,
    Event.FRAUD_ATTEMPT: 1,
    Event.NOTE_CLEARED_FROM_FRONT: 1,
    Event.NOTE_CLEARED_INTO_CASHBOX: 1,
    Event.CASHBOX_REMOVED: 0,
    Event.CASHBOX_REPLACED: 0,
    Event.NOTE_PATH_OPEN: 0,
    Event.CHANNEL_DISABLE: 0,
    Event.INITIALISING: 0,
}

#: last reject code (0x17) → stable snake_case reason
REJECT_REASONS: Final[dict[int, str]] = {
    0x00: "accepted",
    0x01: "length_fail",
    0x02: "average_fail",
    0x03: "coastline_fail",
    0x04: "graph_fail",
    0x05: "buried_fail",
    0x06: "channel_inhibited",
    0x07: "second_note_detected",
    0x08: "rejected_by_host",
    0x09: "cross_channel_detected",
    0x0A: "rear_sensor_error",
    0x0B: "note_too_long",
    0x0C: "disabled_by_host",
    0x0D: "slow_mech",
    0x0E: "strimming_attempt",
    0x0F: "fraud_channel",
    0x10: "no_notes_detected",
    0x11: "peak_detect_fail",
    0x12: "twisted_note",
    0x13: "escrow_timeout",
    0x14: "bar_code_scan_fail",
    0x15: "no_cam_activate",
    0x16: "slot_fail_1",
    0x17: "slot_fail_2",
    0x18: "lens_oversample",
    0x19: "width_detection_fail",
    0x1A: "short_note",
    0x1B: "payout_note",
    0x1C: "double_note",
    0x1D: "unable_to_stack",
    0x1F: "credit_card_detected",
}


def reject_reason(code: int) -> str:
    """A stable reason word for a last-reject code."""
    return REJECT_REASONS.get(code, f"reject_code_{code:02x}")


def parse_events(data: bytes) -> list[tuple[int, int | None]]:
    """Poll reply data after the OK byte → ``[(event, data byte or None), …]``, oldest first.

    An unknown event code ends parsing: its data size is unknown, so nothing after it can be
    trusted. Whatever was parsed before it is returned.
    """
    events: list[tuple[int, int | None]] = []
    i = 0
    while i < len(data):
        code = data[i]
        size = EVENT_DATA_SIZE.get(code)
        if size is None:
            log.warning("ssp: unknown poll event 0x%02X; ignoring the rest of the reply", code)
            break
        if i + 1 + size > len(data):
            raise FrameError(f"ssp: poll event 0x{code:02X} cut short")
        events.append((code, data[i + 1] if size else None))
        i += 1 + size
    return events


@dataclass(frozen=True)
class Setup:
    """What SETUP REQUEST tells about a banknote validator."""

    unit_type: int
    firmware: str
    country: str
    protocol: int
    channels: dict[int, CashChannel]


def setup_reply(
    *,
    unit_type: int,
    firmware: str,
    country: str,
    values: list[int],
    protocol: int,
    value_multiplier: int = 1,
    real_value_multiplier: int = 100,
) -> bytes:
    """A SETUP REQUEST reply after the OK byte: the simulator's half of :func:`parse_setup`."""
    out = bytearray([unit_type])
    out += firmware.encode("ascii")[:4].ljust(4, b"0")
    out += country.encode("ascii")[:3]
    out += value_multiplier.to_bytes(3, "big")
    out.append(len(values))
    out += bytes(min(v, 255) for v in values)
    out += bytes([2] * len(values))  # channel security: obsolete, reported as 2
    out += real_value_multiplier.to_bytes(3, "big")
    out.append(protocol)
    if protocol >= 6:
        for _ in values:
            out += country.encode("ascii")[:3]
        for value in values:
            out += value.to_bytes(4, "little")
    return bytes(out)


def parse_setup(data: bytes, *, real_value_multiplier: int | None = None) -> Setup:
    """SETUP REQUEST reply (after the OK byte) → channels with values in fen.

    Value of a channel in fen = channel value x value multiplier x real value multiplier,
    where the real value multiplier turns whole currency units into hundredths (100 for CNY).
    From protocol 6 on the 4-byte expanded channel values (already multiplied) are used.
    Multipliers are read big-endian; a profile can override the real value multiplier where
    a firmware disagrees (device-protocols §7.3: byte order not confirmed on hardware).

    Raises:
        FrameError: the reply is too short for what it announces.
    """
    if len(data) < 12:
        raise FrameError("ssp: setup reply too short")
    unit_type = data[0]
    firmware = data[1:5].decode("ascii", "replace")
    country = data[5:8].decode("ascii", "replace")
    multiplier = int.from_bytes(data[8:11], "big")
    count = data[11]
    base = 12 + 2 * count
    if len(data) < base + 4:
        raise FrameError("ssp: setup reply shorter than its channel count")
    values = list(data[12 : 12 + count])
    real = int.from_bytes(data[base : base + 3], "big")
    protocol = data[base + 3]
    if real_value_multiplier is not None:
        real = real_value_multiplier
    if not real:
        real = 100  # a zero multiplier would make every note worthless: assume whole units
    currencies = [country] * count
    expanded = base + 4
    if protocol >= 6 and len(data) >= expanded + 7 * count:
        currencies = [
            data[expanded + 3 * i : expanded + 3 * i + 3].decode("ascii", "replace")
            for i in range(count)
        ]
        start = expanded + 3 * count
        values = [
            int.from_bytes(data[start + 4 * i : start + 4 * i + 4], "little") for i in range(count)
        ]
        multiplier = 1
    channels = {
        number: CashChannel(
            channel=number,
            value=value * multiplier * real,
            currency=currency_of_iso(currencies[number - 1]),
        )
        for number, value in enumerate(values, start=1)
        if value
    }
    return Setup(
        unit_type=unit_type,
        firmware=firmware,
        country=country,
        protocol=protocol,
        channels=channels,
    )
