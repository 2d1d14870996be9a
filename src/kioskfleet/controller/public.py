"""What the HTTP API returns (CONTRACT §4): one ``…Public`` model per entity, so ``/openapi.json``
describes every response.

These are plain pydantic models, not SQLModel: the API builds them from rows it selected itself,
never from table objects, and a SQLModel instance costs ~5 µs to validate against ~0.9 µs for
pydantic (measured on a 2,000-item station list, `bench/api_responses.py`). Each is validated
once, where crud builds it; FastAPI then only checks the type and serializes it to JSON in Rust.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any, Final, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

from kioskfleet.controller.alerts.suppress import Matcher
from kioskfleet.protocol.commands import CommandName, ReplyStatus
from kioskfleet.protocol.devices import DeviceState, DeviceStatus, SlotName
from kioskfleet.protocol.messages import HostValue
from kioskfleet.protocol.stations import StationStatus


class Public(BaseModel):
    """Base of the API's models: every key is always in the response, defaults included, so
    the documented schema says so (``required``)."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class StatusCounts(Public):
    """Stations by status; ``stations`` is the sum of the four."""

    stations: int
    online: int
    degraded: int
    silent: int
    offline: int


class Ingested(Public):
    """Distinct stored messages per topic, across restarts."""

    telemetry: int
    events: int


class FleetSummary(StatusCounts):
    """``GET /api/fleet/summary``: the whole fleet, and per district."""

    open_alerts: int
    ingested: Ingested
    rejected: int
    districts: dict[str, StatusCounts]


class StationVersions(Public):
    """Software a station runs (null until its birth says)."""

    agent: str | None
    catalogue: str | None


class StationPublic(Public):
    """A station as listed (``GET /api/stations`` items)."""

    id: str
    district: str | None
    site: str | None
    site_type: str | None
    profile: str | None
    status: StationStatus
    status_since: AwareDatetime
    last_seen: AwareDatetime | None
    versions: StationVersions
    telemetry_interval: float
    #: false while a technician has taken the station out of service; not a status
    in_service: bool


class StationList(Public):
    """One page of stations, and how many match the filters in all."""

    items: list[StationPublic]
    total: int


class StatusChange(Public):
    """One entry of a station's status history."""

    status: StationStatus
    reason: str
    session: int
    at: AwareDatetime


AlertState = Literal["open", "acknowledged", "resolved"]
Severity = Literal["critical", "warning", "info"]
Resolution = Literal["cleared", "by_person", "grouped", "flapping"]


class AlertDetails(BaseModel):
    """What failed and since when. ``summary`` and ``since`` are always there (null where a
    rule gave none); a rule's further facts (``state``, ``driver``, ``model``, a host metric's
    ``value`` and ``threshold``, a flapping alert's ``cycles``, …) follow as they were found,
    with times in ISO 8601 UTC like every time of the API."""

    model_config = ConfigDict(extra="allow", json_schema_serialization_defaults_required=True)

    #: one line: what failed, where
    summary: str | None
    #: since when the condition holds (for a site incident: when its first kiosk dropped)
    since: AwareDatetime | None


class AlertPublic(Public):
    """An alert as ``GET /api/alerts`` lists it (CONTRACT §4)."""

    id: str
    state: AlertState
    severity: Severity
    #: a fault code, ``offline``, ``silent``, ``site_offline``, ``flapping``, …
    condition: str
    #: the condition a ``flapping`` alert is about; null otherwise
    of: str | None
    district: str | None
    site: str | None
    #: null for a site incident, which names its ``stations`` instead
    station: str | None
    #: the device slot; null for the station itself, its host, or a site
    device: str | None
    #: a site incident's member stations; null for any other alert
    stations: list[str] | None
    opened_at: AwareDatetime
    acknowledged_at: AwareDatetime | None
    acknowledged_by: str | None
    resolved_at: AwareDatetime | None
    resolution: Resolution | None
    resolved_by: str | None
    #: ``maintenance:<station>`` or ``silence:<id>`` while no notification leaves for it
    suppressed_by: str | None
    #: the team it is routed to now (null: none configured, or not routed yet) and its
    #: escalation level (0: the district's own team)
    team: str | None
    level: int
    details: AlertDetails


class AlertList(Public):
    """``GET /api/alerts``: one page of alerts, newest first, and how many match."""

    items: list[AlertPublic]
    total: int


class AlertHistoryPublic(Public):
    """One transition of an alert."""

    at: AwareDatetime
    #: open, resolve, severity, flapping, join, rearm, acknowledge, suppression, escalate
    action: str
    #: a person, or null for the controller itself
    by: str | None
    note: str | None
    details: dict[str, Any]


