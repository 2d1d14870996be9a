"""Firmware profiles: what a hardware model needs, and which models a station combines.

Two kinds of TOML file, kept apart:

- ``models/<name>.toml`` — one hardware model + firmware: driver, device kind, serial
  settings, ccTalk/SSP address, timeout, retries and driver ``[quirks]``
  (e.g. SNBC BT-T080 ``dle_eot3_bit2 = "paper_jam"``);
- ``stations/<name>.toml`` — a station profile (``estation-gen2``): its device slots, each a
  model profile with a default port, and whether the station needs the slot to serve.

Both are pydantic models refusing unknown keys; a :class:`ProfileError` is one line naming the
file, the field and what it allows. A driver's ``[quirks]`` table is checked against that
driver's quirk model (:data:`QUIRKS`). This is a data package: it imports nothing of
kioskfleet but :mod:`kioskfleet.protocol`.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
)

from kioskfleet.protocol.devices import DeviceKind, DriverName, SlotName, slot_kind
from kioskfleet.protocol.explain import explain, one_line

#: where the shipped profiles live
ROOT: Final = Path(__file__).resolve().parent
ProfileKind = Literal["model", "station"]
_DIRS: Final[dict[str, str]] = {"model": "models", "station": "stations"}

_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
#: a profile's name, which is also its file's name
ProfileName = Annotated[
    str,
    Field(
        pattern=_NAME.pattern,
        json_schema_extra={"allowed": "a profile name: lower-case letters, digits and dashes"},
    ),
]
Baudrate = Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400]
BAUDRATES: Final = frozenset(get_args(Baudrate))
#: the device kinds each driver can serve
DRIVER_KINDS: Final[dict[DriverName, frozenset[DeviceKind]]] = {
    "escpos": frozenset({"printer"}),
    "cctalk": frozenset({"cash_acceptor", "coin_acceptor"}),
    "ssp": frozenset({"cash_acceptor"}),
    "ga467": frozenset({"id_reader"}),
    "crt591": frozenset({"card_reader"}),
}

# A file states every value's type: a number in quotes is a mistake, not a number.
_FILE: Final = ConfigDict(frozen=True, extra="forbid", strict=True)
_Text = Annotated[str, Field(min_length=1)]


class ProfileError(ValueError):
    """A profile file is missing, unreadable or invalid; one line naming file and field."""


# -- quirks: every quirk a driver reads, with its range -------------------------------------------
_Seconds = Annotated[float, Field(ge=0.001, le=120.0)]
_Count = Annotated[int, Strict(), Field(ge=0)]


class _Quirks(BaseModel):
    """Quirks every driver reads."""

    model_config = _FILE

    inter_byte_timeout: Annotated[float, Field(ge=0.001, le=5.0)] | None = None
    poll_interval: Annotated[float, Field(ge=0.01, le=60.0)] | None = None


class EscposQuirks(_Quirks):
    """ESC/POS printers."""

    #: what DLE EOT 3 bit 2 means on this model (SNBC: its anti-jam module, a paper jam)
    dle_eot3_bit2: Literal["mechanical_error", "paper_jam"] | None = None
    chinese: bool | None = None
    cut: Literal["partial", "full", "none"] | None = None
    qr_size: Annotated[int, Field(ge=1, le=16)] | None = None
    qr_error_correction: Literal["L", "M", "Q", "H"] | None = None
    gs_i: bool | None = None
    id_timeout: _Seconds | None = None
    asb: bool | None = None
    print_timeout: _Seconds | None = None
    busy_wait: _Seconds | None = None


class CctalkQuirks(_Quirks):
    """ccTalk bill validators and coin acceptors."""

    crc16: bool | None = None
    echo: bool | None = None
    scaling_factor: (
        Annotated[
            tuple[_Count, _Count],
            Field(strict=False, json_schema_extra={"allowed": "[scale, decimals]"}),
        ]
        | None
    ) = None
    address: Annotated[int, Field(ge=0, le=255)] | None = None


class SspQuirks(_Quirks):
    """SSP banknote validators."""

    protocol_version: Annotated[int, Field(ge=1, le=255)] | None = None
    real_value_multiplier: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    address: Annotated[int, Field(ge=0, le=0x7D)] | None = None


class Ga467Quirks(_Quirks):
    """Resident ID card readers (SAM_V)."""

    read_timeout: _Seconds | None = None


class Crt591Quirks(_Quirks):
    """CRT-591 card readers."""

    address: Annotated[int, Field(ge=0, le=15)] | None = None
    ack_timeout: _Seconds | None = None
    motion_timeout: _Seconds | None = None


QUIRKS: Final[dict[DriverName, type[_Quirks]]] = {
    "escpos": EscposQuirks,
    "cctalk": CctalkQuirks,
    "ssp": SspQuirks,
    "ga467": Ga467Quirks,
    "crt591": Crt591Quirks,
}


# -- profiles --------------------------------------------------------------------------------------
class ModelProfile(BaseModel):
    """One hardware model + firmware: how to drive it (``models/<name>.toml``)."""

    model_config = _FILE

    #: optional in the file; when given, it must be the file's name
    name: ProfileName
    driver: DriverName
    device: DeviceKind
    description: _Text = ""
    #: the model as people call it (``"SNBC BT-T080"``); reported when the device does not say
    model: _Text | None = None
    #: the firmware version(s) this profile was written for
    firmware: _Text | None = None
    baudrate: Baudrate | None = None
    address: Annotated[int, Field(ge=0, le=255)] | None = None
    timeout: Annotated[float, Field(ge=0.01, le=60.0)] = 0.5
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    #: the driver's quirks (:data:`QUIRKS`), read-only, as the file gives them
    quirks: Mapping[str, Any] = Field(default_factory=lambda: MappingProxyType({}))
    _source: str = PrivateAttr(default="")

    @field_validator("name")
    @classmethod
    def _the_file_name(cls, name: str, info: ValidationInfo) -> str:
        expected = (info.context or {}).get("file_name")
        if expected is not None and name != expected:
            raise ValueError(f"must be the file's name {expected!r}")
        return name

    @field_validator("device")
    @classmethod
    def _a_kind_the_driver_drives(cls, device: DeviceKind, info: ValidationInfo) -> DeviceKind:
        driver = info.data.get("driver")
        if driver is not None and device not in DRIVER_KINDS[driver]:
            kinds = " or ".join(sorted(DRIVER_KINDS[driver]))
            raise ValueError(f"must be {kinds}: what driver {driver!r} drives")
        return device

    @field_validator("quirks")
    @classmethod
    def _the_drivers_quirks(cls, quirks: Mapping[str, Any], info: ValidationInfo) -> Any:
        driver = info.data.get("driver")
        if driver is not None:
            QUIRKS[driver].model_validate(quirks)  # its errors are reported at quirks.KEY
        return MappingProxyType(dict(quirks))

    @property
    def source(self) -> str:
        """The file it came from ("" when built in code)."""
        return self._source

    def __hash__(self) -> int:
        # the quirks mapping has no hash; a profile is known by its name and file
        return hash((self.name, self.driver, self.device, self._source))

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


class SlotSpec(BaseModel):
    """One ``[slots.NAME]`` table of a station profile, as written."""

    model_config = _FILE

    #: the model profile's name
    model: ProfileName
    port: _Text
    #: the station cannot serve without this device (its failure degrades the station)
    required: bool = True


class _StationFile(BaseModel):
    """A station profile file, as written (its models not yet loaded)."""

    model_config = _FILE

    name: ProfileName | None = None
    description: _Text = ""
    slots: Annotated[
        dict[SlotName, SlotSpec],
        Field(min_length=1, json_schema_extra={"allowed": "[slots.NAME] tables, at least one"}),
    ]


class StationSlot(BaseModel):
    """One device slot of a station: which model, on which port by default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    slot: SlotName
    profile: ModelProfile
    port: _Text
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


