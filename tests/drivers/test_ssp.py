"""SSP: packet vectors and properties, sequence bit and same-packet retry, events, probe."""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kioskfleet.drivers.base import DriverOptions
from kioskfleet.drivers.exceptions import FrameError
from kioskfleet.drivers.registry import ProbeOptions
from kioskfleet.drivers.simulator import PtyServer, SimulatorTransport
from kioskfleet.drivers.ssp import SspSimulator, SspValidator, codes, make_simulator, probe
from kioskfleet.drivers.ssp.codes import Command, Event
from kioskfleet.drivers.ssp.frames import Packet, bytes_wanted, crc16, decode, encode, scan

OPTIONS = DriverOptions(timeout=0.25, retries=2)
FAST = ProbeOptions(timeout=0.2, retries=1)
READ_ONLY_COMMANDS = {
    Command.SYNC,
    Command.HOST_PROTOCOL_VERSION,
    Command.SETUP_REQUEST,
    Command.GET_SERIAL_NUMBER,
    Command.GET_FIRMWARE_VERSION,
    Command.GET_DATASET_VERSION,
    Command.POLL,
    Command.LAST_REJECT_CODE,
}


# -- codec: worked examples from device-protocols §3.2 ---------------------------------------
def test_crc_vectors() -> None:
    assert crc16(b"123456789") == 0xAEE7
    assert crc16(bytes([1, 2, 3, 4])).to_bytes(2, "little") == bytes([0x17, 0x9E])


@pytest.mark.parametrize(
    ("packet", "wire"),
    [
        (Packet(0, True, b"\x11"), "7f8001116582"),  # SYNC
        (Packet(0, True, b"\xf0"), "7f8001f02380"),  # OK
        (Packet(0, True, b"\x07"), "7f8001071202"),  # POLL
        (Packet(0, True, b"\xf0\xee\x01\xeb"), "7f8004f0ee01ebb948"),
        (Packet(0, True, b"\x02\x7f\xff"), "7f8003027f7fff2c24"),  # stuffed data
        (Packet(0, True, b"\xf0\xee\xc8"), "7f8003f0eec87f7fce"),  # stuffed CRC
    ],
)
def test_worked_packets(packet: Packet, wire: str) -> None:
    assert encode(packet).hex() == wire
    assert decode(bytes.fromhex(wire)) == packet


def test_manual_setup_example_parses() -> None:
    raw = bytes.fromhex("7f8017f0003031303047425000000103050a14020202400000056181")
    setup = codes.parse_setup(decode(raw).data[1:])
    assert setup.country == "GBP"
    assert setup.protocol == 5
    assert sorted(setup.channels) == [1, 2, 3]


def test_lone_stx_restarts_a_packet() -> None:
    wire = bytes.fromhex("7f800504") + encode(Packet(0, False, b"\xf0"))
    packet, start, _ = scan(wire)
    assert packet == Packet(0, False, b"\xf0")
    assert start == 4


packets = st.builds(
    Packet,
    address=st.integers(0, 0x7D),
    seq=st.booleans(),
    data=st.binary(min_size=1, max_size=255),
)


@given(packets)
def test_round_trip_and_stuffing(packet: Packet) -> None:
    wire = encode(packet)
    assert decode(wire) == packet
    # after STX every 0x7F comes in pairs
    body = wire[1:]
    assert body.replace(b"\x7f\x7f", b"").count(0x7F) == 0


@given(packets)
def test_bytes_wanted_never_asks_for_more_than_is_missing(packet: Packet) -> None:
    wire = encode(packet)
    for cut in range(len(wire)):
        assert 1 <= bytes_wanted(wire[:cut]) <= len(wire) - cut


@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_frame_error(raw: bytes) -> None:
    with contextlib.suppress(FrameError):
        decode(raw)
    packet, start, end = scan(raw)
    assert 0 <= start <= end <= len(raw)
    if packet is not None:
        assert decode(raw[start:end]) == packet
    assert bytes_wanted(raw) >= 1
    with contextlib.suppress(FrameError):
        codes.parse_events(raw)
    with contextlib.suppress(FrameError):
        codes.parse_setup(raw)