class AlertDetail(AlertPublic):
    """``GET /api/alerts/{id}``: the alert and its history, oldest first."""

    history: list[AlertHistoryPublic]


_Person = Annotated[str, Field(min_length=1, max_length=200)]
_Note = Annotated[str, Field(max_length=2000)]


class AlertActionRequest(BaseModel):
    """``POST /api/alerts/{id}/ack`` and ``…/resolve``: why (optional). The person acting is
    the one the request is authenticated as; ``by`` (CONTRACT §4) is accepted and ignored."""

    model_config = ConfigDict(extra="forbid")

    by: _Person | None = Field(
        default=None, description="ignored: the authenticated person acts", deprecated=True
    )
    note: _Note | None = None


def _as_stored(devices: dict[str, DeviceStatus]) -> dict[str, dict[str, Any]]:
    return {slot: status.model_dump(exclude_unset=True) for slot, status in devices.items()}


#: slot → §5 status, each with exactly the keys the station reported (as it is stored), not the
#: model's defaults. The serializer is a lambda on purpose: without a return annotation pydantic
#: documents the field by its type (DeviceStatus), not as the serializer's ``dict[str, Any]``.
DevicesBySlot = Annotated[
    dict[SlotName, DeviceStatus], PlainSerializer(lambda devices: _as_stored(devices))
]


class StationDetail(StationPublic):
    """``GET /api/stations/{id}``: the list item plus devices, recent history, open alerts."""

    online: bool
    session: int
    last_telemetry_at: AwareDatetime | None
    registered_at: AwareDatetime
    devices: DevicesBySlot
    #: slots the station needs to serve; null means every device it reports
    required_devices: list[str] | None
    #: newest first
    history: list[StatusChange]
    alerts: list[AlertPublic]


class TelemetryPoint(Public):
    """One stored telemetry message, as a chart wants it."""

    #: when the controller stored it
    received_at: AwareDatetime
    #: when the station measured it (its own clock)
    ts: AwareDatetime
    #: host metric → value, as reported
    host: dict[str, HostValue]
    #: slot → the device's state (its full status is in ``GET /api/stations/{id}``)
    devices: dict[SlotName, DeviceState]


class StationTelemetry(Public):
    """``GET /api/stations/{id}/telemetry``: raw telemetry received in a window, oldest first;
    when more than ``limit`` match, the newest ``limit``. ``total`` counts all that match."""

    items: list[TelemetryPoint]
    total: int


class HourlyMetric(Public):
    """One host metric over an hour."""

    avg: float
    max: float
    #: samples that carried the metric
    n: int


class TelemetryHour(Public):
    """A station's telemetry of one hour, folded by retention (decision 13)."""

    #: start of the hour (UTC) of the messages' own ``ts``
    hour: AwareDatetime
    samples: int
    host: dict[str, HourlyMetric]
    #: slot → state → samples in that state (``unknown`` where a status had none)
    device_states: dict[SlotName, dict[str, int]]


class StationTelemetryHourly(Public):
    """``GET /api/stations/{id}/telemetry/hourly``: hourly aggregates, oldest first; when more
    than ``limit`` match, the newest ``limit``. ``total`` counts all that match."""

    items: list[TelemetryHour]
    total: int


class Health(Public):
    """``GET /healthz`` while the controller reaches its database and broker."""

    status: Literal["ok"] = "ok"


class Unhealthy(Public):
    """``GET /healthz`` (503) when it does not, and why."""

    status: Literal["unavailable"] = "unavailable"
    reason: str


class ErrorDetail(Public):
    """An error FastAPI raised (``HTTPException``), e.g. an unknown station."""

    detail: str


#: a command's time to live: at least a second, at most a week (CONTRACT §4)
TTL_MIN: Final = 1.0
TTL_MAX: Final = 7 * 24 * 3600.0
#: a command's ``args`` as JSON: far below the 64 KiB a message may have
ARGS_MAX_BYTES: Final = 16 * 1024


class CommandRequest(BaseModel):
    """``POST /api/stations/{id}/commands``: what to run, with what, for how long."""

    model_config = ConfigDict(extra="forbid")

    name: CommandName
    args: dict[str, Any] = Field(default_factory=dict)
    #: seconds the command may wait (for an offline station) and still run
    ttl_s: Annotated[float, Field(ge=TTL_MIN, le=TTL_MAX, allow_inf_nan=False)] = 300.0

    @field_validator("args")
    @classmethod
    def _small(cls, args: dict[str, Any]) -> dict[str, Any]:
        # allow_nan=False: NaN is not JSON, and no database column takes it
        size = len(json.dumps(args, allow_nan=False, separators=(",", ":")).encode())
        if size > ARGS_MAX_BYTES:
            raise ValueError(f"args take {size} bytes as JSON, at most {ARGS_MAX_BYTES}")
        return args


