"""Agent configuration (``kioskfleet agent --config FILE``, TOML; CONTRACT §2).

Pydantic models, frozen, refusing unknown keys: a misspelt key must not fall back to a
default without a word. Every field has a default unless a kiosk cannot run without it, so a
later section (``[updates]``, ``[auth]``) is one more field holding its own model, and files
written before it keep loading.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Final, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from kioskfleet.agent.updater.soak import SoakPolicy
from kioskfleet.firmware_profiles import ProfileError, ProfileName, load_station_profile
from kioskfleet.mqttclient import TlsSettings
from kioskfleet.protocol.broker_url import BrokerUrl, broker_url_value
from kioskfleet.protocol.devices import DriverName, SlotName
from kioskfleet.protocol.explain import Loc, explain, one_line
from kioskfleet.protocol.stations import (
    MAINTENANCE_WINDOW_PATTERN,
    SiteType,
    is_valid_station_id,
)


class ConfigError(ValueError):
    """The agent configuration is unusable; one line naming the file, the key and what it
    allows."""


#: China has kept UTC+8 without daylight saving since 1991, so a fixed offset is exact and
#: needs no time zone database (which Windows kiosks lack)
SHANGHAI: Final = timezone(timedelta(hours=8), "Asia/Shanghai")
_WINDOW: Final = re.compile(MAINTENANCE_WINDOW_PATTERN)
_WINDOW_ALLOWED: Final = "'HH:MM-HH:MM' in Asia/Shanghai time, e.g. '01:00-05:00'"

# TOML gives every value its type: a number in quotes is a mistake, not a number. Lists and
# paths are converted (TOML has arrays, not tuples; and no path type).
_STRICT: Final = ConfigDict(frozen=True, extra="forbid", strict=True)
_Label = Annotated[str, Field(min_length=1, max_length=128)]
_Path = Annotated[Path, Field(strict=False, json_schema_extra={"allowed": "a path"})]


class MaintenanceWindow(BaseModel):
    """A daily time span in Asia/Shanghai: CONTRACT §2's ``maintenance_window``, when a
    software update may restart the agent (:class:`~kioskfleet.agent.updater.gate.UpdateGate`).

    ``end`` before ``start`` wraps midnight (``23:00-02:00``); ``start`` is inside the window,
    ``end`` is not.
    """

    model_config = _STRICT

    start: time
    end: time

    @model_validator(mode="after")
    def _a_real_window(self) -> MaintenanceWindow:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("times are local to Asia/Shanghai: no offset")
        if self.start == self.end:
            raise ValueError(f"start and end must differ ({_WINDOW_ALLOWED})")
        return self

    @classmethod
    def parse(cls, text: str) -> MaintenanceWindow:
        """``"01:00-05:00"`` → the window.

        Raises:
            ValueError: not ``HH:MM-HH:MM``, or start and end are equal.
        """
        match = _WINDOW.match(text)
        if match is None:
            raise ValueError(f"must be {_WINDOW_ALLOWED}")
        h1, m1, h2, m2 = (int(part) for part in match.groups())
        if (h1, m1) == (h2, m2):
            raise ValueError(f"start and end must differ ({_WINDOW_ALLOWED})")
        return cls(start=time(h1, m1), end=time(h2, m2))

    def contains(self, moment: datetime) -> bool:
        """Whether ``moment`` (timezone-aware) falls inside the window.

        Raises:
            ValueError: ``moment`` is naive (its time zone is unknown).
        """
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError("a maintenance window needs a timezone-aware datetime")
        local = moment.astimezone(SHANGHAI).time()
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def _window(value: Any) -> Any:
    return MaintenanceWindow.parse(value) if isinstance(value, str) else value


def _station(value: str) -> str:
    if not is_valid_station_id(value):
        raise ValueError("must be a station id: [a-z0-9][a-z0-9-]{2,63}, not 'controller'")
    return value


def _local_service(value: Any) -> Any:
    if value is False or value == "":
        return None
    if value is True:
        raise ValueError("must be 'host:port' on the loopback, or false")
    if isinstance(value, str):
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError("must be 'host:port' on the loopback (port 1-65535), or false")
    return value


class DeviceConfig(BaseModel):
    """One device slot: which driver on which port (a ``[devices.SLOT]`` table)."""

    model_config = _STRICT

    #: the table's name (``printer``, ``cash_acceptor``, … ``printer_2``)
    slot: Annotated[SlotName, Field(json_schema_extra={"readOnly": True})]
    driver: DriverName
    port: Annotated[str, Field(min_length=1)]
    baudrate: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    address: Annotated[int, Field(ge=0, le=255)] | None = None
    #: the firmware profile (``firmware_profiles/models``) whose settings and quirks apply
    profile: ProfileName | None = None
    timeout: Annotated[float, Field(ge=0.01, le=60.0)] = 0.5
    retries: Annotated[int, Field(ge=0, le=10)] = 2


#: the soak policy's defaults: the ``[updates]`` keys default to them
_SOAK: Final = SoakPolicy()


class UpdatesConfig(BaseModel):
    """The ``[updates]`` section: how a new software release is watched before it is
    committed (the updater's :class:`~kioskfleet.agent.updater.soak.SoakPolicy`), and how
    often the update repository is asked whether its metadata is still fresh."""

    model_config = _STRICT

    #: seconds every health probe must pass for, in a row, before the release is committed
    soak_s: Annotated[float, Field(ge=0, le=86400)] = _SOAK.soak
    #: seconds between two health probes
    probe_interval_s: Annotated[float, Field(gt=0, le=3600)] = _SOAK.interval
    #: seconds after the trial began by which it must have soaked healthy (across restarts),
    #: else it rolls back
    health_timeout_s: Annotated[float, Field(gt=0, le=7 * 86400)] = _SOAK.timeout
    #: failed probes in a row that roll back at once
    max_failed_probes: Annotated[int, Field(ge=1, le=1000)] = _SOAK.max_failures
    #: agent starts within one trial that roll back: the crash-loop limit
    max_starts: Annotated[int, Field(ge=1, le=100)] = _SOAK.max_starts
    #: seconds between two checks that the update metadata is fresh and the kiosk's clock
    #: near the controller's (reported in telemetry; both become alerts)
    check_interval_s: Annotated[float, Field(ge=1, le=7 * 86400)] = 3600.0

    @model_validator(mode="after")
    def _soak_fits_the_timeout(self) -> Self:
        if self.soak_s >= self.health_timeout_s:
            raise ValueError(
                f"soak_s ({self.soak_s:g}) must be shorter than health_timeout_s "
                f"({self.health_timeout_s:g}): a trial could never pass"
            )
        return self

    def soak_policy(self) -> SoakPolicy:
        """The updater's policy."""
        return SoakPolicy(
            soak=self.soak_s,
            interval=self.probe_interval_s,
            timeout=self.health_timeout_s,
            max_failures=self.max_failed_probes,
            max_starts=self.max_starts,
        )


class AgentConfig(BaseModel):
    """Everything a kiosk agent needs to know about itself."""

    model_config = _STRICT

    station: Annotated[
        str,
        AfterValidator(_station),
        Field(json_schema_extra={"allowed": "a station id: [a-z0-9][a-z0-9-]{2,63}"}),
    ]
    district: _Label
    site: _Label
    site_type: SiteType
    #: the station profile (``firmware_profiles/stations``), or a name of the site's own
    profile: _Label
    broker: Annotated[
        BrokerUrl,
        PlainValidator(broker_url_value),
        WithJsonSchema({"type": "string", "allowed": "an mqtt:// or mqtts:// URL"}),
    ]
    #: the ``[tls]`` section: CA, client certificate and key for an ``mqtts://`` broker
    tls: TlsSettings | None = None
    #: the controller's HTTP(S) base URL, where the kiosk renews its certificate
    #: (``kioskfleet agent enroll`` gets the first one); None: no renewal
    controller: (
        Annotated[
            str,
            Field(pattern=r"^https?://[^\s/]+", json_schema_extra={"allowed": "an http(s):// URL"}),
        ]
        | None
    ) = None
    #: the CA that signed the controller's HTTPS certificate (the system's CAs when absent)
    controller_ca: _Path | None = None
    telemetry_interval: Annotated[float, Field(ge=0.1, le=86400)] = 10.0
    state_dir: _Path = Path("/var/lib/kioskfleet")
    #: MQTT keepalive (s); the station is seen offline within 1.5 × keepalive after it dies
    keepalive: Annotated[int, Field(ge=1, le=65535)] = 30
    #: when a software update may restart the agent (the updater's gate); none: any time
    maintenance_window: Annotated[
        MaintenanceWindow | None,
        BeforeValidator(_window),
        WithJsonSchema({"type": "string", "allowed": _WINDOW_ALLOWED}),
    ] = None
    #: the trusted TUF root of the update repository; validated, not yet read
    update_root: _Path | None = None
    #: the controller's TUF repository (``http(s)://host:port/tuf/``); none: derived from the
    #: broker's host, ``http://HOST:8000/tuf/`` (the controller's default port)
    update_url: (
        Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$", max_length=500)] | None
    ) = None
    catalogue_version: _Label | None = None
    #: the ``[updates]`` section: soak window, health timeout, crash-loop limit, checks
    updates: UpdatesConfig = UpdatesConfig()
    #: the station profile's slots (when it is a shipped profile) overridden by the file's
    #: ``[devices.SLOT]`` tables; false: the file's tables only
    use_profile_devices: bool = True
    devices: Annotated[tuple[DeviceConfig, ...], Field(strict=False)] = ()
    #: slots the station needs to serve; by default the station profile's
    required_devices: Annotated[tuple[SlotName, ...], Field(strict=False)] = ()
    #: ``host:port`` of the local device service for the kiosk's own application (loopback
    #: only); None (false in the file) switches it off
    local_service: Annotated[
        str | None,
        BeforeValidator(_local_service),
        WithJsonSchema({"type": "string", "allowed": "'host:port' on the loopback, or false"}),
    ] = "127.0.0.1:8765"
    #: browser origins allowed to call the local service (the kiosk app's own page)
    local_allowed_origins: Annotated[
        tuple[Annotated[str, Field(min_length=1)], ...], Field(strict=False)
    ] = ()
    #: the local service's bearer token file (CONTRACT §6); None: <state_dir>/local-service.token
    local_service_token_file: _Path | None = None
    #: the kiosk application's group, meant to read the token file (CONTRACT §6)
    local_service_group: Annotated[str, Field(min_length=1, max_length=64)] | None = None

    @property
    def update_repository(self) -> str:
        """The TUF repository's base URL (``update_url``, or derived from the broker)."""
        if self.update_url is not None:
            return self.update_url
        host = f"[{self.broker.host}]" if ":" in self.broker.host else self.broker.host
        return f"http://{host}:8000/tuf/"

    @model_validator(mode="after")
    def _tls_needs_mqtts(self) -> Self:
        if self.tls is not None and not self.broker.tls:
            raise ValueError("a [tls] section needs an mqtts:// broker URL")
        return self

    @field_validator("required_devices")
    @classmethod
    def _required_devices_exist(
        cls, required: tuple[str, ...], info: ValidationInfo
    ) -> tuple[str, ...]:
        if "devices" not in info.data:
            return required  # the devices are wrong already; that is the error to report
        slots = {device.slot for device in info.data["devices"]}
        for slot in required:
            if slot not in slots:
                raise ValueError(
                    f"{slot!r} is not a device of this station "
                    f"(devices: {', '.join(sorted(slots)) or 'none'})"
                )
        return required


def load_agent_config(path: str | Path) -> AgentConfig:
    """Read and validate an agent TOML file.

    Raises:
        ConfigError: unreadable file, bad TOML, or a missing, unknown or wrong key.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(one_line(f"{path}: cannot read: {err.strerror or err}")) from err
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(one_line(f"{path}: not valid TOML: {err}")) from err
    return agent_config_from_dict(data, source=str(path))


def agent_config_from_dict(data: Mapping[str, Any], *, source: str = "config") -> AgentConfig:
    """Validate a parsed configuration (see :func:`load_agent_config`).

    Raises:
        ConfigError: a missing, unknown or wrong key, named with ``source``.
    """
    prepared, slots = _with_profile_devices(data, source)

    def rename(loc: Loc) -> Loc:
        # validation sees the devices as a list; the file has them as tables named by slot
        if len(loc) >= 2 and loc[0] == "devices" and isinstance(loc[1], int):
            rest = loc[2:] if loc[2:] != ("slot",) else ()
            return ("devices", slots[loc[1]], *rest)
        return loc

    try:
        return AgentConfig.model_validate(prepared)
    except ValidationError as err:
        raise ConfigError(explain(err, source=source, model=AgentConfig, rename=rename)) from err


def _with_profile_devices(data: Mapping[str, Any], source: str) -> tuple[dict[str, Any], list[str]]:
    """``data`` with ``devices`` as a list: the station profile's slots (when it is a shipped
    profile) overridden per slot by the file's ``[devices.SLOT]`` tables; and the slots in
    that order. Without ``required_devices``, the profile's needs are the default."""
    prepared = dict(data)
    tables = data.get("devices", {})
    if not isinstance(tables, Mapping):
        raise ConfigError(one_line(f"{source}: devices: must be [devices.SLOT] tables"))
    specs: dict[str, dict[str, Any]] = {}
    profile_name = data.get("profile")
    if isinstance(profile_name, str) and data.get("use_profile_devices", True) is True:
        try:
            station = load_station_profile(profile_name)
        except ProfileError:
            station = None  # a profile this agent does not ship: devices come from the file
        if station is not None:
            for entry in station.slots:
                table = entry.as_device_config()
                specs[entry.slot] = {
                    **{k: v for k, v in table.items() if k in DeviceConfig.model_fields},
                    "profile": entry.profile.name,
                }
            prepared.setdefault("required_devices", station.needs)
    for slot, table in tables.items():
        if not isinstance(table, Mapping):
            raise ConfigError(one_line(f"{source}: devices.{slot}: must be a table"))
        if "slot" in table:
            raise ConfigError(
                one_line(
                    f"{source}: devices.{slot}.slot: unknown key (the slot is the table's name)"
                )
            )
        specs[str(slot)] = {**specs.get(str(slot), {}), **table}
    prepared["devices"] = [{**spec, "slot": slot} for slot, spec in specs.items()]
    return prepared, list(specs)
