"""Device status vocabulary (CONTRACT §5, after CEN/XFS and XFS4IoT).

One :class:`DeviceStatus` per device, the same in ``device probe``, telemetry and the API.
"""

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

DeviceKind = Literal["printer", "cash_acceptor", "coin_acceptor", "id_reader", "card_reader"]
DriverName = Literal["escpos", "cctalk", "ssp", "ga467", "crt591"]
DeviceState = Literal[
    "online", "offline", "no_device", "hardware_error", "user_error", "busy", "fraud_attempt"
]
Media = Literal["present", "not_present", "jammed", "unknown"]

DEVICE_KINDS: Final[tuple[str, ...]] = (
    "printer",
    "cash_acceptor",
    "coin_acceptor",
    "id_reader",
    "card_reader",
)
DRIVERS: Final[tuple[str, ...]] = ("escpos", "cctalk", "ssp", "ga467", "crt591")
DEVICE_STATES: Final[tuple[str, ...]] = (
    "online",
    "offline",
    "no_device",
    "hardware_error",
    "user_error",
    "busy",
    "fraud_attempt",
)
#: states in which a device still serves citizens; any other state degrades its station
SERVING_STATES: Final[frozenset[str]] = frozenset({"online", "busy"})

PAPER_LEVELS: Final[tuple[str, ...]] = ("full", "low", "out", "jammed", "unknown")
CASHBOX_LEVELS: Final[tuple[str, ...]] = ("ok", "high", "full", "missing", "unknown")

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