class CommandCreated(Public):
    """A command stored (and sent, if its station is online)."""

    id: str


#: ``pending``: stored, its station offline (sent at its next birth); ``sent``: handed to the
#: broker, no reply yet; ``ok`` / ``error``: the agent's answer (a ``rejected`` reply is an
#: ``error``); ``expired``: the agent said so, or no reply came before ``expires_at``
CommandState = Literal["pending", "sent", "ok", "error", "expired"]


class CommandReplyPublic(Public):
    """The agent's reply to a command, as it was stored."""

    status: ReplyStatus
    result: Any
    error: str | None
    #: when the agent answered (its clock)
    at: AwareDatetime
    received_at: AwareDatetime


class CommandPublic(Public):
    """``GET /api/stations/{id}/commands/{cid}``: a command and where it stands."""

    id: str
    station: str
    name: CommandName
    args: dict[str, Any]
    state: CommandState
    created_at: AwareDatetime
    expires_at: AwareDatetime
    sent_at: AwareDatetime | None
    created_by: str
    reply: CommandReplyPublic | None


class CommandList(Public):
    """A station's commands, newest first, and how many it has in all."""

    items: list[CommandPublic]
    total: int


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]")


def _iso_8601(value: Any) -> Any:
    # pydantic would take Unix seconds too; times here are what the API renders, ISO 8601
    # with a zone, and one way of writing them is enough
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _ISO_DATE.match(value):
        raise ValueError("must be an ISO 8601 time with its zone, e.g. 2026-11-30T08:00:00Z")
    return value


#: a time a client gives: ISO 8601 with its zone (``Z`` or ``+08:00``)
IsoTime = Annotated[AwareDatetime, BeforeValidator(_iso_8601)]

#: how long a silence may last (Alertmanager has no limit; a year catches a typo)
SILENCE_MAX_S: Final = 365 * 86400.0
#: how long a maintenance window may last
MAINTENANCE_MAX_S: Final = 30 * 86400.0
_Reason = Annotated[str, Field(min_length=1, max_length=500)]


def _one_end(end: object, duration: object, end_name: str) -> None:
    if (end is None) == (duration is None):
        raise ValueError(f"give exactly one of {end_name!r} and 'duration_s'")


