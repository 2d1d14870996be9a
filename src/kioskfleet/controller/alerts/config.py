"""The controller's ``[alerts]`` section: which conditions alert, how badly, for whom.

Every rule has a default, so an empty section (or none) gives a technician what they would
expect. A district, a site type, or a district's sites of one type can change severities
and thresholds; the most specific override wins (district + site type > district > site
type > the defaults), key by key. Wired in later as one field of the controller's
``Settings`` (``alerts: AlertsSettings = AlertsSettings()``), its keys then reached as
``KIOSKFLEET_ALERTS__KEY``; ``offline_alert_after`` stays the top-level setting it is today and
is handed to :meth:`AlertsSettings.policy`.

Example::

    [alerts.severities]
    cover_open = "critical"          # a fault code, paper_low, cashbox_high, offline, …
    [[alerts.overrides]]
    district = "binhu"
    site_type = "subway_station"
    severities = { paper_low = "warning" }
    host = { temperature_c = { warning = 65 } }
    [alerts.routing.teams]
    binhu = ["binhu-technicians", "wuxi-second-line", "vendor-hotline"]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Final, Literal, Self, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from kioskfleet.protocol.devices import DEVICE_KINDS, DeviceKind
from kioskfleet.protocol.stations import SiteType

Severity = Literal["critical", "warning", "info"]
SEVERITIES: Final[tuple[Severity, ...]] = get_args(Severity)
#: a severity, or ``off``: the condition raises no alert
Level = Literal["critical", "warning", "info", "off"]
#: higher is worse
SEVERITY_RANK: Final[Mapping[str, int]] = {"info": 0, "warning": 1, "critical": 2}

_Seconds = Annotated[float, Field(ge=0, le=7 * 86400)]
_Name = Annotated[str, Field(min_length=1, max_length=128)]

#: Default severity of every condition a device or a station raises. Critical: the kiosk
#: cannot do its job (print a certificate, read an ID card) or money or a citizen's card is
#: at stake, so someone must go now; warning: it still serves (another way to pay, a fault
#: that clears itself) or someone on site can fix it at the next round; info: plan a refill.
DEFAULT_SEVERITIES: Final[Mapping[str, Level]] = {
    # printer: without it no certificate or receipt leaves the kiosk
    "paper_out": "critical",
    "paper_jam": "critical",
    "cutter_error": "critical",
    "unrecoverable_error": "critical",
    # staff close a cover at the next round; the printer recovers from these by itself
    "cover_open": "warning",
    "recoverable_error": "warning",
    # cash: a jammed note is a citizen's money held by the kiosk; a missing cashbox is cash
    # security. A full cashbox or an open note path stops cash only: citizens can still pay
    # by card or mobile payment.
    "note_jam": "critical",
    "cashbox_missing": "critical",
    "cashbox_full": "warning",
    "note_path_open": "warning",
    "hardware_fault": "warning",
    "fraud_attempt": "critical",
    # card readers: a jammed card is a citizen's card kept by the kiosk; without its SAM the
    # ID reader cannot verify an ID card at all; a read error is usually the card
    "card_jammed": "critical",
    "sam_fault": "critical",
    "read_error": "warning",
    # a device in an error state that names no fault
    "hardware_error": "warning",
    "user_error": "warning",
    # supplies: plan the refill or the emptying
    "paper_low": "info",
    "cashbox_high": "info",
    # the station itself (after ``offline_alert_after``)
    "offline": "critical",
    "silent": "critical",
}
#: Fault codes that never alert as faults. The printer's ``offline`` fault is ESC/POS's
#: "offline" bit, set alongside cover open / paper out, which alert themselves; the word is
#: also the station condition ``offline``, whose severity ``severities`` holds.
QUIET_FAULTS: Final = frozenset({"offline"})

#: A device that does not answer (``offline``) or cannot be opened (``no_device``): a printer
#: or the ID reader missing stops service; without a cash or coin acceptor or a bank-card
#: reader citizens still pay another way.
DEFAULT_DEVICE_OFFLINE: Final[Mapping[DeviceKind, Level]] = {
    "printer": "critical",
    "id_reader": "critical",
    "cash_acceptor": "warning",
    "coin_acceptor": "warning",
    "card_reader": "warning",
}


#: seconds within which an alert must be acknowledged before it escalates (None: never)
DEFAULT_ACK_WITHIN: Final[Mapping[Severity, float | None]] = {
    "critical": 15 * 60.0,
    "warning": 2 * 3600.0,
    "info": None,
}


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Threshold(_Section):
    """A host metric's levels: at or above ``warning`` a warning, at or above ``critical`` a
    critical alert; None switches that level off."""

    warning: float | None = None
    critical: float | None = None

    @model_validator(mode="after")
    def _critical_above_warning(self) -> Self:
        if self.warning is not None and self.critical is not None and self.critical < self.warning:
            raise ValueError("critical must not be below warning")
        return self

    def severity(self, value: float) -> Severity | None:
        """The severity ``value`` reaches, or None under both levels."""
        if self.critical is not None and value >= self.critical:
            return "critical"
        if self.warning is not None and value >= self.warning:
            return "warning"
        return None


class HostThresholds(_Section):
    """Thresholds on the host metrics of telemetry (``protocol.metrics``)."""

    #: use of the agent's data disk: a full disk stops the outbox, hence reporting
    disk_percent: Threshold = Threshold(warning=85.0, critical=95.0)
    memory_percent: Threshold = Threshold(warning=90.0, critical=97.0)
    #: hottest sensor; fanless kiosk PCs in a subway hall throttle from about 85 °C
    temperature_c: Threshold = Threshold(warning=75.0, critical=85.0)
    #: seconds the kiosk's clock is off the controller's, either way (its absolute value is
    #: compared): TUF checks expiry against the kiosk's clock (issue 11: 5 minutes)
    clock_skew_s: Threshold = Threshold(warning=300.0)
    #: 1 while the kiosk's last refresh of the update metadata found it expired: it can
    #: install nothing until the controller re-signs or its clock is set right
    update_metadata_expired: Threshold = Threshold(warning=1.0)


class HostOverride(_Section):
    """Thresholds an override changes: a metric or a level left out keeps what the less
    specific rules say (``{ warning = 65 }`` keeps the critical level)."""

    disk_percent: Threshold | None = None
    memory_percent: Threshold | None = None
    temperature_c: Threshold | None = None
    clock_skew_s: Threshold | None = None
    update_metadata_expired: Threshold | None = None


#: host metric key → alert condition
HOST_CONDITIONS: Final[Mapping[str, str]] = {
    "disk_percent": "disk",
    "memory_percent": "memory",
    "temperature_c": "temperature",
    "clock_skew_s": "clock_skew",
    "update_metadata_expired": "update_metadata_expired",
}
#: host metrics that are off either way: their absolute value meets the threshold
BOTH_WAYS: Final[frozenset[str]] = frozenset({"clock_skew_s"})


class Override(_Section):
    """Severities and thresholds for one district, one site type, or both at once."""

    district: _Name | None = None
    site_type: SiteType | None = None
    severities: dict[str, Level] = Field(default_factory=dict)
    device_offline: dict[DeviceKind, Level] = Field(default_factory=dict)
    host: HostOverride = HostOverride()

    @model_validator(mode="after")
    def _says_where(self) -> Self:
        if self.district is None and self.site_type is None:
            raise ValueError("an override needs a district, a site_type or both")
        return self


class Flapping(_Section):
    """``cycles`` open/clear cycles of one condition within ``window`` seconds make one
    ``flapping`` alert, held until the condition has not changed for ``quiet`` seconds."""

    cycles: Annotated[int, Field(ge=2, le=100)] = 4
    window: _Seconds = 600.0
    quiet: _Seconds = 600.0


class SiteGrouping(_Section):
    """Kiosks of one (district, site) that go offline or silent together make one
    ``site_offline`` incident: ``min_stations`` of them, or every kiosk of a site of at least
    ``whole_site_min``, within a sliding ``window`` (shortened to ``offline_alert_after`` when
    that is smaller, so that the decision is ready when the first kiosk's own alert is due)."""

    enabled: bool = True
    min_stations: Annotated[int, Field(ge=2, le=10_000)] = 3
    whole_site_min: Annotated[int, Field(ge=2, le=10_000)] = 2
    window: _Seconds = 30.0
    severity: Severity = "critical"


class Routing(_Section):
    """Who is told: per district an ordered list of teams, the first its own technicians, the
    next ones whom an alert escalates to when nobody acknowledges it within its severity's
    ``ack_within`` (seconds; None: never escalates)."""

    teams: dict[_Name, list[_Name]] = Field(default_factory=dict)
    #: teams of a district ``teams`` does not list
    default_teams: list[_Name] = Field(default_factory=list)
    ack_within: dict[Severity, Annotated[float, Field(gt=0)] | None] = Field(
        default_factory=lambda: dict(DEFAULT_ACK_WITHIN)
    )

    @field_validator("ack_within")
    @classmethod
    def _every_severity(cls, value: dict[Severity, float | None]) -> dict[Severity, float | None]:
        # a severity left out keeps its default rather than never escalating by accident
        defaults: dict[Severity, float | None] = {
            "critical": 900.0,
            "warning": 7200.0,
            "info": None,
        }
        return {**defaults, **value}


class AlertsSettings(_Section):
    """The ``[alerts]`` section of the controller's configuration."""

    #: condition → severity or ``off``: fault codes (CONTRACT §5, and any code a driver adds),
    #: ``hardware_error`` / ``user_error`` (an error state that names no fault),
    #: ``paper_low``, ``cashbox_high``, ``offline``, ``silent``; given keys update the defaults
    severities: dict[str, Level] = Field(default_factory=lambda: dict(DEFAULT_SEVERITIES))
    #: severity of a fault code neither the defaults nor ``severities`` name
    unknown_fault: Level = "warning"
    #: device kind → severity of a device ``offline`` or ``no_device``
    device_offline: dict[DeviceKind, Level] = Field(
        default_factory=lambda: dict(DEFAULT_DEVICE_OFFLINE)
    )
    host: HostThresholds = HostThresholds()
    overrides: list[Override] = Field(default_factory=list, max_length=10_000)
    flapping: Flapping = Flapping()
    sites: SiteGrouping = SiteGrouping()
    routing: Routing = Routing()

    @field_validator("severities")
    @classmethod
    def _over_the_defaults(cls, value: dict[str, Level]) -> dict[str, Level]:
        return {**DEFAULT_SEVERITIES, **value}

    @field_validator("device_offline")
    @classmethod
    def _every_kind(cls, value: dict[DeviceKind, Level]) -> dict[DeviceKind, Level]:
        return {**DEFAULT_DEVICE_OFFLINE, **value}

    @model_validator(mode="after")
    def _one_override_per_place(self) -> Self:
        seen: set[tuple[str | None, str | None]] = set()
        for override in self.overrides:
            where: tuple[str | None, str | None] = (override.district, override.site_type)
            if where in seen:
                raise ValueError(f"two overrides for district={where[0]!r}, site_type={where[1]!r}")
            seen.add(where)
        # a partial threshold is only whole once merged: check every place now, not at the
        # first telemetry of a station there
        policy = self.policy(offline_alert_after=0.0)
        for place in seen:
            policy.rules_for(*place)
        return self

    def policy(self, *, offline_alert_after: float) -> AlertPolicy:
        """The rules as evaluated, with the top-level ``offline_alert_after`` (seconds)."""
        return AlertPolicy(self, offline_alert_after)


@dataclass(frozen=True, slots=True)
class HostRule:
    """One host metric's rule, resolved for a place."""

    metric: str
    condition: str
    threshold: Threshold

    def measure(self, value: float) -> float:
        """What meets the threshold: the value, or its size for a metric off either way."""
        return abs(value) if self.metric in BOTH_WAYS else value

    def severity(self, value: float) -> Severity | None:
        """The severity a reported ``value`` reaches, or None."""
        return self.threshold.severity(self.measure(value))


@dataclass(frozen=True, slots=True)
class ResolvedRules:
    """The severities and thresholds that apply to the stations of one place."""

    severities: Mapping[str, Level]
    unknown_fault: Level
    device_offline: Mapping[str, Level]
    host: tuple[HostRule, ...]

    def fault(self, code: str) -> Level:
        """Severity of a fault code (``off``: no alert)."""
        if code in QUIET_FAULTS:
            return "off"
        return self.severities.get(code, self.unknown_fault)

    def condition(self, name: str) -> Level:
        """Severity of a named condition (``paper_low``, ``offline``, …)."""
        return self.severities.get(name, "off")


class AlertPolicy:
    """:class:`AlertsSettings` compiled for evaluation: the rules of each place are merged
    once and cached (the writer asks for them for every station of every batch)."""

    def __init__(self, settings: AlertsSettings, offline_alert_after: float) -> None:
        self.settings = settings
        #: seconds a station stays offline or silent before its own alert opens
        self.offline_alert_after = offline_alert_after
        #: the grouping window, never longer than ``offline_alert_after`` (see SiteGrouping)
        self.site_window = min(settings.sites.window, offline_alert_after)
        self._overrides: dict[tuple[str | None, str | None], Override] = {
            (o.district, o.site_type): o for o in settings.overrides
        }
        self._cache: dict[tuple[str | None, str | None], ResolvedRules] = {}

    def rules_for(self, district: str | None, site_type: str | None) -> ResolvedRules:
        """The rules of a station in ``district`` at a site of ``site_type``."""
        key = (district, site_type)
        rules = self._cache.get(key)
        if rules is None:
            rules = self._cache[key] = self._resolve(district, site_type)
        return rules

    def _resolve(self, district: str | None, site_type: str | None) -> ResolvedRules:
        s = self.settings
        severities: dict[str, Level] = dict(s.severities)
        device_offline: dict[str, Level] = dict(s.device_offline.items())
        host = {metric: getattr(s.host, metric) for metric in HOST_CONDITIONS}
        # least specific first, so that the most specific is applied last and wins
        layers: list[tuple[str | None, str | None]] = []
        if site_type is not None:
            layers.append((None, site_type))
        if district is not None:
            layers.append((district, None))
            if site_type is not None:
                layers.append((district, site_type))
        for where in layers:
            override = self._overrides.get(where)
            if override is None:
                continue
            severities.update(override.severities)
            device_offline.update(override.device_offline.items())
            for metric in HOST_CONDITIONS:
                threshold: Threshold | None = getattr(override.host, metric)
                if threshold is not None:
                    levels = host[metric].model_dump()
                    levels.update(threshold.model_dump(include=threshold.model_fields_set))
                    try:
                        host[metric] = Threshold(**levels)
                    except ValidationError as err:
                        raise ValueError(
                            f"{metric} for district={district!r}, site_type={site_type!r}: "
                            f"critical {levels['critical']} is below warning {levels['warning']}"
                        ) from err
        return ResolvedRules(
            severities=severities,
            unknown_fault=s.unknown_fault,
            device_offline=device_offline,
            host=tuple(
                HostRule(metric, HOST_CONDITIONS[metric], host[metric])
                for metric in HOST_CONDITIONS
            ),
        )


__all__ = [
    "DEFAULT_DEVICE_OFFLINE",
    "DEFAULT_SEVERITIES",
    "DEVICE_KINDS",
    "SEVERITIES",
    "SEVERITY_RANK",
    "AlertPolicy",
    "AlertsSettings",
    "Flapping",
    "HostThresholds",
    "Level",
    "Override",
    "ResolvedRules",
    "Routing",
    "Severity",
    "SiteGrouping",
    "Threshold",
]
