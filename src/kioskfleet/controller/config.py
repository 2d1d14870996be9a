"""Controller settings: defaults, then ``--config FILE`` (TOML), then ``KIOSKFLEET_*``
environment variables, then what a command gives explicitly (CONTRACT §2).

:class:`Settings` is a pydantic-settings model. Every field is also an environment variable,
``KIOSKFLEET_`` + its name in capitals (``KIOSKFLEET_DB_URL``, ``KIOSKFLEET_OFFLINE_ALERT_AFTER``,
``KIOSKFLEET_BOOTSTRAP_TOKEN``, …); a later section (``[alerts]``) is one more field holding its
own model, with defaults, its keys reached as ``KIOSKFLEET_ALERTS__KEY``. Unknown keys in the
file are refused. Building ``Settings(...)`` directly reads nothing but its arguments (tests,
the demo); :func:`load_settings` reads the file and the environment.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings import SettingsError as SourceError

from kioskfleet.controller.alerts.config import AlertsSettings
from kioskfleet.controller.notify.config import ReceiversSettings
from kioskfleet.controller.people import Role
from kioskfleet.mqttclient import TlsSettings
from kioskfleet.protocol.broker_url import BrokerUrl, broker_url_value, parse_broker_url
from kioskfleet.protocol.explain import Loc, explain, one_line

ENV_PREFIX: Final = "KIOSKFLEET_"
NESTED_DELIMITER: Final = "__"


#: the districts of Wuxi's fleet, as its stations name them (PRODUCT.md)
WUXI_DISTRICTS: Final[tuple[str, ...]] = (
    "Liangxi",
    "Xishan",
    "Huishan",
    "Binhu",
    "Xinwu",
    "Jiangyin",
    "Yixing",
    "Economic Development Zone",
)


class SettingsError(ValueError):
    """Unusable settings; one line naming the file or variable, the key and what it allows."""


_Seconds = Annotated[float, Field(gt=0, le=7 * 86400)]


class AlertsSection(AlertsSettings):
    """The ``[alerts]`` section: the rules (:class:`AlertsSettings`) and, under
    ``[alerts.receivers]``, where notifications go."""

    receivers: ReceiversSettings = ReceiversSettings()


class TufSettings(BaseModel):
    """The ``[tuf]`` section: the signed update repository the controller hosts under
    ``/tuf/`` (created beforehand with ``kioskfleet keys init-repo``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the repository folder (``metadata/``, ``targets/``)
    dir: Path
    #: the folder of the online keys (snapshot, timestamp, release); never served
    online_keys: Path
    #: passphrase of the online key files, if they are encrypted
    key_passphrase: SecretStr | None = None
    #: sign releases uploaded without signed metadata with the online release key (the demo
    #: does; a deployment may insist on release managers' own keys)
    online_release: bool = False
    #: seconds between checks whether timestamp and snapshot need re-signing
    resign_interval: Annotated[float, Field(gt=0, le=86400)] = 300.0
    #: how long a timestamp signature is valid (seconds); renewed at half of it
    timestamp_lifetime: Annotated[float, Field(ge=600, le=30 * 86400)] = 86400.0
    #: how long a snapshot signature is valid (seconds); renewed at half of it
    snapshot_lifetime: Annotated[float, Field(ge=600, le=365 * 86400)] = 7 * 86400.0


class _Files(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FleetCaSettings(_Files):
    """The ``[fleet_ca]`` section: the online intermediate that signs kiosk certificates
    (``kioskfleet fleet-ca``; docs/kiosk-identity.md). Without it the controller enrols nobody."""

    #: the fleet CA's certificate and key (PEM)
    cert: Path
    key: Path
    #: the offline root's certificate: what kiosks are told to trust for the broker
    root: Path
    #: a kiosk certificate's life in days (renewed after two thirds of it)
    validity_days: Annotated[float, Field(gt=0, le=825)] = 90.0
    #: where the controller writes the revocation list for the broker's ``crlfile``
    crl: Path | None = None


class BrokerAclSettings(_Files):
    """The ``[broker_acl]`` section: the Mosquitto ``acl_file`` the controller writes, and how
    the broker is told to reload it (SIGHUP to the pid in ``pid_file``, or ``reload_command``,
    e.g. ``["sudo", "systemctl", "reload", "mosquitto"]``)."""

    file: Path
    pid_file: Path | None = None
    reload_command: Annotated[list[str], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one_way_to_reload(self) -> Self:
        if self.pid_file is not None and self.reload_command is not None:
            raise ValueError("give pid_file or reload_command, not both")
        return self


class WebSettings(BaseModel):
    """The ``[web]`` section: console logins (docs/login.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: ``auto``: the session cookie is ``Secure`` when the request came over https (the
    #: controller's own TLS, or a trusted proxy's ``X-Forwarded-Proto``); ``true``: always (a
    #: TLS proxy in front that speaks plain http to the controller); ``false``: never (the
    #: demo on plain-http loopback)
    cookie_secure: Literal["auto", "true", "false"] = "auto"
    #: a session unused this long (seconds) is over
    session_idle: Annotated[float, Field(ge=60, le=7 * 86400)] = 3600.0
    #: a session is over this long (seconds) after its login, however busy
    session_max: Annotated[float, Field(ge=60, le=30 * 86400)] = 12 * 3600.0

    @model_validator(mode="after")
    def _idle_within_max(self) -> Self:
        if self.session_idle > self.session_max:
            raise ValueError("session_idle must not exceed session_max")
        return self


class OidcSettings(BaseModel):
    """The ``[oidc]`` section: logins through an OpenID Connect identity provider (the
    authorization code flow with PKCE; docs/login.md). A person's role and districts come
    from one claim (``groups_claim``), mapped by ``roles`` and ``districts``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the provider's issuer URL (``{issuer}/.well-known/openid-configuration`` is read)
    issuer: Annotated[str, Field(pattern=r"^https?://")]
    client_id: Annotated[str, Field(min_length=1, max_length=500)]
    client_secret: SecretStr | None = None
    #: where the provider sends the browser back: this controller's ``/login/oidc/callback``
    #: as the browser reaches it (behind a proxy: the public URL)
    redirect_url: Annotated[str, Field(pattern=r"^https?://")]
    scopes: tuple[str, ...] = ("openid", "profile")
    #: the claim that names the person (their account's name); ``sub`` when absent
    name_claim: str = "preferred_username"
    #: the claim listing the person's groups (a list of strings, or one string)
    groups_claim: str = "groups"
    #: group → role (``operator``, ``technician``, ``release_manager``, ``admin``); a person
    #: in several mapped groups gets the first of admin, release_manager, technician, operator
    roles: dict[str, Role] = Field(default_factory=dict)
    #: group → district a technician acts for (names as stations report them)
    districts: dict[str, str] = Field(default_factory=dict)
    #: seconds of clock difference tolerated on an id_token's ``exp`` / ``iat``
    leeway: Annotated[float, Field(ge=0, le=600)] = 60.0

    @field_validator("scopes")
    @classmethod
    def _openid_scope(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if "openid" not in value:
            raise ValueError("must include 'openid'")
        return value


class Settings(BaseSettings):
    """Everything the controller needs (CONTRACT §2 ``kioskfleet controller``)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        extra="forbid",
        frozen=True,
    )

    #: SQLAlchemy URL of the database
    db_url: Annotated[
        str,
        Field(
            pattern=r"^[a-z][a-z0-9+]*://",
            json_schema_extra={"allowed": "an SQLAlchemy URL, e.g. sqlite:///kioskfleet.db"},
        ),
    ] = "sqlite:///kioskfleet.db"
    #: the broker: ``mqtt://host:port``, ``mqtts://…``, ``?version=3.1.1|5``
    mqtt_url: Annotated[str, Field(json_schema_extra={"allowed": "an mqtt:// or mqtts:// URL"})] = (
        "mqtt://127.0.0.1:1883"
    )
    #: the ``[tls]`` section: CA, client certificate and key for an ``mqtts://`` broker
    #: (``KIOSKFLEET_TLS__CA``, ``…__CERT``, ``…__KEY``)
    tls: TlsSettings | None = None
    #: where the HTTP API listens: ``host:port``
    listen: Annotated[str, Field(json_schema_extra={"allowed": "'host:port'"})] = "127.0.0.1:8000"
    #: districts the metrics export (with zeros) before any of their stations reports; a
    #: district a station names is exported too, listed here or not
    districts: tuple[Annotated[str, Field(min_length=1, max_length=64)], ...] = WUXI_DISTRICTS
    #: seconds a station stays offline (or silent) before its alert opens (CONTRACT §2)
    offline_alert_after: Annotated[float, Field(ge=0, le=7 * 86400)] = 120.0
    #: the ``[alerts]`` section: rules, thresholds, sites, flapping, routing, receivers
    alerts: AlertsSection = AlertsSection()
    #: MQTT client id; stable, because the broker keeps this session's queue while we restart
    client_id: Annotated[str, Field(min_length=1, max_length=128)] = "kioskfleet-controller"
    #: seconds the broker keeps our session (and queues for us) while we are away
    session_expiry: Annotated[int, Field(ge=0, le=2**32 - 1)] = 7 * 24 * 3600
    #: largest number of messages stored in one database transaction (each commit is an
    #: fsync: larger batches make a backlog drain faster)
    batch_size: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    #: how often confirmations go out to stations (seconds)
    ack_interval: _Seconds = 1.0
    #: how often silent stations are looked for (seconds)
    sweep_interval: _Seconds = 1.0
    #: raw telemetry is kept this many days, then folded into hourly aggregates
    retention_days: Annotated[float, Field(gt=0, le=36500)] = 30.0
    #: how often retention runs (seconds)
    retention_interval: _Seconds = 3600.0
    #: the ingest writer owns its process: freeze start-up objects out of the cyclic garbage
    #: collector and collect young objects less often (see ``writer.tune_gc``)
    tune_gc: bool = True
    #: where the ingest writer (decode, validate, store) runs: ``process`` (its own process,
    #: so ingest uses a second core) or ``thread`` (inside the controller's process)
    writer: Literal["process", "thread"] = "process"
    #: a string that is a valid admin API token (CONTRACT §6), so that scripts and a first
    #: admin can start (docs/people.md)
    bootstrap_token: SecretStr | None = None
    #: what callers without credentials may do: nothing (the default) or read, as an operator
    #: (a wall screen; the demo grants it). Writes always need an identified person.
    anonymous_role: Literal["operator"] | None = None
    #: a bearer token ``/metrics`` requires from its scraper (none: the metrics are open)
    metrics_token: SecretStr | None = None
    #: the ``[tuf]`` section: the update repository served under ``/tuf/`` (none: not served)
    tuf: TufSettings | None = None
    #: the ``[fleet_ca]`` section: the CA that enrols kiosks
    fleet_ca: FleetCaSettings | None = None
    #: the ``[broker_acl]`` section: the broker's ACL file, rewritten when a station is revoked
    broker_acl: BrokerAclSettings | None = None
    #: the ``[web]`` section: console sessions and their cookie
    web: WebSettings = WebSettings()
    #: the ``[oidc]`` section: logins through an OpenID Connect provider (none: local only)
    oidc: OidcSettings | None = None

    @field_validator("mqtt_url")
    @classmethod
    def _a_broker_url(cls, value: str) -> str:
        broker_url_value(value)
        return value

    @model_validator(mode="after")
    def _tls_needs_mqtts(self) -> Self:
        if self.tls is not None and not self.broker.tls:
            raise ValueError("a [tls] section needs an mqtts:// mqtt_url")
        return self

    @field_validator("listen")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        _, colon, port = value.rpartition(":")
        if not colon or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be 'host:port' with a port from 1 to 65535")
        return value

    @field_validator("bootstrap_token", "metrics_token", mode="before")
    @classmethod
    def _a_usable_token(cls, value: Any) -> Any:
        # it travels in an Authorization header and grants admin rights: long enough not to be
        # guessed, nothing a header cannot carry
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(text, str) and not (
            16 <= len(text) <= 512 and all("!" <= char <= "~" for char in text)
        ):
            raise ValueError("must be 16 to 512 printable ASCII characters without spaces")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the arguments: :func:`load_settings` chooses the file and the environment, so
        that building ``Settings(...)`` in a test or the demo reads nothing else."""
        return (init_settings,)

    @property
    def broker(self) -> BrokerUrl:
        """The parsed broker URL."""
        return parse_broker_url(self.mqtt_url)

    @property
    def host_port(self) -> tuple[str, int]:
        """``listen`` split into host and port."""
        host, _, port = self.listen.rpartition(":")
        return host or "127.0.0.1", int(port)


class _Environment(EnvSettingsSource):
    """``KIOSKFLEET_*`` variables from a given mapping rather than ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # the hook pydantic-settings' own dotenv source overrides to read another mapping
        return {key.lower(): value for key, value in self._environ.items()}


def load_settings(
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    overrides_from: str | Mapping[str, str] = "arguments",
) -> Settings:
    """Build settings: defaults < the TOML file < the environment < ``overrides``.

    Args:
        config_file: a TOML file of settings (``--config``).
        env: the environment (``os.environ`` when None).
        overrides: values a command sets itself (the demo's flags); they win.
        overrides_from: how errors name where ``overrides`` came from: one name, or one per
            key (``{"mqtt_url": "--broker"}``; a key left out is named ``arguments``).

    Raises:
        SettingsError: unreadable file, bad TOML, an unknown key, or a wrong value; the one
            line names the file or variable and the key.
    """
    file_values: dict[str, Any] = {}
    if config_file is not None:
        try:
            text = Path(config_file).read_text(encoding="utf-8")
        except OSError as err:
            raise SettingsError(
                one_line(f"{config_file}: cannot read: {err.strerror or err}")
            ) from err
        try:
            file_values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise SettingsError(one_line(f"{config_file}: not valid TOML: {err}")) from err
    try:
        env_values = _Environment(Settings, os.environ if env is None else env)()
    except SourceError as err:  # a nested section's variable that is not valid JSON
        raise SettingsError(one_line(f"environment: {err}")) from err
    given = dict(overrides or {})
    values = _merge(_merge(file_values, env_values), given)

    def source(loc: Loc) -> str:
        if _holds(given, loc):
            if isinstance(overrides_from, str):
                return overrides_from
            return overrides_from.get(str(loc[0]), "arguments")
        if _holds(env_values, loc):
            names = [str(part).upper() for part in loc if isinstance(part, str)]
            return f"environment variable {ENV_PREFIX}{NESTED_DELIMITER.join(names)}"
        return str(config_file) if config_file is not None else "settings"

    try:
        return Settings(**values)
    except ValidationError as err:
        raise SettingsError(explain(err, source=source, model=Settings)) from err


def _merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update``, section by section (a variable for one key of a
    section does not replace the file's whole section)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _holds(values: Mapping[str, Any], loc: Loc) -> bool:
    """Whether ``values`` has a value at ``loc`` (or at its section)."""
    current: Any = values
    for part in loc:
        if not isinstance(current, Mapping) or part not in current:
            return False
        current = current[part]
    return bool(loc)
