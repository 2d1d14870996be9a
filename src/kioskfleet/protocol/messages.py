"""Message models of CONTRACT §3 and the one function that decodes what agents send.

Every agent → controller payload carries the envelope ``v``, ``station``, ``session``, ``seq``,
``ts``. (``station``, ``session``, ``seq``) identifies a telemetry, events or reply message;
state messages always have ``seq`` 0 and are idempotent by (``session``, ``online``).
Unknown extra keys are tolerated (the contract may grow); wrong types are not.
"""

import json
import math
from typing import Annotated, Any, Final, Literal, Required

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from kioskfleet.protocol.devices import (
    DeviceKind,
    DeviceState,
    DeviceStatus,
    DriverName,
    Media,
    SlotName,
)
from kioskfleet.protocol.errors import ProtocolError
from kioskfleet.protocol.stations import MaintenanceWindowText, StationId

PROTOCOL_VERSION: Final = 1
MAX_PAYLOAD_BYTES: Final = 64 * 1024

Label = Annotated[str, Field(min_length=1, max_length=128)]
NonNegative = Annotated[int, Field(ge=0, lt=2**63)]

#: NaN and infinities are not JSON (RFC 8259) and no database JSON column takes them
_STRICT = ConfigDict(strict=True, frozen=True, extra="ignore", allow_inf_nan=False)


class DroppedRange(BaseModel):
    """Messages an agent queued, then had to drop (its outbox bound), declared so they count."""

    model_config = _STRICT

    session: NonNegative
    from_seq: Annotated[int, Field(ge=1, lt=2**63)]
    to_seq: Annotated[int, Field(ge=1, lt=2**63)]
    #: what was dropped; ``lost`` when the station no longer has them at all
    kind: Literal["telemetry", "events", "reply", "lost"] = "telemetry"


class Envelope(BaseModel):
    """Fields every agent → controller payload carries."""

    model_config = _STRICT

    v: Literal[1]
    station: StationId
    session: NonNegative
    seq: NonNegative
    ts: Annotated[float, Field(ge=0, allow_inf_nan=False)]


class Versions(BaseModel):
    """Software the station runs."""

    model_config = _STRICT

    agent: Label
    catalogue: Label | None = None


class StateMessage(Envelope):
    """Birth (``online`` true, full description) or death (will / clean shutdown)."""

    online: bool
    district: Label | None = None
    site: Label | None = None
    site_type: Label | None = None
    profile: Label | None = None
    telemetry_interval: Annotated[float, Field(gt=0, le=86400)] | None = None
    #: seconds: the station is seen offline within 1.5 × keepalive + 2 s after it dies
    keepalive: Annotated[int, Field(gt=0, le=65535)] | None = None
    versions: Versions | None = None
    devices: dict[SlotName, DeviceStatus] = Field(default_factory=dict, max_length=32)
    #: slots the station needs to serve; absent means every device it reports
    required_devices: list[SlotName] | None = Field(default=None, max_length=32)
    #: false while a technician has taken the station out of service (``cmd/out_of_service``);
    #: a birth without it (an older agent) means in service. Not a status: status keeps its
    #: four values.
    in_service: bool = True
    #: when the station lets a software update restart it (``HH:MM-HH:MM``, Asia/Shanghai);
    #: absent: none configured, any time (issue 11: "sent in the birth")
    maintenance_window: MaintenanceWindowText | None = None

    @model_validator(mode="after")
    def _birth_is_complete(self) -> "StateMessage":
        if self.seq != 0:
            raise ValueError("state messages have seq 0")
        if self.online:
            missing = [
                name
                for name in ("district", "site", "site_type", "profile", "telemetry_interval")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(f"a birth needs {', '.join(missing)}")
        return self


class Sequenced(Envelope):
    """A telemetry, events or reply message: stored once per (station, session, seq)."""

    seq: Annotated[int, Field(ge=1, lt=2**63)]
    dropped: list[DroppedRange] = Field(default_factory=list, max_length=64)


HostValue = float | int | None


class TelemetryMessage(Sequenced):
    """Periodic host metrics, every device's status and counters."""

    host: dict[Annotated[str, Field(max_length=64)], HostValue] = Field(
        default_factory=dict, max_length=64
    )
    devices: dict[SlotName, DeviceStatus] = Field(default_factory=dict, max_length=32)
    counters: dict[Annotated[str, Field(max_length=64)], NonNegative] = Field(
        default_factory=dict, max_length=64
    )


# -- telemetry as the controller stores it ------------------------------------------------------
# The same rules as TelemetryMessage, validated into plain dicts instead of models: the
# controller's writer decodes every telemetry message and stores host, devices and counters as
# JSON again, and pydantic builds and dumps a dict of DeviceStatus models at twice the cost of
# a dict (docs/decisions.md 32). tests/test_protocol.py holds the two to the same verdicts.
_STRICT_DICT = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)
_Text128 = Annotated[str, Field(max_length=128)]


