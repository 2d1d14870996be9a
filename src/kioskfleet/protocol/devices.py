"""Device status vocabulary (CONTRACT §5, after CEN/XFS and XFS4IoT).

One :class:`DeviceStatus` per device, the same in ``device probe``, telemetry and the API.
"""

import re
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

# Each vocabulary is written once, as a Literal type (what mypy and pydantic check); its tuple
# (for argparse choices, messages and loops) is derived from it.
DeviceKind = Literal["printer", "cash_acceptor", "coin_acceptor", "id_reader", "card_reader"]
DriverName = Literal["escpos", "cctalk", "ssp", "ga467", "crt591"]
DeviceState = Literal[
    "online", "offline", "no_device", "hardware_error", "user_error", "busy", "fraud_attempt"
]
Media = Literal["present", "not_present", "jammed", "unknown"]
PaperLevel = Literal["full", "low", "out", "jammed", "unknown"]
CashboxLevel = Literal["ok", "high", "full", "missing", "unknown"]

DEVICE_KINDS: Final[tuple[DeviceKind, ...]] = get_args(DeviceKind)
DRIVERS: Final[tuple[DriverName, ...]] = get_args(DriverName)
DEVICE_STATES: Final[tuple[DeviceState, ...]] = get_args(DeviceState)
MEDIA: Final[tuple[Media, ...]] = get_args(Media)
PAPER_LEVELS: Final[tuple[PaperLevel, ...]] = get_args(PaperLevel)
CASHBOX_LEVELS: Final[tuple[CashboxLevel, ...]] = get_args(CashboxLevel)
#: states in which a device still serves citizens; any other state degrades its station
SERVING_STATES: Final[frozenset[DeviceState]] = frozenset({"online", "busy"})

#: a station's slot for a device (CONTRACT §3): its kind, and for a second one of a kind
#: a number (``printer_2``)
SLOT_PATTERN: Final = rf"^({'|'.join(DEVICE_KINDS)})(_[0-9]{{1,2}})?$"
SlotName = Annotated[str, Field(pattern=SLOT_PATTERN)]


def slot_kind(slot: str) -> DeviceKind:
    """The device kind a slot holds (``printer_2`` → ``printer``).

    Raises:
        ValueError: ``slot`` is not a slot name.
    """
    match = re.match(SLOT_PATTERN, slot)
    if match is None:
        raise ValueError(f"{slot!r} is not a slot name")
    return next(kind for kind in DEVICE_KINDS if kind == match.group(1))


# Stable fault codes (CONTRACT §5). Drivers may add more; these are the ones every reader knows.
PRINTER_FAULTS: Final[tuple[str, ...]] = (
    "cover_open",
    "paper_out",
    "paper_jam",
    "cutter_error",
    "unrecoverable_error",
    "recoverable_error",
    "offline",
)
CASH_FAULTS: Final[tuple[str, ...]] = (
    "note_jam",
    "cashbox_full",
    "cashbox_missing",
    "fraud_attempt",
    "note_path_open",
    "hardware_fault",
)
CARD_FAULTS: Final[tuple[str, ...]] = ("card_jammed", "read_error", "sam_fault")

_FAULT_CODE = r"^[a-z][a-z0-9_]{0,63}$"


class DeviceInfo(BaseModel):
    """Identity a device reports about itself; any part may be unknown."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore", allow_inf_nan=False)

    model: str | None = Field(default=None, max_length=128)
    serial: str | None = Field(default=None, max_length=128)
    firmware: str | None = Field(default=None, max_length=128)


class DeviceStatus(BaseModel):
    """One device's status in the contract vocabulary."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore", allow_inf_nan=False)

    device: DeviceKind
    driver: DriverName
    state: DeviceState
    faults: list[str] = Field(max_length=64)
    info: DeviceInfo = DeviceInfo()
    supplies: dict[str, str] = Field(default_factory=dict, max_length=16)
    media: Media | None = None
    events: list[dict[str, Any]] = Field(default_factory=list, max_length=256)

    def degrades(self) -> bool:
        """True when this device keeps its station from serving (CONTRACT §4 ``degraded``)."""
        return not is_serving(self.state)


def is_serving(state: str) -> bool:
    """``busy`` and ``online`` serve; every other state degrades the station."""
    return state in SERVING_STATES
