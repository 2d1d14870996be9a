"""What the HTTP API returns (CONTRACT §4): one ``…Public`` model per entity, so ``/openapi.json``
describes every response.

These are plain pydantic models, not SQLModel: the API builds them from rows it selected itself,
never from table objects, and a SQLModel instance costs ~5 µs to validate against ~0.9 µs for
pydantic (measured on a 2,000-item station list, `bench/api_responses.py`). Each is validated
once, where crud builds it; FastAPI then only checks the type and serializes it to JSON in Rust.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, PlainSerializer, field_validator

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


class AlertPublic(Public):
    """An alert as CONTRACT §4 lists it (the alerts issue adds the rest)."""

    id: int
    state: AlertState
    severity: Severity
    #: a fault code, ``offline``, ``silent``, ``site_offline``, …
    condition: str
    district: str | None
    site: str | None
    #: null for a site incident, which names its ``stations`` instead
    station: str | None
    device: str | None
    opened_at: AwareDatetime
    resolved_at: AwareDatetime | None = None
    resolution: Resolution | None = None
    stations: list[str] | None = None


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
