"""Agent configuration (``kioskfleet agent --config FILE``, TOML)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kioskfleet.protocol.broker_url import BrokerUrl, parse_broker_url
from kioskfleet.protocol.topics import is_valid_station_id


class ConfigError(ValueError):
    """The agent configuration is unusable; the message names the file and the field."""


@dataclass(frozen=True)
class DeviceConfig:
    """One device slot: which driver on which port."""

    slot: str
    driver: str
    port: str
    baudrate: int | None = None
    address: int | None = None
    #: the firmware profile (``firmware_profiles/models``) whose settings and quirks apply
    profile: str | None = None
    timeout: float = 0.5
    retries: int = 2


@dataclass(frozen=True)
class AgentConfig:
    """Everything a kiosk agent needs to know about itself."""

    station: str
    district: str
    site: str
    site_type: str
    profile: str
    broker: BrokerUrl
    telemetry_interval: float = 10.0
    state_dir: Path = Path("/var/lib/kioskfleet")
    keepalive: int = 30
    maintenance_window: str | None = None
    update_root: Path | None = None
    catalogue_version: str | None = None
    devices: tuple[DeviceConfig, ...] = field(default_factory=tuple)
    required_devices: tuple[str, ...] = ()
    #: ``host:port`` of the local device service for the kiosk's own application (loopback
    #: only); None switches it off
    local_service: str | None = "127.0.0.1:8765"
    #: browser origins allowed to call the local service (the kiosk app's own page)
    local_allowed_origins: tuple[str, ...] = ()
    #: the local service's bearer token file (CONTRACT §6); None: <state_dir>/local-service.token
    local_service_token_file: Path | None = None
    #: the group that may read a newly created token file (the kiosk application's)
    local_service_group: str | None = None


def load_agent_config(path: str | Path) -> AgentConfig:
    """Read and validate an agent TOML file.

    Raises:
        ConfigError: unreadable file, missing or wrong fields.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{path}: {err}") from err
    return agent_config_from_dict(data, source=str(path))


def agent_config_from_dict(data: dict[str, Any], *, source: str = "config") -> AgentConfig:
    """Validate a parsed configuration (see :func:`load_agent_config`)."""

    def need(key: str, kind: type) -> Any:
        if key not in data:
            raise ConfigError(f"{source}: missing {key!r}")
        value = data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind):
            raise ConfigError(f"{source}: {key!r} must be a {kind.__name__}")
        return value

    station = need("station", str)
    if not is_valid_station_id(station):
        raise ConfigError(f"{source}: station id {station!r} must match [a-z0-9][a-z0-9-]{{2,63}}")
    broker_url = need("broker", str)
    try:
        broker = parse_broker_url(broker_url)
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from err
    interval = float(data.get("telemetry_interval", 10.0))
    if not 0.1 <= interval <= 86400:
        raise ConfigError(f"{source}: telemetry_interval must be between 0.1 and 86400 s")
    devices, required = _devices(data, source)
    return AgentConfig(
        station=station,
        district=need("district", str),
        site=need("site", str),
        site_type=need("site_type", str),
        profile=need("profile", str),
        broker=broker,
        telemetry_interval=interval,
        state_dir=Path(data.get("state_dir", "/var/lib/kioskfleet")),
        keepalive=int(data.get("keepalive", 30)),
        maintenance_window=data.get("maintenance_window"),
        update_root=Path(data["update_root"]) if "update_root" in data else None,
        catalogue_version=data.get("catalogue_version"),
        devices=tuple(devices),
        required_devices=required,
        local_service=_local_service(data, source),
        local_allowed_origins=tuple(str(o) for o in data.get("local_allowed_origins", ())),
        local_service_token_file=(
            Path(data["local_service_token_file"]) if "local_service_token_file" in data else None
        ),
        local_service_group=data.get("local_service_group"),
    )


def _local_service(data: dict[str, Any], source: str) -> str | None:
    value = data.get("local_service", "127.0.0.1:8765")
    if value is False or value == "":
        return None
    if not isinstance(value, str) or not value.rpartition(":")[2].isdigit():
        raise ConfigError(f"{source}: local_service must be 'host:port' (loopback) or false")
    return value


def _devices(data: dict[str, Any], source: str) -> tuple[list[DeviceConfig], tuple[str, ...]]:
    """The station profile's slots (when it is a shipped profile), overridden per slot by the
    file's ``[devices.SLOT]`` tables; and the slots the station needs."""
    from kioskfleet.firmware_profiles import ProfileError, load_station_profile

    specs: dict[str, dict[str, Any]] = {}
    required: tuple[str, ...] = tuple(data.get("required_devices", ()))
    profile_name = data.get("profile")
    if isinstance(profile_name, str) and data.get("use_profile_devices", True):
        try:
            station = load_station_profile(profile_name)
        except ProfileError:
            station = None  # a profile this agent does not ship: devices come from the file
        if station is not None:
            for entry in station.slots:
                specs[entry.slot] = {**entry.as_device_config(), "profile": entry.profile.name}
            if "required_devices" not in data:
                required = station.needs
    for slot, spec in dict(data.get("devices", {})).items():
        if not isinstance(spec, dict):
            raise ConfigError(f"{source}: devices.{slot} must be a table")
        specs[slot] = {**specs.get(slot, {}), **spec}
    devices = []
    for slot, spec in specs.items():
        if "driver" not in spec or "port" not in spec:
            raise ConfigError(f"{source}: devices.{slot} needs driver and port")
        try:
            devices.append(
                DeviceConfig(
                    slot=slot,
                    driver=str(spec["driver"]),
                    port=str(spec["port"]),
                    baudrate=None if spec.get("baudrate") is None else int(spec["baudrate"]),
                    address=None if spec.get("address") is None else int(spec["address"]),
                    profile=None if spec.get("profile") is None else str(spec["profile"]),
                    timeout=float(spec.get("timeout", 0.5)),
                    retries=int(spec.get("retries", 2)),
                )
            )
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{source}: devices.{slot}: {err}") from err
    return devices, required
