"""What the agent publishes round-trips through the controller's decoder; no broker needed.

Each message type is built as the agent builds it (``agent/payloads.py``, and through a real
:class:`StationAgent` and its outbox where the public API reaches), encoded, then decoded by
:func:`decode_agent_message` — the controller's one entry point — and compared.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import pytest

from kioskfleet.agent import payloads
from kioskfleet.agent.agent import StationAgent
from kioskfleet.agent.host import HostSampler
from kioskfleet.agent.outbox import DroppedRange, Entry, OutboxStore
from kioskfleet.agent.payloads import Stamp, StationIdentity
from kioskfleet.fleetsim.devices import SimulatedDevice
from kioskfleet.protocol import decode_agent_message, parse_topic
from kioskfleet.protocol.broker_url import parse_broker_url
from kioskfleet.protocol.devices import DeviceStatus
from kioskfleet.protocol.messages import (
    Ack,
    Command,
    ControllerState,
    EventsMessage,
    TelemetryMessage,
    encode,
)
from kioskfleet.protocol.topics import (
    CONTROLLER_STATE_TOPIC,
    ack_topic,
    cmd_topic,
    station_topic,
)

STATION = "wx-binhu-sub-03"
IDENTITY = StationIdentity(
    station=STATION,
    district="滨湖区",
    site="wx-binhu-sub",
    site_type="subway_station",
    profile="estation-gen2",
    telemetry_interval=15,
    catalogue_version="2025.11",
    required_devices=("printer", "cash_acceptor"),
    maintenance_window="23:30-04:00",
)
STAMP = Stamp(STATION, 1_764_000_000_000, 7, 1_764_000_000.25)


def devices() -> dict[str, DeviceStatus]:
    kinds = ("printer", "cash_acceptor", "coin_acceptor", "id_reader", "card_reader")
    out = {}
    for n, kind in enumerate(kinds):
        device = SimulatedDevice(kind, kind, serial=f"SN{n}", rng=random.Random(n))
        out[kind] = device.read()
    # one with a fault and events of its own, which births and telemetry leave out
    jammed = SimulatedDevice("printer_2", "printer", serial="SN9", rng=random.Random(9))
    jammed.break_now(2)
    out["printer_2"] = jammed.read().model_copy(
        update={"events": [{"type": "paper_low", "remaining_m": 3.5}]}
    )
    return out


def without_events(statuses: dict[str, DeviceStatus]) -> dict[str, DeviceStatus]:
    return {slot: s.model_copy(update={"events": []}) for slot, s in statuses.items()}


def roundtrip(kind: str, message: Any) -> Any:
    wire = encode(message)
    assert json.loads(wire)  # plain JSON
    decoded = decode_agent_message(kind, STATION, wire)
    assert type(decoded) is type(message)
    return decoded


def test_birth_roundtrips_with_the_full_description() -> None:
    statuses = devices()
    message = payloads.birth(
        IDENTITY, session=STAMP.session, ts=STAMP.ts, keepalive=30, devices=statuses
    )
    decoded = roundtrip("state", message)
    assert decoded == message
    assert decoded.online is True
    assert (decoded.district, decoded.site, decoded.site_type, decoded.profile) == (
        "滨湖区",
        "wx-binhu-sub",
        "subway_station",
        "estation-gen2",
    )
    assert decoded.telemetry_interval == 15.0 and decoded.keepalive == 30
    assert decoded.versions is not None and decoded.versions.catalogue == "2025.11"
    assert decoded.required_devices == ["printer", "cash_acceptor"]
    assert decoded.maintenance_window == "23:30-04:00"
    assert decoded.devices == without_events(statuses)  # events travel in `events` only
    assert (decoded.session, decoded.seq) == (STAMP.session, 0)


def test_will_and_goodbye_roundtrip_and_carry_only_the_envelope() -> None:
    message = payloads.goodbye(STATION, session=STAMP.session, ts=STAMP.ts)
    decoded = roundtrip("state", message)
    assert decoded == message and decoded.online is False
    assert json.loads(encode(message)) == {
        "v": 1,
        "station": STATION,
        "session": STAMP.session,
        "seq": 0,
        "ts": STAMP.ts,
        "online": False,
    }


def test_telemetry_roundtrips_with_nulls_in_host_and_declared_drops() -> None:
    statuses = devices()
    stamp = STAMP._replace(
        dropped=[DroppedRange(STAMP.session, 2, 4, "telemetry"), DroppedRange(9, 1, 1, "lost")]
    )
    host = {"cpu_percent": 12.5, "temperature_c": None, "uptime_s": 86400}
    message = payloads.telemetry(
        stamp, host=host, devices=statuses, counters={"commands": 2, "reconnects": 0}
    )
    decoded = roundtrip("telemetry", message)
    assert decoded == message
    assert decoded.host == host
    assert decoded.devices == without_events(statuses)
    assert [(d.session, d.from_seq, d.to_seq, d.kind) for d in decoded.dropped] == [
        (STAMP.session, 2, 4, "telemetry"),
        (9, 1, 1, "lost"),
    ]
    assert "dropped" not in json.loads(
        encode(payloads.telemetry(STAMP, host={}, devices={}, counters={}))
    )


def test_device_changes_and_transactions_roundtrip_as_events() -> None:
    status = devices()["printer_2"]
    changed = payloads.device_change("printer_2", status)
    transaction = {
        "type": "transaction",
        "kind": "cash_in",
        "phase": "ended",
        "total": 2000,
        "currency": "CNY",
    }
    message = payloads.events(STAMP, [*changed, transaction])
    decoded = roundtrip("events", message)
    assert decoded == message
    first, own, last = decoded.events
    assert (first.type, first.device) == ("device_status", "printer_2")
    assert first.status == status.model_copy(update={"events": []})
    assert (own.type, own.device, own.model_extra) == (
        "paper_low",
        "printer_2",
        {"remaining_m": 3.5},
    )
    assert last.model_extra == {
        "kind": "cash_in",
        "phase": "ended",
        "total": 2000,
        "currency": "CNY",
    }


@pytest.mark.parametrize(
    ("status", "result", "error"),
    [
        ("ok", {"resent": 3, "lost": 0, "note": None}, None),
        ("ok", None, None),
        ("error", None, "KeyError: 'session'"),
        ("expired", None, "the command expired before it arrived"),
        ("rejected", None, "this agent does not know command 'fly'"),
    ],
)
def test_replies_roundtrip(status: payloads.ReplyStatus, result: Any, error: str | None) -> None:
    message = payloads.reply(STAMP, command_id="c-42", status=status, result=result, error=error)
    decoded = roundtrip("reply", message)
    assert decoded == message
    assert (decoded.id, decoded.status, decoded.result, decoded.error) == (
        "c-42",
        status,
        result,
        error,
    )


def test_a_long_error_is_cut_to_what_the_contract_allows() -> None:
    message = payloads.reply(STAMP, command_id="c", status="error", error="x" * 10_000)
    assert roundtrip("reply", message).error == "x" * payloads.MAX_ERROR_CHARS


def test_what_the_controller_sends_parses_on_the_agent_side() -> None:
    for model in (
        Ack(session=STAMP.session, seq=41),
        Command(id="c-1", expires_at=1_764_000_060.0, args={"session": 1, "from_seq": 2}),
        ControllerState(online=True, ts=1_764_000_000.0),
    ):
        assert type(model).model_validate_json(encode(model)) == model
    assert parse_topic(ack_topic(STATION)) == (STATION, "ack", None)
    assert parse_topic(cmd_topic(STATION, "restart_device")) == (STATION, "cmd", "restart_device")
    assert CONTROLLER_STATE_TOPIC == "fleet/v1/controller/state"
    assert parse_topic(station_topic(STATION, "telemetry")) == (STATION, "telemetry", None)


# -- through a real agent and its outbox (no broker: nothing connects) ----------------------


def make_agent(tmp_path: Path) -> tuple[StationAgent, list[SimulatedDevice]]:
    store = OutboxStore(":memory:")
    sources = [
        SimulatedDevice(kind, kind, serial=f"SN{n}", rng=random.Random(n))
        for n, kind in enumerate(("printer", "cash_acceptor"))
    ]
    agent = StationAgent(
        IDENTITY,
        broker=parse_broker_url("mqtt://127.0.0.1:1"),
        outbox=store.outbox(STATION),
        sources=list(sources),
        host=HostSampler(disk_path=str(tmp_path)),
    )
    agent.coordinator.poll_once()
    return agent, sources


def published(agent: StationAgent, entry: Entry | None) -> Any:
    assert entry is not None
    payload = agent.outbox.payload(entry)
    assert payload is not None
    return decode_agent_message(entry.kind, STATION, payload)


def test_the_agent_queues_telemetry_and_device_events_that_decode(tmp_path: Path) -> None:
    async def scenario() -> None:
        agent, sources = make_agent(tmp_path)
        telemetry = published(agent, agent.queue_telemetry())
        assert isinstance(telemetry, TelemetryMessage)
        assert telemetry.seq == 1 and telemetry.session == agent.outbox.session
        assert telemetry.devices == agent.coordinator.statuses
        assert telemetry.counters == {"commands": 0, "reconnects": 0}
        assert "cpu_percent" in telemetry.host

        sources[0].break_now(0)  # paper out: a device_status event
        agent.coordinator.poll_once()
        (entry,) = [e for e in agent.outbox.entries() if e.kind == "events"]
        events = published(agent, entry)
        assert isinstance(events, EventsMessage) and events.seq == 2
        (event,) = events.events
        assert (event.type, event.device) == ("device_status", "printer")
        assert event.status is not None and event.status.faults == ["paper_out"]
        assert agent.unconfirmed == 2

    asyncio.run(scenario())


def test_lean_telemetry_leaves_out_what_is_known_or_empty() -> None:
    statuses = without_events(devices())
    known = {slot: s.info for slot, s in statuses.items() if slot != "cash_acceptor"}
    message = payloads.telemetry(
        STAMP, host={"cpu_percent": 1.0}, devices=statuses, counters={}, known_info=known
    )
    wire = json.loads(encode(message))["devices"]
    assert [slot for slot, status in wire.items() if "info" in status] == ["cash_acceptor"]
    assert wire["cash_acceptor"]["info"] == statuses["cash_acceptor"].info.model_dump(
        exclude_none=True
    )
    for slot, status in wire.items():  # required keys always; events never; supplies if any
        assert {"device", "driver", "state", "faults"} <= status.keys()
        assert "events" not in status
        assert ("supplies" in status) == bool(statuses[slot].supplies)
    # what the controller decodes is the status, with info unset where it was left out
    decoded = roundtrip("telemetry", message)
    for slot, status in decoded.devices.items():
        assert status.model_dump(exclude={"info"}) == statuses[slot].model_dump(exclude={"info"})
        assert ("info" in status.model_fields_set) == (slot == "cash_acceptor")
    # without what was sent before, every device carries its info
    full = json.loads(encode(payloads.telemetry(STAMP, host={}, devices=statuses, counters={})))
    assert all("info" in status for status in full["devices"].values())


def test_the_agent_sends_a_device_info_again_only_when_it_changed(tmp_path: Path) -> None:
    """Before any birth every device carries its info; once a device_status event carried a
    device's info, telemetry leaves it out until it changes."""

    async def scenario() -> None:
        agent, sources = make_agent(tmp_path)
        first = json.loads(agent.outbox.payload(agent.queue_telemetry()) or b"")  # type: ignore[arg-type]
        assert all("info" in status for status in first["devices"].values())

        sources[0].break_now(0)  # the printer's device_status event carries its info
        agent.coordinator.poll_once()
        assert agent.info_sent == {"printer": agent.coordinator.statuses["printer"].info}
        entry = agent.queue_telemetry()
        lean = published(agent, entry)
        wire = json.loads(agent.outbox.payload(entry) or b"")  # type: ignore[arg-type]
        assert "info" not in wire["devices"]["printer"]
        assert "info" in wire["devices"]["cash_acceptor"]
        assert lean.devices["printer"].faults == ["paper_out"]
        assert len(encode(lean)) < len(json.dumps(first))

    asyncio.run(scenario())


