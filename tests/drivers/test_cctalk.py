"""ccTalk: codec vectors and properties, event-counter semantics, bus echo, probe over a pty."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kioskfleet.drivers.base import DriverOptions
from kioskfleet.drivers.cctalk import (
    CcTalkBillValidator,
    CcTalkCoinAcceptor,
    CcTalkSimulator,
    codes,
    discover,
    make_simulator,
    probe,
)
from kioskfleet.drivers.cctalk.frames import Frame, Header, bytes_wanted, decode, encode, scan
from kioskfleet.drivers.exceptions import DeviceOperationError, FrameError
from kioskfleet.drivers.registry import ProbeOptions
from kioskfleet.drivers.simulator import PtyServer, SimulatorTransport
from kioskfleet.protocol.devices import CASH_FAULTS

OPTIONS = DriverOptions(timeout=0.25, retries=1)
FAST = ProbeOptions(timeout=0.2, retries=1)
#: headers a probe without --watch may send: reads only
READ_ONLY_HEADERS = {
    Header.SIMPLE_POLL,
    Header.EQUIPMENT_CATEGORY,
    Header.MANUFACTURER_ID,
    Header.PRODUCT_CODE,
    Header.SERIAL_NUMBER,
    Header.SOFTWARE_REVISION,
    Header.VARIABLE_SET,
    Header.BILL_ID,
    Header.COIN_ID,
    Header.COUNTRY_SCALING_FACTOR,
    Header.READ_BUFFERED_BILL_EVENTS,
    Header.READ_BUFFERED_CREDIT,
    Header.SELF_CHECK,
}


# -- codec: worked examples from device-protocols §2.2/§2.3 ---------------------------------
@pytest.mark.parametrize(
    ("frame", "crc", "wire"),
    [
        (Frame(2, 1, Header.EQUIPMENT_CATEGORY), False, "020001f508"),
        (Frame(2, 1, Header.SIMPLE_POLL), False, "020001feff"),
        (Frame(1, 2, Header.REPLY), False, "01000200fd"),
        (Frame(40, 1, Header.SIMPLE_POLL), False, "280001fed9"),
        (Frame(2, 1, Header.READ_BUFFERED_CREDIT), False, "020001e518"),
        (Frame(40, 1, Header.SIMPLE_POLL), True, "2800b6fe21"),
        (Frame(1, 1, Header.REPLY), True, "0100300037"),
    ],
)
def test_encode_matches_worked_examples(frame: Frame, crc: bool, wire: str) -> None:
    assert encode(frame, crc16_mode=crc).hex() == wire


def test_decode_worked_replies() -> None:
    category = decode(bytes.fromhex("010d0200436f696e204163636570746f7216"))
    assert category == Frame(1, 2, 0, b"Coin Acceptor")
    credit = decode(bytes.fromhex("010b02000606040014001706040d029e"))
    counter, pairs = codes.split_results(credit.data)
    assert counter == 6
    assert pairs[0] == (6, 4)


def test_decode_rejects_bad_checksum_and_length() -> None:
    with pytest.raises(FrameError):
        decode(bytes.fromhex("020001f509"))
    with pytest.raises(FrameError):
        decode(bytes.fromhex("020101f508"))
    with pytest.raises(FrameError):
        decode(b"\x01")


frames = st.builds(
    Frame,
    dest=st.integers(0, 255),
    src=st.integers(0, 255),
    header=st.integers(0, 255),
    data=st.binary(max_size=255),
)


@given(frames)
def test_round_trip_simple_checksum(frame: Frame) -> None:
    assert decode(encode(frame)) == frame


@given(frames)
def test_round_trip_crc16(frame: Frame) -> None:
    decoded = decode(encode(frame, crc16_mode=True), crc16_mode=True)
    assert decoded == Frame(frame.dest, None, frame.header, frame.data)


@given(st.binary(max_size=300), st.booleans())
def test_random_bytes_never_raise_anything_but_frame_error(raw: bytes, crc: bool) -> None:
    with contextlib.suppress(FrameError):
        decode(raw, crc16_mode=crc)
    frame, start, end = scan(raw, crc16_mode=crc)
    assert 0 <= start <= end <= len(raw)
    if frame is not None:
        assert decode(raw[start:end], crc16_mode=crc) == frame
    assert bytes_wanted(raw) >= 1


@given(frames, st.binary(max_size=4))
def test_scan_finds_a_frame_after_a_short_noise_burst(frame: Frame, noise: bytes) -> None:
    wire = encode(frame)
    found, _, end = scan(noise + wire)
    # the noise may itself look like a frame start, but a complete valid frame is always found
    assert found is not None
    assert end <= len(noise + wire)


@given(st.integers(0, 255), st.integers(0, 255))
def test_every_result_pair_maps_into_the_vocabulary(a: int, b: int) -> None:
    channels = {1: codes.CashChannel(1, 100)}
    for effects in (codes.bill_result(a, b, channels), codes.coin_result(a, b, channels)):
        for event in effects.events:
            assert isinstance(event["type"], str)
            if event["type"] == "credit":
                assert isinstance(event["value"], int)
                assert event["currency"] == "CNY"


@given(st.text(max_size=10))
def test_id_parsers_never_raise(text: str) -> None:
    codes.parse_bill_id(text)
    codes.parse_coin_id(text, 1)


# -- meaning ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("last", "counter", "new", "lost", "reset"),
    [
        (0, 0, 0, 0, False),
        (0, 3, 3, 0, False),
        (3, 3, 0, 0, False),
        (254, 1, 2, 0, False),  # 255 then 1: the counter never passes through 0
        (255, 1, 1, 0, False),
        (3, 10, 5, 2, False),  # seven new events, only five kept: two lost
        (250, 4, 5, 4, False),
        (7, 0, 0, 0, True),  # back to 0: the device was reset
    ],
)
def test_event_counter_semantics(last: int, counter: int, new: int, lost: int, reset: bool) -> None:
    assert codes.counter_step(last, counter) == codes.CounterStep(new, lost, reset)


def test_device_counter_wraps_to_one() -> None:
    assert codes.next_counter(255) == 1
    assert codes.next_counter(0) == 1


@pytest.mark.parametrize(
    ("text", "value"),
    [("CN100A", 100), ("CN050A", 50), ("CN010A", 10), ("EU2K5A", 2500), ("CN......", None)],
)
def test_coin_ids(text: str, value: int | None) -> None:
    channel = codes.parse_coin_id(text, 1)
    assert (channel.value if channel else None) == value


def test_bill_value_uses_country_scaling() -> None:
    assert codes.parse_bill_id("CN0100A") == ("CN", 100)
    assert codes.bill_value(100, 100, 2) == 10000  # scaling 100, 2 decimals: 100 yuan
    assert codes.bill_value(100, 1, 0) == 10000  # whole units
    assert codes.bill_value(5, 1000, 3) == 500


# -- driver against the simulator ------------------------------------------------------------
def bill(**sim_options: object) -> tuple[CcTalkSimulator, CcTalkBillValidator, SimulatorTransport]:
    sim = CcTalkSimulator("bill", **sim_options)  # type: ignore[arg-type]
    transport = SimulatorTransport(sim, timeout=0.25)
    crc = bool(sim_options.get("crc16", False))
    driver = CcTalkBillValidator(transport, OPTIONS, crc16=crc)
    driver.identify()
    driver.baseline()
    return sim, driver, transport


def test_echo_is_detected_and_stripped() -> None:
    _, driver, transport = bill(echo=True)
    assert driver.echo is True
    transport.written.clear()
    driver.transact(Header.SIMPLE_POLL)
    assert bytes(transport.written) == bytes.fromhex("280001fed9")
    _, plain, _ = bill()
    assert plain.echo is False


def test_serial_number_is_lsb_first() -> None:
    sim = CcTalkSimulator("bill")
    sim.serial = 0x030201
    driver = CcTalkBillValidator(SimulatorTransport(sim), OPTIONS)
    assert driver.identify().serial == str(0x030201)


def test_enable_sends_the_real_init_sequence() -> None:
    sim, driver, _ = bill()
    sim.received.clear()
    driver.enable(channels=[1, 6], escrow=True)
    sent = [(f.header, f.data) for f in sim.received]
    assert sent == [
        (Header.MODIFY_BILL_OPERATING_MODE, b"\x03"),  # stacker + escrow
        (Header.MODIFY_INHIBIT_STATUS, bytes([0b100001, 0])),
        (Header.MODIFY_MASTER_INHIBIT, b"\x01"),
    ]
    driver.disable()
    assert sim.received[-1].header == Header.MODIFY_MASTER_INHIBIT
    assert sim.received[-1].data == b"\x00"


def test_events_buffered_before_baseline_are_not_reported() -> None:
    sim, driver, _ = bill()
    driver.enable()
    sim.insert(6)
    sim.insert(1)
    driver.baseline()
    assert driver.poll() == []


def test_more_than_five_new_events_are_reported_lost() -> None:
    sim, driver, _ = bill()
    driver.enable()
    for _ in range(7):
        sim.insert(1)
    events = driver.poll()
    assert events[0] == {"type": "events_lost", "count": 2}
    assert [e["value"] for e in events[1:]] == [100] * 5


def test_counter_wrap_loses_nothing() -> None:
    sim, driver, _ = bill()
    sim.set_fault("counter_wrap")
    driver.baseline()
    driver.enable()
    for channel in (1, 2, 3):
        sim.insert(channel)
    assert [e["channel"] for e in driver.poll()] == [1, 2, 3]
    assert sim.counter == 2  # 255, then 1, 2


def test_device_reset_is_reported_and_acceptance_restored() -> None:
    sim, driver, _ = bill()
    driver.enable()
    sim.insert(1)
    assert len(driver.poll()) == 1
    sim.set_fault("device_reset")
    assert not sim.accepting
    assert driver.poll() == [{"type": "device_reset"}]
    assert sim.accepting
    sim.insert(6)
    assert [e["value"] for e in driver.poll()] == [10000]


def test_status_restores_acceptance_after_an_unseen_reset() -> None:
    sim, driver, _ = bill()
    driver.enable()
    sim.power_cycle()  # counter was 0 and is 0 again: the buffer cannot tell
    assert driver.status().state == "online"
    assert sim.accepting


def test_fraud_flag_expires_on_an_injected_clock() -> None:
    now = [1000.0]
    sim = CcTalkSimulator("bill")
    driver = CcTalkBillValidator(SimulatorTransport(sim), OPTIONS, clock=lambda: now[0])
    driver.identify()
    driver.baseline()
    sim.fraud()
    assert driver.poll() == [{"type": "fraud_attempt"}]
    assert driver.status().state == "fraud_attempt"
    now[0] += 3600
    assert driver.status().state == "online"


def test_nak_is_an_operation_error() -> None:
    _, driver, _ = bill()
    with pytest.raises(DeviceOperationError):
        driver.request(200)


def test_coin_acceptor_has_no_escrow_and_reports_coin_values() -> None:
    sim = CcTalkSimulator("coin")
    driver = CcTalkCoinAcceptor(SimulatorTransport(sim), OPTIONS)
    driver.identify()
    assert {n: c.value for n, c in driver.channels.items()} == {1: 10, 2: 50, 3: 100}
    driver.baseline()
    driver.enable(channels=[3])
    sim.insert(1)
    assert driver.poll() == [{"type": "rejected", "reason": "inhibited"}]


def test_kind_comes_from_the_equipment_category_not_the_address() -> None:
    sim = CcTalkSimulator("bill", address=2)
    found = discover(SimulatorTransport(sim, timeout=0.2), FAST)
    assert isinstance(found, CcTalkBillValidator)
    assert found.address == 2
    coin = discover(SimulatorTransport(CcTalkSimulator("coin"), timeout=0.2), FAST)
    assert isinstance(coin, CcTalkCoinAcceptor)


def test_simulator_fault_table_covers_the_cash_faults() -> None:
    sim = make_simulator("bill")
    for name in ("note_jam_safe", "note_jam_unsafe", "cashbox_full", "cashbox_removed"):
        assert name in sim.FAULTS
    with pytest.raises(ValueError, match="bill validators only"):
        make_simulator("coin").set_fault("note_jam_safe")


# -- probe over a real pty -------------------------------------------------------------------
@pytest.fixture
def served() -> Iterator[list[PtyServer]]:
    servers: list[PtyServer] = []
    yield servers
    for server in servers:
        server.stop()


def serve(servers: list[PtyServer], sim: CcTalkSimulator) -> str:
    server = PtyServer(sim).start()
    servers.append(server)
    return server.port


def probe_json(port: str, options: ProbeOptions = FAST) -> tuple[dict[str, object], bool]:
    result = probe(port, options)
    return json.loads(result.status.model_dump_json()), result.answered


@pytest.mark.parametrize(
    ("sim_options", "device", "supplies"),
    [
        ({"kind": "bill"}, "cash_acceptor", {"cashbox": "ok"}),
        ({"kind": "coin"}, "coin_acceptor", {"cashbox": "unknown"}),
        ({"kind": "bill", "echo": True}, "cash_acceptor", {"cashbox": "ok"}),
        ({"kind": "bill", "crc16": True}, "cash_acceptor", {"cashbox": "ok"}),
        ({"kind": "coin", "echo": True, "crc16": True}, "coin_acceptor", {"cashbox": "unknown"}),
    ],
)
def test_probe_finds_device_and_reads_only(
    served: list[PtyServer], sim_options: dict[str, object], device: str, supplies: dict[str, str]
) -> None:
    sim = make_simulator(**sim_options)  # type: ignore[arg-type]
    status, answered = probe_json(serve(served, sim))
    assert answered
    assert status["device"] == device
    assert status["driver"] == "cctalk"
    assert status["state"] == "online"
    assert status["faults"] == []
    assert status["supplies"] == supplies
    assert status["events"] == []
    model = "KFS BV-SIM" if sim_options["kind"] == "bill" else "KFS CA-SIM"
    assert status["info"] == {"model": model, "serial": "1234567", "firmware": "1.2.0"}
    assert {frame.header for frame in sim.received} <= READ_ONLY_HEADERS
    assert not sim.accepting


@pytest.mark.parametrize(
    ("fault", "state", "faults", "cashbox"),
    [
        ("note_jam_unsafe", "user_error", ["note_jam"], "ok"),
        ("cashbox_full", "user_error", ["cashbox_full"], "full"),
        ("cashbox_removed", "user_error", ["cashbox_missing"], "missing"),
        ("fraud", "fraud_attempt", ["fraud_attempt"], "ok"),
        ("note_path_open", "user_error", ["note_path_open"], "ok"),
        ("hardware_fault", "hardware_error", ["hardware_fault"], "ok"),
    ],
)
def test_probe_reports_faults_but_not_buffered_events(
    served: list[PtyServer], fault: str, state: str, faults: list[str], cashbox: str
) -> None:
    sim = make_simulator("bill")
    sim.set_fault(fault)  # also leaves its event in the buffer, before the probe started
    status, answered = probe_json(serve(served, sim))
    assert answered  # a device answering with an error still answered
    assert (status["state"], status["faults"]) == (state, faults)
    assert set(faults) <= set(CASH_FAULTS)
    assert status["supplies"] == {"cashbox": cashbox}
    assert status["events"] == []


def test_probe_watch_enables_reports_credits_and_disables(served: list[PtyServer]) -> None:
    sim = make_simulator("bill", echo=True)
    sim.queue_insert(6, 1)
    options = ProbeOptions(timeout=0.2, retries=1, watch=0.5)
    status, answered = probe_json(serve(served, sim), options)
    assert answered
    assert status["events"] == [
        {"type": "credit", "value": 10000, "currency": "CNY", "channel": 6},
        {"type": "credit", "value": 100, "currency": "CNY", "channel": 1},
    ]
    assert not sim.accepting


def test_probe_watch_reports_lost_events(served: list[PtyServer]) -> None:
    sim = make_simulator("coin")
    sim.set_fault("events_lost")
    status, _ = probe_json(serve(served, sim), ProbeOptions(timeout=0.2, watch=0.3))
    assert status["events"][0] == {"type": "events_lost", "count": 2}


def test_probe_at_a_given_address_with_profile_quirks(served: list[PtyServer]) -> None:
    sim = make_simulator("bill", address=41, crc16=True)
    options = ProbeOptions(timeout=0.2, address=41, profile={"cctalk": {"crc16": True}})
    status, answered = probe_json(serve(served, sim), options)
    assert answered
    assert status["state"] == "online"


def test_probe_no_answer_is_offline(served: list[PtyServer]) -> None:
    sim = make_simulator("bill", echo=True)
    sim.set_fault("no_answer")
    status, answered = probe_json(serve(served, sim))
    assert not answered
    assert status["state"] == "offline"
    assert status["driver"] == "cctalk"


def test_probe_port_that_cannot_open_is_no_device() -> None:
    status, answered = probe_json("/dev/kioskfleet-no-such-port")
    assert not answered
    assert status["state"] == "no_device"
