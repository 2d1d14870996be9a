"""What the agent publishes, built from the protocol models of CONTRACT §3.

Every function returns a validated :mod:`kioskfleet.protocol.messages` model — the same classes
the controller decodes with — and :func:`~kioskfleet.protocol.messages.encode` turns it into
the bytes on the wire. Validating our own data costs less than skipping it: pydantic's
``model_construct`` is a Python loop, validation runs in pydantic-core (a telemetry message of
five devices builds and encodes in about 8 µs, half of what ``json.dumps`` of hand-made dicts
took), and a bug is caught here instead of being rejected by the controller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from kioskfleet import __version__
from kioskfleet.agent.outbox import DroppedRange
from kioskfleet.protocol.devices import DeviceInfo, DeviceStatus
from kioskfleet.protocol.messages import (
    PROTOCOL_VERSION,
    Event,
    EventsMessage,
    Reply,
    StateMessage,
    TelemetryMessage,
    Versions,
)

#: the longest ``error`` a reply may carry (CONTRACT §3)
MAX_ERROR_CHARS = 4096

ReplyStatus = Literal["ok", "error", "expired", "rejected"]


@dataclass(frozen=True)
class StationIdentity:
    """What a station says about itself in its birth (CONTRACT §3 ``state``)."""

    station: str
    district: str
    site: str
    site_type: str
    profile: str
    telemetry_interval: float = 10.0
    agent_version: str = __version__
    catalogue_version: str | None = None
    #: device slots the station needs to serve; empty means every configured device
    required_devices: tuple[str, ...] = ()
    #: ``HH:MM-HH:MM`` (Asia/Shanghai) when updates may restart it; None: any time
    maintenance_window: str | None = None


class Stamp(NamedTuple):
    """The envelope of one sequenced message, as the outbox stamps it."""

    station: str
    session: int
    seq: int
    #: UTC Unix seconds
    ts: float
    #: ranges this message declares dropped
    dropped: Sequence[DroppedRange] = ()


def for_telemetry(status: DeviceStatus) -> DeviceStatus:
    """In telemetry and births a device's ``events`` stay empty (CONTRACT §5)."""
    return status.model_copy(update={"events": []}) if status.events else status


def birth(
    identity: StationIdentity,
    *,
    session: int,
    ts: float,
    keepalive: int,
    devices: Mapping[str, DeviceStatus],
    in_service: bool = True,
) -> StateMessage:
    """The retained birth published at every connect: ``online`` and the full description
    (``in_service``: false while a technician has taken the station out of service)."""
    return StateMessage(
        v=PROTOCOL_VERSION,
        station=identity.station,
        session=session,
        seq=0,
        ts=ts,
        online=True,
        district=identity.district,
        site=identity.site,
        site_type=identity.site_type,
        profile=identity.profile,
        telemetry_interval=identity.telemetry_interval,
        keepalive=keepalive,
        versions=Versions(agent=identity.agent_version, catalogue=identity.catalogue_version),
        devices={slot: for_telemetry(status) for slot, status in devices.items()},
        required_devices=list(identity.required_devices) or None,
        in_service=in_service,
        maintenance_window=identity.maintenance_window,
    )


def goodbye(station: str, *, session: int, ts: float) -> StateMessage:
    """The last will, and what a clean shutdown publishes before DISCONNECT."""
    return StateMessage(
        v=PROTOCOL_VERSION, station=station, session=session, seq=0, ts=ts, online=False
    )


def telemetry(
    stamp: Stamp,
    *,
    host: Mapping[str, float | int | None],
    devices: Mapping[str, DeviceStatus],
    counters: Mapping[str, int],
    known_info: Mapping[str, DeviceInfo] | None = None,
) -> TelemetryMessage:
    """Periodic host metrics, every device's status and counters, lean (:func:`lean_status`):
    a device's ``info`` is left out when ``known_info`` (what the last birth or
    ``device_status`` event carried, per slot) already says it."""
    known = known_info or {}
    return TelemetryMessage(
        **_envelope(stamp),
        host=dict(host),
        devices={
            slot: lean_status(status, with_info=known.get(slot) != status.info)
            for slot, status in devices.items()
        },
        counters=dict(counters),
    )


def lean_status(status: DeviceStatus, *, with_info: bool) -> DeviceStatus:
    """A device's status as telemetry carries it: what the contract requires (``device``,
    ``driver``, ``state``, ``faults``), ``supplies`` and ``media`` when the device has any,
    ``info`` only ``with_info``, never ``events`` (they travel in ``events`` messages). What is
    left out is left unset, so :func:`~kioskfleet.protocol.messages.encode` leaves it off the
    wire: the controller reads an absent ``info`` as unchanged (CONTRACT §3)."""
    fields: dict[str, Any] = {
        "device": status.device,
        "driver": status.driver,
        "state": status.state,
        "faults": status.faults,
    }
    if status.supplies:
        fields["supplies"] = status.supplies
    if status.media is not None:
        fields["media"] = status.media
    if with_info:
        fields["info"] = status.info
    return DeviceStatus.model_validate(fields)


def device_change(slot: str, status: DeviceStatus) -> list[Event]:
    """A device's ``device_status`` event followed by the events it reported (credits, cards),
    each naming the device by its slot."""
    changed = Event(type="device_status", device=slot, status=for_telemetry(status))
    return [changed, *(Event.model_validate({**event, "device": slot}) for event in status.events)]


def events(stamp: Stamp, items: Sequence[Event | Mapping[str, Any]]) -> EventsMessage:
    """An ``events`` message; plain mappings are validated into :class:`Event`."""
    return EventsMessage(
        **_envelope(stamp),
        events=[item if isinstance(item, Event) else Event.model_validate(item) for item in items],
    )


def reply(
    stamp: Stamp,
    *,
    command_id: str,
    status: ReplyStatus,
    result: Any = None,
    error: str | None = None,
) -> Reply:
    """A command's outcome: ``result`` when ``ok``, ``error`` otherwise."""
    if status == "ok":
        return Reply(**_envelope(stamp), id=command_id, status=status, result=result)
    return Reply(
        **_envelope(stamp),
        id=command_id,
        status=status,
        error=(error or status)[:MAX_ERROR_CHARS],
    )


def _envelope(stamp: Stamp) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "station": stamp.station,
        "session": stamp.session,
        "seq": stamp.seq,
        "ts": stamp.ts,
    }
    if stamp.dropped:  # left out otherwise: encode() drops fields a message was built without
        envelope["dropped"] = [
            {"session": d.session, "from_seq": d.from_seq, "to_seq": d.to_seq, "kind": d.kind}
            for d in stamp.dropped
        ]
    return envelope