class _DeviceInfoDict(TypedDict, total=False):
    __pydantic_config__ = _STRICT_DICT  # type: ignore[misc]

    model: _Text128 | None
    serial: _Text128 | None
    firmware: _Text128 | None


class DeviceStatusDict(TypedDict, total=False):
    """A :class:`~kioskfleet.protocol.devices.DeviceStatus` as a plain dict: the keys sent."""

    __pydantic_config__ = _STRICT_DICT  # type: ignore[misc]

    device: Required[DeviceKind]
    driver: Required[DriverName]
    state: Required[DeviceState]
    faults: Required[Annotated[list[str], Field(max_length=64)]]
    info: _DeviceInfoDict
    supplies: Annotated[dict[str, str], Field(max_length=16)]
    media: Media | None
    events: Annotated[list[dict[str, Any]], Field(max_length=256)]


class _TelemetryDict(TypedDict, total=False):
    __pydantic_config__ = _STRICT_DICT  # type: ignore[misc]

    v: Required[Literal[1]]
    station: Required[StationId]
    session: Required[NonNegative]
    seq: Required[Annotated[int, Field(ge=1, lt=2**63)]]
    ts: Required[Annotated[float, Field(ge=0, allow_inf_nan=False)]]
    dropped: Annotated[list[DroppedRange], Field(max_length=64)]
    host: Annotated[dict[Annotated[str, Field(max_length=64)], HostValue], Field(max_length=64)]
    devices: Annotated[dict[SlotName, DeviceStatusDict], Field(max_length=32)]
    counters: Annotated[
        dict[Annotated[str, Field(max_length=64)], NonNegative], Field(max_length=64)
    ]


_TELEMETRY_DICT: Final = TypeAdapter(_TelemetryDict)


class TelemetryRecord:
    """A validated telemetry message with its parts as plain data (what the store writes):
    the attributes of :class:`TelemetryMessage`, each device a dict of the keys it was sent
    with (an absent ``info`` is absent: unchanged, CONTRACT §3)."""

    __slots__ = ("counters", "devices", "dropped", "host", "seq", "session", "station", "ts")

    def __init__(self, fields: _TelemetryDict) -> None:
        self.station: str = fields["station"]
        self.session: int = fields["session"]
        self.seq: int = fields["seq"]
        self.ts: float = fields["ts"]
        self.dropped: list[DroppedRange] = fields.get("dropped") or []
        self.host: dict[str, HostValue] = fields.get("host") or {}
        self.devices: dict[str, DeviceStatusDict] = fields.get("devices") or {}
        self.counters: dict[str, int] = fields.get("counters") or {}


class Event(BaseModel):
    """One event; ``device_status`` events are checked against the device vocabulary."""

    model_config = ConfigDict(strict=True, frozen=True, extra="allow", allow_inf_nan=False)

    type: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    device: SlotName | None = None
    status: DeviceStatus | None = None

    @model_validator(mode="after")
    def _device_status_complete(self) -> "Event":
        if self.type == "device_status" and (self.device is None or self.status is None):
            raise ValueError("a device_status event needs device and status")
        return self


class EventsMessage(Sequenced):
    """Device status changes, device events, transactions, update progress."""

    events: list[Event] = Field(min_length=1, max_length=1000)


class Reply(Sequenced):
    """A command's outcome."""

    id: Annotated[str, Field(min_length=1, max_length=128)]
    status: Literal["ok", "error", "expired", "rejected"]
    result: Any = None
    error: Annotated[str, Field(max_length=4096)] | None = None


class Command(BaseModel):
    """Controller → agent command on ``cmd/{name}``."""

    model_config = _STRICT

    id: Annotated[str, Field(min_length=1, max_length=128)]
    expires_at: Annotated[float, Field(allow_inf_nan=False)]
    args: dict[str, Any] = Field(default_factory=dict)


class Ack(BaseModel):
    """Controller → agent: every message of ``session`` up to ``seq`` is stored (or declared)."""

    model_config = _STRICT

    session: NonNegative
    seq: NonNegative


class ControllerState(BaseModel):
    """The controller's retained presence."""

    model_config = _STRICT

    online: bool
    ts: float


AgentMessage = StateMessage | TelemetryMessage | EventsMessage | Reply

_MODELS: Final[dict[str, type[StateMessage | TelemetryMessage | EventsMessage | Reply]]] = {
    "state": StateMessage,
    "telemetry": TelemetryMessage,
    "events": EventsMessage,
    "reply": Reply,
}


