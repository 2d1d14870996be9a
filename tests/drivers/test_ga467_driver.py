"""GA 467 driver specifics: bytes on the wire, resync, probe JSON, and citizens' privacy."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kioskfleet.drivers.base import DriverOptions
from kioskfleet.drivers.cards import IdCard, mask_id_number, mask_name, watch_media
from kioskfleet.drivers.exceptions import DriverError
from kioskfleet.drivers.ga467 import (
    FAKE_CITIZEN,
    Ga467Driver,
    Ga467Simulator,
    frames,
    make_simulator,
    open_driver,
    probe,
)
from kioskfleet.drivers.registry import ProbeOptions, driver_module
from kioskfleet.drivers.simulator import DeviceSimulator, PtyServer, SimulatorTransport

FAST = DriverOptions(timeout=0.2, retries=1, quirks={"inter_byte_timeout": 0.05})
PROBE = ProbeOptions(timeout=0.2, retries=1)
#: every form in which the fake citizen's identity could leak
SECRETS = (
    FAKE_CITIZEN.name,
    FAKE_CITIZEN.id_number,
    FAKE_CITIZEN.address,
    FAKE_CITIZEN.name.encode("utf-16-le").hex(),
    FAKE_CITIZEN.id_number.encode("utf-16-le").hex(),
    FAKE_CITIZEN.id_number.encode("utf-16-le").hex(" "),
    "19000101",
)


def assert_no_secrets(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, "personal data leaked"


@pytest.fixture
def sim() -> Ga467Simulator:
    return Ga467Simulator()


@pytest.fixture
def memory(sim: Ga467Simulator) -> tuple[Ga467Driver, SimulatorTransport]:
    transport = SimulatorTransport(sim)
    return Ga467Driver(transport, FAST), transport


@pytest.fixture
def server(sim: Ga467Simulator) -> Iterator[PtyServer]:
    server = PtyServer(sim).start()
    yield server
    server.stop()


def test_package_is_registered() -> None:
    module = driver_module("ga467")
    assert module.probe is probe
    assert isinstance(module.make_simulator(), Ga467Simulator)


def test_bytes_on_the_wire(
    memory: tuple[Ga467Driver, SimulatorTransport], sim: Ga467Simulator
) -> None:
    driver, transport = memory
    sim.present()
    driver.read_card()
    assert bytes(transport.written) == bytes.fromhex(
        "aaaaaa966900032001 22 aaaaaa966900032002 21 aaaaaa966900033001 32"
    )


def test_garbage_before_a_reply_is_skipped(
    memory: tuple[Ga467Driver, SimulatorTransport], sim: Ga467Simulator
) -> None:
    driver, _ = memory
    sim.noise_next(b"\x00\xaa\xaa\x13\xaa\xaa\xaa\x96")
    assert driver.status().media == "not_present"


def test_a_stalled_frame_is_dropped_and_the_command_retried(
    memory: tuple[Ga467Driver, SimulatorTransport], sim: Ga467Simulator
) -> None:
    driver, _ = memory
    sim.present()
    sim.truncate_next()
    card = driver.read_card()
    assert card is not None
    assert card.id_number == FAKE_CITIZEN.id_number


def test_a_corrupt_command_is_reported_by_the_sam_and_retried(sim: Ga467Simulator) -> None:
    reply = frames.decode_response(sim.receive(frames.encode_command(0x20, 0x01)[:-1] + b"\x00"))
    assert reply.sw3 == frames.SW_HOST_CHECKSUM


class _RandomDevice(DeviceSimulator):
    def __init__(self, replies: list[bytes]) -> None:
        self.replies = replies

    def receive(self, data: bytes) -> bytes:
        return self.replies.pop(0) if self.replies else b""


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=40), max_size=6))
def test_a_device_that_answers_garbage_only_raises_driver_errors(replies: list[bytes]) -> None:
    options = DriverOptions(timeout=0.01, retries=1, quirks={"inter_byte_timeout": 0.005})
    driver = Ga467Driver(SimulatorTransport(_RandomDevice(replies)), options)
    for call in (driver.identify, driver.status, driver.read_card):
        with contextlib.suppress(DriverError):
            call()


def test_simulator_faults_table(sim: Ga467Simulator) -> None:
    for name in Ga467Simulator.FAULTS:
        make_simulator().set_fault(name)
    with pytest.raises(ValueError, match="unknown fault"):
        sim.set_fault("on_fire")


def test_open_driver_takes_the_baud_rate_from_the_profile(server: PtyServer) -> None:
    driver = open_driver(server.port, ProbeOptions(profile={"baudrate": 57600}))
    try:
        assert driver.transport.baudrate == 57600  # type: ignore[attr-defined]
        assert driver.status().state == "online"
    finally:
        driver.close()
    driver = open_driver(server.port, ProbeOptions())
    assert driver.transport.baudrate == 115200  # type: ignore[attr-defined]
    driver.close()


# -- probe -------------------------------------------------------------------------------------
def _probe_json(port: str, options: ProbeOptions = PROBE) -> tuple[dict[str, object], bool]:
    result = probe(port, options)
    return json.loads(result.status.model_dump_json()), result.answered


def test_probe_no_card(server: PtyServer) -> None:
    status, answered = _probe_json(server.port)
    assert answered
    assert status == {
        "device": "id_reader",
        "driver": "ga467",
        "state": "online",
        "info": {
            "model": "GA 467 SAM_V",
            "serial": "05.01-20200101-0000012345-1234567890",
            "firmware": None,
        },
        "faults": [],
        "supplies": {},
        "media": "not_present",
        "events": [],
    }


def test_probe_reads_a_present_card_masked(server: PtyServer, sim: Ga467Simulator) -> None:
    sim.set_fault("card_present")
    status, answered = _probe_json(server.port)
    assert answered
    assert (status["state"], status["media"], status["faults"]) == ("online", "present", [])
    assert status["events"] == [{"type": "id_card_read", "holder": "测***"}]
    assert_no_secrets(json.dumps(status, ensure_ascii=False))


@pytest.mark.parametrize(
    ("fault", "state", "faults", "media"),
    [
        ("sam_fault", "hardware_error", ["sam_fault"], "unknown"),
        ("read_error", "user_error", ["read_error"], "present"),
    ],
)
def test_probe_faults(
    server: PtyServer, sim: Ga467Simulator, fault: str, state: str, faults: list[str], media: str
) -> None:
    sim.set_fault(fault)
    status, answered = _probe_json(server.port)
    assert answered
    assert (status["state"], status["faults"], status["media"], status["events"]) == (
        state,
        faults,
        media,
        [],
    )


def test_probe_no_answer(server: PtyServer, sim: Ga467Simulator) -> None:
    sim.set_fault("no_answer")
    status, answered = _probe_json(server.port)
    assert not answered
    assert (status["state"], status["media"]) == ("offline", "unknown")


def test_probe_no_device() -> None:
    status, answered = _probe_json("/dev/kioskfleet-no-such-port")
    assert not answered
    assert (status["device"], status["driver"], status["state"]) == (
        "id_reader",
        "ga467",
        "no_device",
    )


def test_probe_watch_reports_a_card_laid_down_and_taken(
    server: PtyServer, sim: Ga467Simulator
) -> None:
    # generous gaps: on a loaded machine reading the card can take most of a second
    threading.Timer(0.1, sim.present).start()
    threading.Timer(1.5, sim.remove).start()
    status, answered = _probe_json(server.port, ProbeOptions(timeout=0.2, watch=2.5))
    assert answered
    assert status["events"] == [
        {"type": "card_inserted"},
        {"type": "id_card_read", "holder": "测***"},
        {"type": "card_removed"},
    ]


def test_watch_media_with_an_injected_clock(
    memory: tuple[Ga467Driver, SimulatorTransport], sim: Ga467Simulator
) -> None:
    driver, _ = memory
    now = [0.0]
    script = {1: sim.present, 3: sim.remove, 4: lambda: sim.set_fault("read_error")}
    polls = [0]

    def sleep(seconds: float) -> None:
        now[0] += seconds
        polls[0] += 1
        script.get(polls[0], lambda: None)()

    def on_present() -> list[dict[str, object]]:
        card = driver.read_card()
        return [] if card is None else [{"type": "id_card_read", "holder": mask_name(card.name)}]

    status, events = watch_media(
        driver.status, 1.0, on_present, interval=0.2, clock=lambda: now[0], sleep=sleep
    )
    assert events == [
        {"type": "card_inserted"},
        {"type": "id_card_read", "holder": "测***"},
        {"type": "card_removed"},
        {"type": "card_inserted"},
    ]
    assert status.faults == ["read_error"]  # the unreadable card: no read event, a fault


# -- privacy -----------------------------------------------------------------------------------
def test_card_repr_and_str_are_masked() -> None:
    for text in (repr(FAKE_CITIZEN), str(FAKE_CITIZEN), f"{FAKE_CITIZEN}", f"{[FAKE_CITIZEN]}"):
        assert_no_secrets(text)
        assert "3202**********1234" in text
    assert FAKE_CITIZEN.masked() == {"name": "测***", "id_number": "3202**********1234"}


def test_masking_rules() -> None:
    assert mask_id_number("320200190001011234") == "3202**********1234"
    assert mask_id_number("1234") == "****"
    assert mask_name("张三") == "张*"
    assert mask_name("") == ""


def test_nothing_personal_in_logs_exceptions_or_output(
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    server: PtyServer,
    sim: Ga467Simulator,
) -> None:
    caplog.set_level(logging.DEBUG)
    messages: list[str] = []
    transport = SimulatorTransport(sim)
    driver = Ga467Driver(transport, FAST)
    sim.present()
    card = driver.read_card()
    assert isinstance(card, IdCard)
    logging.getLogger("test").debug("card: %s %r", card, card)  # what a careless caller does
    for scenario in ("truncate", "bad_record", "read_error", "sam_fault", "no_answer"):
        if scenario == "truncate":
            sim.truncate_next()
        else:
            sim.set_fault(scenario)
        try:
            driver.read_card()
            driver.status()
        except DriverError as err:
            chain: BaseException | None = err
            while chain is not None:
                messages.append(f"{chain!s} {chain!r}")
                chain = chain.__cause__ or chain.__context__
    sim.silent = sim.sam_fault = sim.read_error = sim.bad_record = False
    probe(server.port, PROBE)
    out, err = capfd.readouterr()
    texts = [r.getMessage() for r in caplog.records] + [repr(r.args) for r in caplog.records]
    for text in [*texts, *messages, out, err]:
        assert_no_secrets(text)
    assert len(messages) >= 3
