"""Controller settings: defaults, then ``--config FILE`` (TOML), then environment variables."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from kioskfleet.protocol.broker_url import BrokerUrl, parse_broker_url


class SettingsError(ValueError):
    """Unusable settings; the message names the source and the field."""


@dataclass(frozen=True)
class Settings:
    """Everything the controller needs (CONTRACT §2 ``kioskfleet controller``)."""

    db_url: str = "sqlite:///kioskfleet.db"
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    listen: str = "127.0.0.1:8000"
    offline_alert_after: float = 120.0
    #: MQTT client id; stable, because the broker keeps this session's queue while we restart
    client_id: str = "kioskfleet-controller"
    #: seconds the broker keeps our session (and queues for us) while we are away
    session_expiry: int = 7 * 24 * 3600
    #: largest number of messages stored in one database transaction (each commit is an
    #: fsync: larger batches make a backlog drain faster)
    batch_size: int = 1000
    #: how often confirmations go out to stations (seconds)
    ack_interval: float = 1.0
    #: how often silent stations are looked for (seconds)
    sweep_interval: float = 1.0
    #: raw telemetry is kept this many days, then folded into hourly aggregates
    retention_days: float = 30.0
    #: how often retention runs (seconds)
    retention_interval: float = 3600.0
    #: the ingest writer owns its process: freeze start-up objects out of the cyclic garbage
    #: collector and collect young objects less often (see ``writer.tune_gc``)
    tune_gc: bool = True
    #: where the ingest writer (decode, validate, store) runs: ``process`` (its own process,
    #: so ingest uses a second core) or ``thread`` (inside the controller's process)
    writer: str = "process"

    @property
    def broker(self) -> BrokerUrl:
        """The parsed broker URL."""
        return parse_broker_url(self.mqtt_url)

    @property
    def host_port(self) -> tuple[str, int]:
        """``listen`` split into host and port."""
        host, _, port = self.listen.rpartition(":")
        return host or "127.0.0.1", int(port)


_ENV = {
    "KIOSKFLEET_DB_URL": "db_url",
    "KIOSKFLEET_MQTT_URL": "mqtt_url",
    "KIOSKFLEET_LISTEN": "listen",
    "KIOSKFLEET_OFFLINE_ALERT_AFTER": "offline_alert_after",
    "KIOSKFLEET_RETENTION_DAYS": "retention_days",
}


def load_settings(
    config_file: str | Path | None = None, env: dict[str, str] | None = None
) -> Settings:
    """Build settings from a TOML file and the environment (environment wins).

    Raises:
        SettingsError: unreadable file, unknown key, or a value of the wrong type.
    """
    env = dict(os.environ) if env is None else env
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            data = tomllib.loads(Path(config_file).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise SettingsError(f"{config_file}: {err}") from err
        known = {f.name for f in fields(Settings)}
        for key, value in data.items():
            if key not in known:
                raise SettingsError(f"{config_file}: unknown setting {key!r}")
            values[key] = value
    for var, name in _ENV.items():
        if var in env:
            values[name] = env[var]
    settings = Settings()
    for f in fields(Settings):
        if f.name in values:
            settings = replace(settings, **{f.name: _coerce(f.name, values[f.name], f.type)})
    if settings.writer not in ("process", "thread"):
        raise SettingsError(
            f"setting 'writer' must be 'process' or 'thread', not {settings.writer!r}"
        )
    try:
        settings.broker  # noqa: B018  (validates the URL early, with a clear message)
        settings.host_port  # noqa: B018
    except ValueError as err:
        raise SettingsError(str(err)) from err
    return settings


def _coerce(name: str, value: Any, kind: Any) -> Any:
    if kind in ("bool", bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise SettingsError(f"setting {name!r}: {value!r} is not true or false")
    try:
        if kind in ("float", float):
            return float(value)
        if kind in ("int", int):
            return int(value)
    except (TypeError, ValueError) as err:
        raise SettingsError(f"setting {name!r}: {value!r} is not a number") from err
    if not isinstance(value, str):
        raise SettingsError(f"setting {name!r} must be a string")
    return value