def decode_agent_message(kind: str, station: str, payload: bytes) -> AgentMessage:
    """Decode and validate what ``station`` published on its ``kind`` topic.

    Raises:
        ProtocolError: with reason ``too_large``, ``not_json``, ``version``, ``schema``,
            ``station_mismatch`` or ``topic`` (a kind agents do not publish).
    """
    model = _MODELS.get(kind)
    if model is None:
        raise ProtocolError("topic", f"agents do not publish on {kind!r}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(
            "too_large", f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}"
        )
    try:
        message = model.model_validate_json(payload)
    except ValidationError as err:
        raise _explain(err) from None
    if _NUL in payload:
        _reject_nul(payload)
    for value in _free_form(message):
        _reject_non_finite(value)
    if message.station != station:
        raise ProtocolError(
            "station_mismatch",
            f"payload names station {message.station!r} on the topic of {station!r}",
        )
    return message


def decode_telemetry_record(station: str, payload: bytes) -> TelemetryRecord:
    """Decode and validate a telemetry message as :func:`decode_agent_message` does, into a
    :class:`TelemetryRecord` (plain dicts, not models): the same payloads pass, the same
    are refused, with the same reasons.

    Raises:
        ProtocolError: with reason ``too_large``, ``not_json``, ``version``, ``schema`` or
            ``station_mismatch``.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(
            "too_large", f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}"
        )
    try:
        fields = _TELEMETRY_DICT.validate_json(payload)
    except ValidationError as err:
        raise _explain(err) from None
    if _NUL in payload:
        _reject_nul(payload)
    record = TelemetryRecord(fields)
    for device in record.devices.values():
        if "events" in device:
            _reject_non_finite(device["events"])
    if record.station != station:
        raise ProtocolError(
            "station_mismatch",
            f"payload names station {record.station!r} on the topic of {station!r}",
        )
    return record


#: what a non-finite number looks like in JSON text (``NaN``, ``Infinity``, or an exponent large
#: enough to overflow a double); strings may contain these too, so a match is only a suspicion
#: how JSON writes a NUL character (raw control characters are not valid JSON)
_NUL: Final = rb"\u0000"


def _free_form(message: AgentMessage) -> list[Any]:
    """The parts of ``message`` whose numbers no model field checks."""
    if isinstance(message, Reply):
        return [message.result]
    if isinstance(message, EventsMessage):
        found: list[Any] = []
        for event in message.events:
            found.append(event.model_extra)
            if event.status is not None and event.status.events:
                found.append(event.status.events)
        return found
    return [d.events for d in message.devices.values() if d.events]


def _reject_non_finite(value: Any) -> None:
    """Refuse NaN and infinities anywhere in ``value``: a free-form part of a payload may hold
    one (``1e400`` parses as infinity), the database would refuse the batch holding it again
    and again, and ingest would stop."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                raise ProtocolError("schema", "payload holds a number JSON does not allow")
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _reject_nul(payload: bytes) -> None:
    """Refuse NUL characters in strings: PostgreSQL text cannot hold them, so one would make
    the database refuse its batch again and again. (``\\u0000`` in the payload may also be an
    escaped backslash followed by the letters; only a real NUL is refused.)"""
    stack = [json.loads(payload)]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if chr(0) in item:
                raise ProtocolError("schema", "payload holds a NUL character in a string")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _explain(err: ValidationError) -> ProtocolError:
    errors = err.errors(include_url=False, include_input=False)
    for item in errors:
        if item["type"] == "json_invalid":
            return ProtocolError("not_json", f"payload is not valid JSON: {item['msg']}")
    for item in errors:
        if item["loc"] == ("v",) and item["type"] == "literal_error":
            return ProtocolError(
                "version", f"unsupported protocol version (this side speaks v{PROTOCOL_VERSION})"
            )
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "payload"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ProtocolError("schema", f"{where}: {first['msg']}{more}")


def encode(message: BaseModel) -> bytes:
    """Serialise a message to its compact JSON wire form (UTF-8).

    Left out: fields that are None, an event's null keys too (on this wire null and absent mean
    the same), and top-level fields the message was built without — a will carries no
    ``devices``, a message that declares nothing dropped no ``dropped``. In telemetry, a
    device's fields it was built without are left out too (lean telemetry: an absent ``info``
    means unchanged, CONTRACT §3). Values inside ``host``, ``counters`` and ``result`` keep
    their nulls.
    """
    if isinstance(message, TelemetryMessage):
        return message.model_dump_json(exclude_none=True, exclude_unset=True).encode()
    unset = type(message).model_fields.keys() - message.model_fields_set
    return message.model_dump_json(exclude_none=True, exclude=unset or None).encode()
