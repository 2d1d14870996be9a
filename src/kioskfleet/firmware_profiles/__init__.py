"""Firmware profiles: what a hardware model needs, and which models a station combines.

Two kinds of TOML file, kept apart:

- ``models/<name>.toml`` — one hardware model + firmware: driver, device kind, serial
  settings, ccTalk/SSP address, timeout, retries and driver ``[quirks]``
  (e.g. SNBC BT-T080 ``dle_eot3_bit2 = "paper_jam"``);
- ``stations/<name>.toml`` — a station profile (``estation-gen2``): its device slots, each a
  model profile with a default port, and whether the station needs the slot to serve.

Everything is validated on load; a :class:`ProfileError` names the file and the field. This
is a data package: it imports nothing of kioskfleet but :mod:`kioskfleet.protocol`.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

from kioskfleet.protocol.devices import DEVICE_KINDS, DRIVERS

#: where the shipped profiles live
ROOT: Final = Path(__file__).resolve().parent
ProfileKind = Literal["model", "station"]
_DIRS: Final[dict[str, str]] = {"model": "models", "station": "stations"}

_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_SLOT: Final = re.compile(
    r"^(printer|cash_acceptor|coin_acceptor|id_reader|card_reader)(_[0-9]{1,2})?$"
)
BAUDRATES: Final = frozenset({1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400})
#: the device kinds each driver can serve
DRIVER_KINDS: Final[dict[str, frozenset[str]]] = {
    "escpos": frozenset({"printer"}),
    "cctalk": frozenset({"cash_acceptor", "coin_acceptor"}),
    "ssp": frozenset({"cash_acceptor"}),
    "ga467": frozenset({"id_reader"}),
    "crt591": frozenset({"card_reader"}),
}


class ProfileError(ValueError):
    """A profile file is missing, unreadable or invalid; the message names file and field."""


# -- quirk schema: every quirk a driver reads, with its check ------------------------------------
Check = Callable[[Any], str | None]


def _number(low: float, high: float) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number from {low} to {high}"
        if not low <= value <= high:
            return f"must be from {low} to {high}, not {value}"
        return None

    return check


def _integer(low: int, high: int) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be a whole number from {low} to {high}"
        if not low <= value <= high:
            return f"must be from {low} to {high}, not {value}"
        return None

    return check


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _one_of(*choices: str) -> Check:
    def check(value: Any) -> str | None:
        if value not in choices:
            return f"must be one of {', '.join(repr(c) for c in choices)}, not {value!r}"
        return None

    return check


def _scaling(value: Any) -> str | None:
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    ):
        return None
    return "must be [scale, decimals], two whole numbers"


_SECONDS: Final = _number(0.001, 120.0)
_COMMON_QUIRKS: Final[dict[str, Check]] = {
    "inter_byte_timeout": _number(0.001, 5.0),
    "poll_interval": _number(0.01, 60.0),
}
QUIRKS: Final[dict[str, dict[str, Check]]] = {
    "escpos": {
        "dle_eot3_bit2": _one_of("mechanical_error", "paper_jam"),
        "chinese": _boolean,
        "cut": _one_of("partial", "full", "none"),
        "qr_size": _integer(1, 16),
        "qr_error_correction": _one_of("L", "M", "Q", "H"),
        "gs_i": _boolean,
        "id_timeout": _SECONDS,
        "asb": _boolean,
        "print_timeout": _SECONDS,
        "busy_wait": _SECONDS,
    },
    "cctalk": {
        "crc16": _boolean,
        "echo": _boolean,
        "scaling_factor": _scaling,
        "address": _integer(0, 255),
    },
    "ssp": {
        "protocol_version": _integer(1, 255),
        "real_value_multiplier": _integer(1, 1_000_000),
        "address": _integer(0, 0x7D),
    },
    "ga467": {"read_timeout": _SECONDS},
    "crt591": {
        "address": _integer(0, 15),
        "ack_timeout": _SECONDS,
        "motion_timeout": _SECONDS,
    },
}

_MODEL_KEYS: Final = frozenset(
    {
        "name",
        "description",
        "driver",
        "device",
        "model",
        "firmware",
        "baudrate",
        "address",
        "timeout",
        "retries",
        "quirks",
    }
)
_STATION_KEYS: Final = frozenset({"name", "description", "slots"})
_SLOT_KEYS: Final = frozenset({"model", "port", "required"})


@dataclass(frozen=True)
class ModelProfile:
    """One hardware model + firmware: how to drive it."""

    name: str
    driver: str
    device: str
    description: str = ""
    #: the model as people call it (``"SNBC BT-T080"``); reported when the device does not say
    model: str | None = None
    #: the firmware version(s) this profile was written for
    firmware: str | None = None
    baudrate: int | None = None
    address: int | None = None
    timeout: float = 0.5
    retries: int = 2
    # read-only; left out of the hash (a mapping has none), still compared
    quirks: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    #: the file it came from
    source: str = ""

    def as_options(self) -> dict[str, Any]:
        """The profile as ``ProbeOptions.profile`` (plain, mutable copies).

        ``address`` is also put into ``quirks`` (unless a quirk sets it), where the cash and
        card-reader drivers look for it.
        """
        quirks = dict(self.quirks)
        if self.address is not None:
            quirks.setdefault("address", self.address)
        options: dict[str, Any] = {
            "name": self.name,
            "driver": self.driver,
            "device": self.device,
            "timeout": self.timeout,
            "retries": self.retries,
            "quirks": quirks,
        }
        for key in ("model", "firmware", "baudrate", "address"):
            value = getattr(self, key)
            if value is not None:
                options[key] = value
        return options


@dataclass(frozen=True)
class StationSlot:
    """One device slot of a station: which model, on which port by default."""

    slot: str
    profile: ModelProfile
    port: str
    #: the station cannot serve without this device (its failure degrades the station)
    required: bool = True

    def as_device_config(self) -> dict[str, Any]:
        """The slot as an agent configuration ``[devices.SLOT]`` table (driver, port, …)."""
        config: dict[str, Any] = {
            "driver": self.profile.driver,
            "port": self.port,
            "timeout": self.profile.timeout,
            "retries": self.profile.retries,
        }
        for key in ("baudrate", "address", "model"):
            value = getattr(self.profile, key)
            if value is not None:
                config[key] = value
        return config


@dataclass(frozen=True)
class StationProfile:
    """A kind of station: which device models it combines."""

    name: str
    slots: tuple[StationSlot, ...]
    description: str = ""
    source: str = ""

    @property
    def needs(self) -> tuple[str, ...]:
        """The slots this station needs to serve (CONTRACT §4 ``degraded``)."""
        return tuple(s.slot for s in self.slots if s.required)

    def slot(self, name: str) -> StationSlot:
        """The slot called ``name``.

        Raises:
            KeyError: the station has no such slot.
        """
        for candidate in self.slots:
            if candidate.slot == name:
                return candidate
        raise KeyError(name)


# -- loading -------------------------------------------------------------------------------------
def _path(kind: ProfileKind, name: str, root: Path | None) -> Path:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ProfileError(
            f"{kind} profile name {name!r} must be lower-case letters, digits and dashes"
        )
    return (root or ROOT) / _DIRS[kind] / f"{name}.toml"


def _read(path: Path, kind: ProfileKind) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        known = ", ".join(list_profiles(kind, root=path.parent.parent)) or "none"
        raise ProfileError(f"{path}: no such {kind} profile (known: {known})") from err
    except OSError as err:
        raise ProfileError(f"{path}: cannot read: {err.strerror or err}") from err
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ProfileError(f"{path}: not valid TOML: {err}") from err


def load_model_profile(name: str, *, root: Path | None = None) -> ModelProfile:
    """Load and validate ``models/<name>.toml``.

    Args:
        name: the profile's name, e.g. ``"snbc-btt080"``.
        root: a folder with ``models/`` and ``stations/`` instead of the shipped ones.

    Raises:
        ProfileError: missing file, bad TOML, or an invalid field (named in the message).
    """
    path = _path("model", name, root)
    return parse_model_profile(_read(path, "model"), source=str(path), name=name)


def load_station_profile(name: str, *, root: Path | None = None) -> StationProfile:
    """Load and validate ``stations/<name>.toml`` and every model profile it names.

    Raises:
        ProfileError: as :func:`load_model_profile`, for the station or one of its models.
    """
    path = _path("station", name, root)

    def resolve(model: str, where: str) -> ModelProfile:
        try:
            return load_model_profile(model, root=root)
        except ProfileError as err:
            raise ProfileError(f"{path}: {where}: {err}") from err

    data = _read(path, "station")
    return parse_station_profile(data, source=str(path), name=name, resolve=resolve)


def list_profiles(kind: ProfileKind = "model", *, root: Path | None = None) -> list[str]:
    """The names of the ``model`` or ``station`` profiles available, sorted."""
    folder = (root or ROOT) / _DIRS[kind]
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.toml") if _NAME.match(p.stem))


# -- validation ----------------------------------------------------------------------------------
class _Fields:
    """Typed access to one TOML table, with errors that name the file and the field."""

    def __init__(self, data: Mapping[str, Any], source: str, prefix: str = "") -> None:
        self.data = data
        self.source = source
        self.prefix = prefix

    def error(self, key: str, message: str) -> ProfileError:
        return ProfileError(f"{self.source}: {self.prefix}{key}: {message}")

    def only(self, allowed: frozenset[str]) -> None:
        unknown = sorted(set(self.data) - allowed)
        if unknown:
            raise self.error(unknown[0], f"unknown field (allowed: {', '.join(sorted(allowed))})")

    def text(self, key: str) -> str | None:
        if key not in self.data:
            return None
        return self.need(key)

    def need(self, key: str) -> str:
        if key not in self.data:
            raise self.error(key, "missing")
        value = self.data[key]
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, "must be a non-empty string")
        return value

    def integer(self, key: str, check: Check) -> int | None:
        if key not in self.data:
            return None
        value = self.data[key]
        problem = check(value)
        if problem:
            raise self.error(key, problem)
        return int(value)

    def number(self, key: str, check: Check, default: float) -> float:
        if key not in self.data:
            return default
        value = self.data[key]
        problem = check(value)
        if problem:
            raise self.error(key, problem)
        return float(value)


def parse_model_profile(data: Mapping[str, Any], *, source: str, name: str) -> ModelProfile:
    """Validate a parsed model profile (see :func:`load_model_profile`).

    Raises:
        ProfileError: an invalid or unknown field, named with ``source``.
    """
    f = _Fields(data, source)
    f.only(_MODEL_KEYS)
    declared = f.text("name")
    if declared is not None and declared != name:
        raise f.error("name", f"{declared!r} does not match the file name {name!r}")
    driver = f.need("driver")
    if driver not in DRIVERS:
        raise f.error("driver", f"unknown driver {driver!r} (known: {', '.join(DRIVERS)})")
    device = f.need("device")
    if device not in DEVICE_KINDS:
        raise f.error("device", f"unknown device {device!r} (known: {', '.join(DEVICE_KINDS)})")
    if device not in DRIVER_KINDS[driver]:
        raise f.error(
            "device",
            f"driver {driver!r} drives {' or '.join(sorted(DRIVER_KINDS[driver]))}, not {device!r}",
        )
    baudrate = f.integer("baudrate", _integer(1, 10_000_000))
    if baudrate is not None and baudrate not in BAUDRATES:
        raise f.error(
            "baudrate",
            f"{baudrate} is not a standard rate ({', '.join(map(str, sorted(BAUDRATES)))})",
        )
    quirks = _quirks(data.get("quirks", {}), driver, source)
    retries = f.integer("retries", _integer(0, 10))
    return ModelProfile(
        name=name,
        driver=driver,
        device=device,
        description=f.text("description") or "",
        model=f.text("model"),
        firmware=f.text("firmware"),
        baudrate=baudrate,
        address=f.integer("address", _integer(0, 255)),
        timeout=f.number("timeout", _number(0.01, 60.0), 0.5),
        retries=2 if retries is None else retries,
        quirks=MappingProxyType(quirks),
        source=source,
    )


def _quirks(table: Any, driver: str, source: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ProfileError(f"{source}: quirks: must be a table ([quirks])")
    known = {**_COMMON_QUIRKS, **QUIRKS[driver]}
    for key, value in table.items():
        check = known.get(key)
        if check is None:
            raise ProfileError(
                f"{source}: quirks.{key}: unknown quirk for {driver} "
                f"(known: {', '.join(sorted(known))})"
            )
        problem = check(value)
        if problem:
            raise ProfileError(f"{source}: quirks.{key}: {problem}")
    return dict(table)


def parse_station_profile(
    data: Mapping[str, Any],
    *,
    source: str,
    name: str,
    resolve: Callable[[str, str], ModelProfile],
) -> StationProfile:
    """Validate a parsed station profile; ``resolve(model, where)`` loads a model profile.

    Raises:
        ProfileError: an invalid or unknown field, named with ``source``.
    """
    f = _Fields(data, source)
    f.only(_STATION_KEYS)
    declared = f.text("name")
    if declared is not None and declared != name:
        raise f.error("name", f"{declared!r} does not match the file name {name!r}")
    table = data.get("slots")
    if not isinstance(table, dict) or not table:
        raise f.error("slots", "missing: a station needs at least one [slots.NAME] table")
    slots: list[StationSlot] = []
    ports: dict[str, str] = {}
    for slot, spec in table.items():
        where = f"slots.{slot}"
        if not _SLOT.match(slot):
            raise f.error(
                where,
                "slot names are printer, cash_acceptor, coin_acceptor, id_reader, "
                "card_reader (a second one: printer_2, …)",
            )
        if not isinstance(spec, dict):
            raise f.error(where, "must be a table with model and port")
        s = _Fields(spec, source, prefix=f"{where}.")
        s.only(_SLOT_KEYS)
        model = s.need("model")
        port = s.need("port")
        required = spec.get("required", True)
        if not isinstance(required, bool):
            raise s.error("required", "must be true or false")
        if not _NAME.match(model):
            raise s.error("model", f"{model!r} is not a profile name")
        profile = resolve(model, f"{where}.model")
        kind = slot.rsplit("_", 1)[0] if slot.rsplit("_", 1)[-1].isdigit() else slot
        if profile.device != kind:
            raise s.error("model", f"{model!r} is a {profile.device}, not a {kind}")
        if port in ports:
            raise s.error("port", f"{port} is already the port of {ports[port]}")
        ports[port] = slot
        slots.append(StationSlot(slot=slot, profile=profile, port=port, required=required))
    return StationProfile(
        name=name, slots=tuple(slots), description=f.text("description") or "", source=source
    )


__all__ = [
    "ROOT",
    "ModelProfile",
    "ProfileError",
    "StationProfile",
    "StationSlot",
    "list_profiles",
    "load_model_profile",
    "load_station_profile",
    "parse_model_profile",
    "parse_station_profile",
]