class SilenceRequest(BaseModel):
    """``POST /api/silences``: alerts matching every matcher are recorded but not notified
    from ``starts_at`` (default now) until ``expires_at``, or for ``duration_s``."""

    model_config = ConfigDict(extra="forbid")

    matchers: Annotated[list[Matcher], Field(min_length=1, max_length=32)]
    author: _Person | None = Field(
        default=None, description="ignored: the authenticated person is the author", deprecated=True
    )
    reason: _Reason
    starts_at: IsoTime | None = None
    expires_at: IsoTime | None = None
    duration_s: Annotated[float, Field(gt=0, le=SILENCE_MAX_S, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _ends(self) -> Self:
        _one_end(self.expires_at, self.duration_s, "expires_at")
        if (
            self.starts_at is not None
            and self.expires_at is not None
            and self.expires_at <= self.starts_at
        ):
            raise ValueError("expires_at must be after starts_at")
        return self


SilenceState = Literal["active", "pending", "expired"]


class SilencePublic(Public):
    """A silence: ``active`` between ``starts_at`` and ``expires_at``, ``pending`` before,
    ``expired`` after (ending one early sets ``expires_at`` to then)."""

    id: str
    state: SilenceState
    matchers: list[Matcher]
    author: str
    reason: str
    starts_at: AwareDatetime
    expires_at: AwareDatetime
    created_at: AwareDatetime


class SilenceList(Public):
    """``GET /api/silences``: newest first, and how many match."""

    items: list[SilencePublic]
    total: int


class MaintenanceRequest(BaseModel):
    """``POST /api/stations/{id}/maintenance``: a technician on site from now until
    ``until`` (or for ``duration_s``): the station's alerts are recorded, not notified."""

    model_config = ConfigDict(extra="forbid")

    by: _Person | None = Field(
        default=None, description="ignored: the authenticated person acts", deprecated=True
    )
    reason: Annotated[str, Field(max_length=500)] = ""
    until: IsoTime | None = None
    duration_s: Annotated[float, Field(gt=0, le=MAINTENANCE_MAX_S, allow_inf_nan=False)] | None = (
        None
    )

    @model_validator(mode="after")
    def _ends(self) -> Self:
        _one_end(self.until, self.duration_s, "until")
        return self


class MaintenancePublic(Public):
    """A maintenance window of one station; ``active`` while ``starts_at`` ≤ now <
    ``until`` (ending one early sets ``until`` to then)."""

    id: str
    station: str
    active: bool
    by: str
    reason: str
    starts_at: AwareDatetime
    until: AwareDatetime
    created_at: AwareDatetime


class MaintenanceList(Public):
    """Maintenance windows, newest first, and how many match."""

    items: list[MaintenancePublic]
    total: int


class AuditPublic(Public):
    """One audit entry: who did what to what, when, from where, and how it ended."""

    id: int
    at: AwareDatetime
    #: who (free text until the security issue brings identities)
    actor: str
    #: the client's address, when known
    source: str | None
    #: e.g. ``command.create``, ``alert.ack``, ``silence.create``
    action: str
    #: what it was done to: a station, an alert, a silence id
    target: str
    details: dict[str, Any]
    #: e.g. ``accepted``, ``acknowledged``, ``conflict``
    outcome: str


class AuditList(Public):
    """``GET /api/audit``: newest first, and how many match."""

    items: list[AuditPublic]
    total: int


class Durations(Public):
    """Durations in seconds: how many, their mean, median and 90th percentile (nearest
    rank); null when there are none."""

    n: int
    mean_s: float | None
    median_s: float | None
    p90_s: float | None


class AlertFigures(Public):
    """Figures over the alerts opened in a period, for one district and severity (null:
    all of them)."""

    district: str | None
    severity: Severity | None
    #: alerts opened in the period
    alerts: int
    #: of those, acknowledged by a person (at any time up to now)
    acknowledged: int
    #: of those, repaired: resolved by a person or cleared (one closed as ``grouped`` or
    #: ``flapping`` went on in another alert and is neither repaired nor unresolved)
    resolved: int
    #: of those, still open or acknowledged now
    unresolved: int
    #: opening → acknowledgement, over the acknowledged ones
    time_to_acknowledge: Durations
    #: opening → resolution, over the repaired ones (``resolved``)
    time_to_resolve: Durations
    #: mean time to repair: the mean of ``time_to_resolve``
    mttr_s: float | None


class AlertStats(Public):
    """``GET /api/alerts/stats``: per (district, severity), and over all of them."""

    start: AwareDatetime = Field(serialization_alias="from")
    end: AwareDatetime = Field(serialization_alias="to")
    groups: list[AlertFigures]
    overall: AlertFigures


AvailabilityBy = Literal["station", "site", "district"]


class AvailabilityItem(Public):
    """Availability of one station, site or district: the share of its stations' time in
    the period spent ``online`` (connected, reporting, not degraded)."""

    district: str | None
    #: null when grouped by district
    site: str | None
    #: null unless grouped by station
    station: str | None
    #: stations counted
    stations: int
    #: station-seconds in the period (a station counts from its registration)
    period_s: float
    #: of those, station-seconds ``online``
    online_s: float
    #: ``online_s / period_s``; null when ``period_s`` is 0
    availability: float | None


class Availability(Public):
    """``GET /api/availability``: per station, site or district over a period."""

    start: AwareDatetime = Field(serialization_alias="from")
    end: AwareDatetime = Field(serialization_alias="to")
    by: AvailabilityBy
    items: list[AvailabilityItem]
    total: int


# -- kiosk identity (CONTRACT §6) ------------------------------------------------------------
class EnrolmentTokenRequest(BaseModel):
    """An admin asks for a one-time token that lets one station enrol."""

    model_config = ConfigDict(extra="forbid")

    station: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{2,63}$")]
    #: seconds the token stays valid (default 15 minutes, at most a week)
    ttl_s: Annotated[float, Field(gt=0, le=7 * 86400)] = 900.0


class EnrolmentTokenCreated(Public):
    """The token, shown this once (only its hash is stored)."""

    id: str
    token: str
    station: str
    expires_at: float


class RevokeRequest(BaseModel):
    """Why a station is revoked or decommissioned (for the audit log)."""

    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(max_length=500)] = ""


class RevocationPublic(Public):
    """What revoking did: the broker's rules reloaded, the station's connection closed."""

    station: str
    #: False when it was revoked already
    newly_revoked: bool
    #: null when this controller manages no broker ACL file
    broker_reloaded: bool | None
    #: null when it has no fleet CA or no TLS broker to take the connection over
    disconnected: bool | None
    seconds: float