def test_the_agent_does_not_queue_what_its_models_refuse(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        agent, _ = make_agent(tmp_path)
        secret = "张三 320102199001011234"
        assert agent.queue_events([{"type": "Not A Type", "holder": secret}]) is None
        assert agent.unconfirmed == 0 and len(agent.outbox) == 0
        # the refused message used no seq: no gap opens
        ok = published(agent, agent.queue_events([{"type": "card_inserted"}]))
        assert ok.seq == 1

    asyncio.run(scenario())
    assert "did not queue a malformed events message" in caplog.text
    assert "张三" not in caplog.text  # offending values stay out of the log


class FixedSource:
    """An in-memory :class:`DeviceSource` reporting whatever ``status`` is set to."""

    slot = "printer"
    blocking = False

    def __init__(self, status: DeviceStatus) -> None:
        self.status = status

    def read(self) -> DeviceStatus:
        return self.status

    def poll_interval(self) -> float:
        return 1.0


def test_a_malformed_driver_event_is_logged_and_does_not_reach_the_coordinator(
    caplog: pytest.LogCaptureFixture,
) -> None:
    healthy = devices()["printer"]
    source = FixedSource(healthy)

    async def scenario() -> None:
        agent = StationAgent(
            IDENTITY,
            broker=parse_broker_url("mqtt://127.0.0.1:1"),
            outbox=OutboxStore(":memory:").outbox(STATION),
            sources=[source],
            host=None,
        )
        agent.coordinator.poll_once()
        source.status = healthy.model_copy(
            update={"state": "user_error", "faults": ["paper_out"], "events": [{"type": "Bad!"}]}
        )
        agent.coordinator.poll_once()  # raises nothing into the coordinator
        assert len(agent.outbox) == 0
        source.status = healthy
        agent.coordinator.poll_once()  # the next change still goes out
        assert [e.kind for e in agent.outbox.entries()] == ["events"]

    asyncio.run(scenario())
    assert "did not queue a malformed events message: type" in caplog.text


@pytest.mark.parametrize(
    ("identity", "slot", "complaint"),
    [
        (dataclasses.replace(IDENTITY, station="WX_Bad"), "printer", "station"),
        (dataclasses.replace(IDENTITY, site=""), "printer", "site"),
        (dataclasses.replace(IDENTITY, telemetry_interval=0), "printer", "telemetry_interval"),
        (IDENTITY, "receipt_printer", "String should match pattern"),
    ],
)
def test_a_station_the_controller_would_refuse_fails_at_construction(
    identity: StationIdentity, slot: str, complaint: str
) -> None:
    source = FixedSource(devices()["printer"])
    source.slot = slot
    with pytest.raises(ValueError, match=complaint):
        StationAgent(
            identity,
            broker=parse_broker_url("mqtt://127.0.0.1:1"),
            outbox=OutboxStore(":memory:").outbox("wx-bad"),
            sources=[source],
            host=None,
        )