@given(st.sampled_from([4, 5, 6, 7, 8]), st.lists(st.integers(1, 255), min_size=1, max_size=16))
def test_setup_round_trip(protocol: int, values: list[int]) -> None:
    raw = codes.setup_reply(
        unit_type=0, firmware="0420", country="CNY", values=values, protocol=protocol
    )
    setup = codes.parse_setup(raw)
    assert setup.protocol == protocol
    assert [c.value for c in setup.channels.values()] == [v * 100 for v in values]
    assert {c.currency for c in setup.channels.values()} == {"CNY"}


def test_poll_events_parse_with_their_data_sizes() -> None:
    data = bytes([Event.READ, 3, Event.CREDIT, 3, Event.STACKED, Event.FRAUD_ATTEMPT, 0])
    assert codes.parse_events(data) == [
        (Event.READ, 3),
        (Event.CREDIT, 3),
        (Event.STACKED, None),
        (Event.FRAUD_ATTEMPT, 0),
    ]
    with pytest.raises(FrameError):
        codes.parse_events(bytes([Event.CREDIT]))


# -- driver against the simulator ------------------------------------------------------------
def validator(
    sim: SspSimulator | None = None,
) -> tuple[SspSimulator, SspValidator, SimulatorTransport]:
    sim = sim or SspSimulator()
    transport = SimulatorTransport(sim, timeout=0.25)
    driver = SspValidator(transport, OPTIONS)
    driver.identify()
    driver.baseline()
    return sim, driver, transport


def seq_bits(wire: bytes) -> list[bool]:
    out = []
    buf = bytearray(wire)
    while True:
        packet, _, end = scan(buf)
        if packet is None:
            return out
        out.append(packet.seq)
        del buf[:end]


def test_sync_starts_with_seq_one_then_alternates() -> None:
    sim = SspSimulator()
    transport = SimulatorTransport(sim)
    driver = SspValidator(transport, OPTIONS)
    driver.identify()
    bits = seq_bits(bytes(transport.written))
    assert sim.executed[0] == Command.SYNC
    assert bits[0] is True
    assert all(a != b for a, b in itertools.pairwise(bits))


def test_lost_reply_is_retried_with_the_same_packet_and_not_executed_twice() -> None:
    sim, driver, transport = validator()
    driver.enable()
    transport.written.clear()
    executed = len(sim.executed)
    sim.set_fault("lost_reply")
    sim.insert(6)
    events: list[dict[str, object]] = []
    for _ in range(3):
        events += driver.poll()
    assert sim.repeats == 1
    wire = bytes(transport.written)
    first = encode(Packet(0, seq_bits(wire)[0], bytes([Command.POLL])))
    assert wire.startswith(first + first)  # the SAME bytes, same sequence bit
    assert len(sim.executed) - executed == 3  # three polls executed, the repeat was not
    assert [e["value"] for e in events if e["type"] == "credit"] == [10000]


def test_older_firmware_gets_an_older_protocol_version() -> None:
    sim = SspSimulator()
    sim.max_protocol = 6
    _, driver, _ = validator(sim)
    assert driver.protocol == 6
    sim = SspSimulator()
    sim.max_protocol = 5
    _, driver, _ = validator(sim)
    assert driver.protocol == 5
    assert driver.channels[6].value == 10000


def test_escrow_is_held_with_hold_not_poll() -> None:
    sim, driver, _ = validator()
    driver.enable(escrow=True)
    sim.insert(6)
    assert driver.poll() == [{"type": "escrow", "channel": 6}]
    driver.poll()
    assert sim.executed[-1] == Command.HOLD
    assert sim.escrow == 6


def test_rejected_note_has_the_last_reject_reason() -> None:
    sim, driver, _ = validator()
    driver.enable(channels=[6])
    sim.insert(1)
    assert driver.poll() == [{"type": "rejected", "reason": "channel_inhibited"}]


def test_cashbox_removed_stays_missing_until_replaced() -> None:
    sim, driver, _ = validator()
    sim.remove_cashbox()
    assert driver.poll() == [{"type": "cashbox_removed"}]
    assert driver.poll() == []  # repeated by the validator, reported once
    assert driver.status().supplies == {"cashbox": "missing"}
    sim.replace_cashbox()
    assert driver.poll() == [{"type": "cashbox_replaced"}]
    status = driver.status()
    assert (status.state, status.supplies) == ("online", {"cashbox": "ok"})


def test_jam_clears_when_the_validator_stops_reporting_it() -> None:
    sim, driver, _ = validator()
    sim.jam(safe=False)
    assert driver.poll() == [{"type": "jam", "safe": False}]
    assert driver.status().faults == ["note_jam"]
    sim.clear_jam()
    assert driver.status().faults == []


