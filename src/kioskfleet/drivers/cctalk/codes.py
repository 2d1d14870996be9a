"""ccTalk meanings: event and fault codes, coin/bill ids, the event counter. Pure functions.

Tables from device-protocols §2.5-2.8 (the ccTalk generic specification's numbering); each
code is mapped onto the CONTRACT §5 cash vocabulary here, so the driver only moves bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from kioskfleet.drivers.cash import (
    COUNTRY_CURRENCY,
    CashChannel,
    CashConditions,
    CashEvent,
    credit_event,
    escrow_event,
    jam_event,
    rejected_event,
    simple_event,
)

EVENT_SLOTS: Final = 5

# -- bill validator event codes (result A = 0), §2.7 ----------------------------------------
BILL_RETURNED_FROM_ESCROW: Final = 1
BILL_REJECT_REASONS: Final[dict[int, str]] = {
    2: "validation_failed",
    3: "transport_problem",
    4: "inhibited",
    5: "inhibited_by_dip_switch",
    20: "barcode",
}
BILL_JAMS: Final[dict[int, bool]] = {6: False, 7: True, 15: True, 16: True}  # code → safe
BILL_FRAUD: Final = frozenset({8, 9, 17, 18})
BILL_HARDWARE: Final = frozenset({13, 19})
BILL_STACKER_OK: Final = 10
BILL_STACKER_REMOVED: Final = 11
BILL_STACKER_INSERTED: Final = 12
BILL_STACKER_FULL: Final = 14
BILL_UNKNOWN_STACKED: Final = 21

# -- coin acceptor event codes (result A = 0), §2.6 -----------------------------------------
COIN_REJECT_REASONS: Final[dict[int, str]] = {
    1: "reject_coin",
    2: "inhibited",
    3: "multiple_window",
    8: "second_close_coin",
    9: "accept_gate_not_ready",
    10: "credit_sensor_not_ready",
    11: "sorter_not_ready",
    12: "reject_coin_not_cleared",
    13: "validation_sensor_not_ready",
    14: "credit_sensor_blocked",
    15: "sorter_opto_blocked",
    22: "dce_opto_not_seen",
    24: "repeated_sequential_trip",
    25: "slug",
    30: "accept_gate_closed_not_open",
    32: "manifold_opto_blocked",
    33: "manifold_not_ready",
    37: "coin_too_fast",
    38: "coin_too_slow",
}
#: coin on a string, a coin pulled back, a light attack on the optics
COIN_FRAUD: Final = frozenset({17, 20, 40})
COIN_INHIBITED_FIRST: Final = 128
COIN_INHIBITED_LAST: Final = 159

# -- self-check fault codes (header 232), §2.8 ----------------------------------------------
FAULT_OK: Final = 0
FAULT_BILL_JAMMED: Final = 39
FAULT_STACKER_MISSING: Final = 44
FAULT_STACKER_FULL: Final = 45
FAULT_DOOR_OPEN: Final = 51


def apply_self_check(conditions: CashConditions, code: int) -> None:
    """Set the conditions a self-check reply reports (it names one fault at a time).

    The self-check is the device's view *now*, so it replaces what earlier events suggested
    about jams, the cashbox and the note path.
    """
    conditions.jam = code == FAULT_BILL_JAMMED
    if code != FAULT_BILL_JAMMED:
        conditions.jam_safe = None
    conditions.cashbox = {FAULT_STACKER_MISSING: "missing", FAULT_STACKER_FULL: "full"}.get(
        code, "ok"
    )
    conditions.note_path_open = code == FAULT_DOOR_OPEN
    conditions.hardware_fault = code not in {
        FAULT_OK,
        FAULT_BILL_JAMMED,
        FAULT_STACKER_MISSING,
        FAULT_STACKER_FULL,
        FAULT_DOOR_OPEN,
    }


# -- the event counter, §2.5 -----------------------------------------------------------------
@dataclass(frozen=True)
class CounterStep:
    """How the event counter moved between two reads."""

    new: int
    lost: int
    reset: bool


def counter_step(last: int, counter: int) -> CounterStep:
    """Compare the last seen event counter with a fresh one.

    The counter wraps 255 → 1 (never back to 0); 0 means the device was reset or powered up.
    More than five new events means the buffer overflowed: the excess is lost.
    """
    if counter == 0:
        return CounterStep(new=0, lost=0, reset=last != 0)
    new = counter if last == 0 else (counter - last) % 255
    lost = max(0, new - EVENT_SLOTS)
    return CounterStep(new=min(new, EVENT_SLOTS), lost=lost, reset=False)


def next_counter(counter: int) -> int:
    """The counter after one more event (device side): 1..255, wrapping to 1."""
    return counter % 255 + 1


def split_results(data: bytes) -> tuple[int, list[tuple[int, int]]]:
    """``[counter][A1][B1]…[A5][B5]`` → counter and result pairs, newest first."""
    if not data:
        return 0, []
    pairs = [(data[i], data[i + 1]) for i in range(1, len(data) - 1, 2)]
    return data[0], pairs


# -- events → vocabulary ---------------------------------------------------------------------
@dataclass
class EventEffects:
    """What one buffered result means: vocabulary events plus state changes for the driver."""

    events: list[CashEvent]
    escrow: int | None = None
    escrow_cleared: bool = False
    fraud: bool = False
    credited: bool = False


def bill_result(a: int, b: int, channels: dict[int, CashChannel]) -> EventEffects:
    """One bill-validator result pair (A = bill type or 0, B = route or status code)."""
    if a:
        if b == 1:
            return EventEffects([escrow_event(a)], escrow=a)
        return EventEffects([credit_event(channels.get(a), a)], escrow_cleared=True, credited=True)
    if b == BILL_RETURNED_FROM_ESCROW:
        return EventEffects([rejected_event("returned_from_escrow")], escrow_cleared=True)
    if b in BILL_REJECT_REASONS:
        return EventEffects([rejected_event(BILL_REJECT_REASONS[b])])
    if b in BILL_JAMS:
        return EventEffects([jam_event(BILL_JAMS[b])])
    if b in BILL_FRAUD:
        return EventEffects([simple_event("fraud_attempt")], fraud=True)
    if b == BILL_STACKER_REMOVED:
        return EventEffects([simple_event("cashbox_removed")])
    if b == BILL_STACKER_INSERTED:
        return EventEffects([simple_event("cashbox_replaced")])
    if b == BILL_STACKER_FULL:
        return EventEffects([simple_event("cashbox_full")])
    if b in BILL_HARDWARE:
        return EventEffects([{"type": "hardware_fault", "code": b}])
    if b == BILL_UNKNOWN_STACKED:
        return EventEffects([{"type": "unknown_bill_stacked"}])
    # 0 master inhibit active, 10 stacker OK: states, not events
    return EventEffects([])


def coin_result(a: int, b: int, channels: dict[int, CashChannel]) -> EventEffects:
    """One coin-acceptor result pair (A = coin position or 0, B = sorter path or error)."""
    if a:
        return EventEffects([credit_event(channels.get(a), a)], credited=True)
    if b == 0:
        return EventEffects([])
    if b in COIN_REJECT_REASONS:
        return EventEffects([rejected_event(COIN_REJECT_REASONS[b])])
    if COIN_INHIBITED_FIRST <= b <= COIN_INHIBITED_LAST:
        return EventEffects([rejected_event("inhibited")])
    if b in COIN_FRAUD:
        return EventEffects([simple_event("fraud_attempt")], fraud=True)
    return EventEffects([{"type": "coin_error", "code": b}])


# -- coin and bill ids -------------------------------------------------------------------------
def currency_of(country: str) -> str:
    """ISO 4217 currency for a ccTalk two-letter country code (the code itself if unknown)."""
    return COUNTRY_CURRENCY.get(country.upper(), country.upper())


_MULTIPLIERS: Final[dict[str, int]] = {"K": 1000, "M": 1_000_000}


def coin_value(code: str) -> int | None:
    """A coin id's three-character value in the currency's hundredths (fen for CNY).

    ``"100"`` is 100, ``"2K5"`` 2500 (the letter stands for the decimal point and the
    multiplier). Returns None for anything else (``"..."`` = unprogrammed position).
    """
    if len(code) != 3:
        return None
    if _digits(code):
        return int(code)
    for letter, factor in _MULTIPLIERS.items():
        whole, sep, frac = code.partition(letter)
        if sep and _digits(whole + frac):
            return int(whole or "0") * factor + int(frac or "0") * factor // _pow10(len(frac))
    return None


def parse_coin_id(text: str, number: int) -> CashChannel | None:
    """``"CN100A"`` (country, 3-char value in hundredths, issue) → a channel, or None."""
    text = text.strip()
    if len(text) != 6 or not (text[:2].isascii() and text[:2].isalpha()):
        return None
    value = coin_value(text[2:5])
    if not value:
        return None
    return CashChannel(channel=number, value=value, currency=currency_of(text[:2]))


def parse_bill_id(text: str) -> tuple[str, int] | None:
    """``"CN0100A"`` (country, 4-digit value code, issue) → (country, value code), or None."""
    text = text.strip()
    if len(text) != 7 or not (text[:2].isascii() and text[:2].isalpha()) or not _digits(text[2:6]):
        return None
    code = int(text[2:6])
    return (text[:2].upper(), code) if code else None


def bill_value(code: int, scale: int, decimals: int) -> int:
    """A bill's value in hundredths (fen) from its id value code and the country scaling.

    ``code x scale`` is the value in units of 10^-decimals of the currency (ccTalk header 156);
    we report hundredths, so shift by ``2 - decimals``.
    """
    minor = code * scale
    shift = 2 - decimals
    return minor * _pow10(shift) if shift >= 0 else minor // _pow10(-shift)


def _pow10(exponent: int) -> int:
    return int(10**exponent)


def _digits(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also accepts superscripts ``int`` refuses)."""
    return text.isascii() and text.isdigit()