class StationProfile(BaseModel):
    """A kind of station: which device models it combines (``stations/<name>.toml``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ProfileName
    slots: tuple[StationSlot, ...]
    description: str = ""
    _source: str = PrivateAttr(default="")

    @property
    def source(self) -> str:
        """The file it came from ("" when built in code)."""
        return self._source

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


@cache
def _schema_for(driver: str) -> type[BaseModel]:
    """A model profile's schema with the driver's quirks spelt out: what an error message
    says a ``quirks.KEY`` allows."""
    quirks = QUIRKS.get(driver)  # type: ignore[call-overload]  # any text: unknown is None
    if quirks is None:
        return ModelProfile
    model: type[BaseModel] = create_model(
        f"{driver}ModelProfile", __base__=ModelProfile, quirks=(quirks, quirks())
    )
    return model


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
        raise ProfileError(one_line(f"{path}: not valid TOML: {err}")) from err


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
def parse_model_profile(data: Mapping[str, Any], *, source: str, name: str) -> ModelProfile:
    """Validate a parsed model profile (see :func:`load_model_profile`).

    Raises:
        ProfileError: an invalid or unknown field, named with ``source``.
    """
    try:
        profile = ModelProfile.model_validate({"name": name, **data}, context={"file_name": name})
    except ValidationError as err:
        schema = _schema_for(str(data.get("driver")))
        raise ProfileError(explain(err, source=source, model=schema)) from err
    profile._source = source
    return profile


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
    try:
        station = _StationFile.model_validate(data)
    except ValidationError as err:
        raise ProfileError(explain(err, source=source, model=_StationFile)) from err
    if station.name is not None and station.name != name:
        raise ProfileError(
            f"{source}: name: must be the file's name {name!r} (got {station.name!r})"
        )
    slots: list[StationSlot] = []
    ports: dict[str, str] = {}
    for slot, spec in station.slots.items():
        where = f"slots.{slot}"
        profile = resolve(spec.model, f"{where}.model")
        kind = slot_kind(slot)
        if profile.device != kind:
            raise ProfileError(
                f"{source}: {where}.model: {spec.model!r} is a {profile.device}, not a {kind}"
            )
        if spec.port in ports:
            raise ProfileError(
                f"{source}: {where}.port: {spec.port} is already the port of {ports[spec.port]}"
            )
        ports[spec.port] = slot
        slots.append(
            StationSlot(slot=slot, profile=profile, port=spec.port, required=spec.required)
        )
    result = StationProfile(name=name, slots=tuple(slots), description=station.description)
    result._source = source
    return result


__all__ = [
    "BAUDRATES",
    "DRIVER_KINDS",
    "QUIRKS",
    "ROOT",
    "Baudrate",
    "CctalkQuirks",
    "Crt591Quirks",
    "EscposQuirks",
    "Ga467Quirks",
    "ModelProfile",
    "ProfileError",
    "ProfileName",
    "SlotSpec",
    "SspQuirks",
    "StationProfile",
    "StationSlot",
    "list_profiles",
    "load_model_profile",
    "load_station_profile",
    "parse_model_profile",
    "parse_station_profile",
]