def test_validator_reset_is_reported_and_acceptance_restored() -> None:
    sim, driver, _ = validator()
    driver.enable()
    sim.set_fault("device_reset")
    assert not sim.enabled
    assert driver.poll() == [{"type": "device_reset"}]
    assert sim.enabled
    sim.insert(5)
    events = driver.poll() + driver.poll()
    assert [e["value"] for e in events if e["type"] == "credit"] == [5000]


def test_noise_with_a_stray_stx_is_skipped() -> None:
    sim, driver, _ = validator()
    sim.set_fault("line_noise")
    assert driver.status().state == "online"


# -- probe over a real pty -------------------------------------------------------------------
@pytest.fixture
def served() -> Iterator[list[PtyServer]]:
    servers: list[PtyServer] = []
    yield servers
    for server in servers:
        server.stop()


def serve(servers: list[PtyServer], sim: SspSimulator) -> str:
    server = PtyServer(sim).start()
    servers.append(server)
    return server.port


def probe_json(port: str, options: ProbeOptions = FAST) -> tuple[dict[str, object], bool]:
    result = probe(port, options)
    return json.loads(result.status.model_dump_json()), result.answered


def test_probe_identifies_and_reads_only(served: list[PtyServer]) -> None:
    sim = make_simulator()
    status, answered = probe_json(serve(served, sim))
    assert answered
    assert status == {
        "device": "cash_acceptor",
        "driver": "ssp",
        "state": "online",
        "faults": [],
        "info": {
            "model": "ITL banknote validator (CNY01001)",
            "serial": "10203040",
            "firmware": "NV02004141498000",
        },
        "supplies": {"cashbox": "ok"},
        "media": None,
        "events": [],
    }
    assert set(sim.executed) <= READ_ONLY_COMMANDS
    assert not sim.enabled


@pytest.mark.parametrize(
    ("fault", "state", "faults", "cashbox"),
    [
        ("note_jam_safe", "user_error", ["note_jam"], "ok"),
        ("cashbox_full", "user_error", ["cashbox_full"], "full"),
        ("cashbox_removed", "user_error", ["cashbox_missing"], "missing"),
        ("fraud", "fraud_attempt", ["fraud_attempt"], "ok"),
        ("note_path_open", "user_error", ["note_path_open"], "ok"),
        ("cashbox_replaced", "online", [], "ok"),
    ],
)
def test_probe_reports_faults_but_not_earlier_events(
    served: list[PtyServer], fault: str, state: str, faults: list[str], cashbox: str
) -> None:
    sim = make_simulator()
    sim.set_fault(fault)
    status, answered = probe_json(serve(served, sim))
    assert answered
    assert (status["state"], status["faults"], status["supplies"]) == (
        state,
        faults,
        {"cashbox": cashbox},
    )
    assert status["events"] == []


def test_probe_watch_enables_reports_credits_and_disables(served: list[PtyServer]) -> None:
    sim = make_simulator()
    sim.queue_insert(6, 3)
    status, answered = probe_json(serve(served, sim), ProbeOptions(timeout=0.2, watch=1.2))
    assert answered
    assert status["events"] == [
        {"type": "credit", "value": 10000, "currency": "CNY", "channel": 6},
        {"type": "credit", "value": 1000, "currency": "CNY", "channel": 3},
    ]
    assert not sim.enabled


def test_probe_no_answer_is_offline(served: list[PtyServer]) -> None:
    sim = make_simulator()
    sim.set_fault("no_answer")
    status, answered = probe_json(serve(served, sim))
    assert not answered
    assert status["state"] == "offline"


def test_probe_port_that_cannot_open_is_no_device() -> None:
    status, answered = probe_json("/dev/kioskfleet-no-such-port")
    assert not answered
    assert status["state"] == "no_device"


def test_events_kept_for_poll_are_bounded_and_loss_declared() -> None:
    sim, driver, _ = validator()
    for _ in range(300):
        sim.replace_cashbox()  # one event each time
        driver.status()  # status polls, keeps the events for poll()
    events = driver.poll()
    assert len(events) == 256
    assert events[0] == {"type": "events_lost", "count": 45}
    assert events[1:] == [{"type": "cashbox_replaced"}] * 255
