"""The one place that builds paho clients (kioskfleet.mqttclient), without a real broker: the
reconnect back-off, the fall-back decision, TLS files, and what goes on the wire in CONNECT —
for the agent's link and the controller's ingest, against a scripted stand-in broker."""

from __future__ import annotations

import asyncio
import random
import ssl
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from kioskfleet.agent.mqtt import MqttLink
from kioskfleet.controller.config import Settings
from kioskfleet.controller.service import Controller
from kioskfleet.mqttclient import (
    UNSUPPORTED_PROTOCOL,
    Backoff,
    ConnectFailed,
    MqttClientFactory,
    MqttConfigError,
    ReadAheadClient,
    ReadAheadSocket,
    ReconnectPolicy,
    SessionPolicy,
    SharedTableProperties,
    TlsFiles,
    puback_all,
    share_property_tables,
    should_fall_back,
    tls_context,
)
from kioskfleet.protocol.broker_url import parse_broker_url
from kioskfleet.protocol.topics import CONTROLLER_STATE_TOPIC
from tests.conftest import Mosquitto, free_port
from tests.fake_broker import Connect, FakeBroker, Refusal, publish_packet
from tests.hypothesis_profiles import examples
from tests.tls_certs import TestCA

SESSION_EXPIRY, RECEIVE_MAXIMUM = 0x11, 0x21  # MQTT 5 CONNECT property identifiers


# -- back-off ----------------------------------------------------------------------------------
class _Top(random.Random):
    """Always the top of the range: shows the ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


class _Bottom(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


def test_backoff_ceiling_doubles_up_to_the_maximum_and_starts_over_after_a_success() -> None:
    backoff = Backoff(ReconnectPolicy(1.0, 20.0), _Top())
    assert [backoff.next_delay() for _ in range(7)] == [1.5, 2.5, 4.5, 8.5, 16.5, 20.0, 20.0]
    assert backoff.failures == 7
    backoff.reset()
    assert backoff.next_delay() == 1.5


def test_backoff_never_goes_below_half_the_minimum() -> None:
    backoff = Backoff(ReconnectPolicy(2.0, 60.0), _Bottom())
    assert {backoff.next_delay() for _ in range(40)} == {1.0}


@settings(max_examples=examples(200))
@given(
    seed=st.integers(0, 2**32),
    low=st.floats(0.01, 30, allow_nan=False),
    spread=st.floats(1, 100, allow_nan=False),
    failures=st.integers(0, 80),
)
def test_backoff_stays_within_its_bounds(
    seed: int, low: float, spread: float, failures: int
) -> None:
    policy = ReconnectPolicy(low, low * spread)
    backoff = Backoff(policy, random.Random(seed))
    for _ in range(failures):
        delay = backoff.next_delay()
        assert policy.minimum / 2 <= delay <= policy.maximum


def test_backoff_spreads_a_district_that_comes_back_at_once() -> None:
    # 500 stations lose the broker together; after a few failed attempts their next tries
    # are spread over the ceiling, not bunched
    delays = []
    for seed in range(500):
        backoff = Backoff(ReconnectPolicy(1.0, 60.0), random.Random(seed))
        for _ in range(4):
            delay = backoff.next_delay()
        delays.append(delay)
    assert len({round(d, 3) for d in delays}) > 450
    # the 4th delay lies in [0.5, 8.5]: spread over it, not bunched at one end
    assert min(delays) < 1.5 and max(delays) > 7.5
    assert statistics.pstdev(delays) > 1.5


@pytest.mark.parametrize(("low", "high"), [(0, 1), (-1, 5), (5, 1), (float("nan"), 1)])
def test_reconnect_policy_refuses_bad_bounds(low: float, high: float) -> None:
    with pytest.raises(ValueError, match="minimum"):
        ReconnectPolicy(low, high)


# -- fall back ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pinned", "speaking", "refusal", "tls_failed", "expected"),
    [
        (None, "5", UNSUPPORTED_PROTOCOL, False, True),
        (None, "5", None, False, True),  # closed without a CONNACK
        (None, "5", None, True, False),  # closed by TLS: a certificate, not the protocol
        (None, "5", UNSUPPORTED_PROTOCOL, True, True),  # the broker said so itself
        (None, "5", 135, False, False),  # not authorized
        (None, "5", 136, False, False),  # server unavailable
        (None, "3.1.1", UNSUPPORTED_PROTOCOL, False, False),  # nothing older to try
        (None, "3.1.1", None, False, False),
        ("5", "5", UNSUPPORTED_PROTOCOL, False, False),  # the URL pins the version
        ("5", "5", None, False, False),
        ("3.1.1", "3.1.1", UNSUPPORTED_PROTOCOL, False, False),
    ],
)
def test_fall_back_decision(
    pinned: str | None, speaking: str, refusal: int | None, tls_failed: bool, expected: bool
) -> None:
    assert (
        should_fall_back(
            pinned=pinned,  # type: ignore[arg-type]
            speaking=speaking,  # type: ignore[arg-type]
            refusal=refusal,
            tls_failed=tls_failed,
        )
        is expected
    )


# -- TLS files ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestCA, TestCA]:
    folder = tmp_path_factory.mktemp("pki")
    return TestCA(folder / "ca"), TestCA(folder / "other", "another CA")


def test_tls_context_checks_the_broker_and_sends_our_certificate(
    pki: tuple[TestCA, TestCA],
) -> None:
    ca, _ = pki
    station = ca.client("wx-tls-01")
    context = tls_context(TlsFiles(ca=ca.cert, cert=station.cert, key=station.key))
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "kioskfleet test CA"),),)
    ]


def _bad_tls_files(ca: TestCA, other: TestCA, tmp: Path) -> list[tuple[str, TlsFiles, str]]:
    station, stranger = ca.client("wx-tls-02"), other.client("wx-tls-03")
    garbage = tmp / "garbage.pem"
    garbage.write_text("not a certificate\n")
    missing = tmp / "missing.pem"
    return [
        ("missing CA", TlsFiles(ca=missing), "missing.pem"),
        ("CA not PEM", TlsFiles(ca=garbage), "garbage.pem"),
        ("missing cert", TlsFiles(ca=ca.cert, cert=missing, key=station.key), "missing.pem"),
        ("cert not PEM", TlsFiles(ca=ca.cert, cert=garbage, key=station.key), "garbage.pem"),
        ("key of another", TlsFiles(ca=ca.cert, cert=station.cert, key=stranger.key), "wx-tls-02"),
        ("cert without key", TlsFiles(ca=ca.cert, cert=station.cert), "wx-tls-02.pem"),
    ]


def test_unusable_tls_files_are_a_configuration_error_naming_the_file(
    pki: tuple[TestCA, TestCA], tmp_path: Path
) -> None:
    ca, other = pki
    for label, files, named in _bad_tls_files(ca, other, tmp_path):
        with pytest.raises(MqttConfigError) as caught:
            tls_context(files)
        assert named in str(caught.value), label
        # and where it matters, on building a link
        with pytest.raises(MqttConfigError):
            MqttClientFactory(
                parse_broker_url("mqtts://127.0.0.1:8883"),
                client_id="x",
                keepalive=20,
                session=SessionPolicy(clean=True),
                tls=files,
            )


def test_a_key_without_its_certificate_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MqttConfigError, match="needs its certificate"):
        TlsFiles(key=tmp_path / "k.pem")


def test_certificates_for_a_plain_url_are_refused(pki: tuple[TestCA, TestCA]) -> None:
    ca, _ = pki
    station = ca.client("wx-tls-04")
    with pytest.raises(MqttConfigError, match="not mqtts://"):
        MqttLink(
            client_id="wx-tls-04",
            url=parse_broker_url("mqtt://127.0.0.1:1883"),
            subscriptions=[],
            will=lambda: ("w", b""),
            on_connect=lambda: None,
            on_message=lambda t, p: None,
            on_published=lambda mid: None,
            tls=TlsFiles(ca=ca.cert, cert=station.cert, key=station.key),
        )


def test_an_unreachable_broker_is_a_connect_failure_with_its_address() -> None:
    port = free_port()  # nothing listens there
    factory = MqttClientFactory(
        parse_broker_url(f"mqtt://127.0.0.1:{port}"),
        client_id="x",
        keepalive=20,
        session=SessionPolicy(clean=True),
    )
    with pytest.raises(ConnectFailed, match=f"127.0.0.1:{port}"):
        factory.connect(factory.build())


# -- on the wire -------------------------------------------------------------------------------
def _wait(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _first_connect(url: str, factory_args: dict[str, object], broker: FakeBroker) -> Connect:
    factory = MqttClientFactory(parse_broker_url(url), **factory_args)  # type: ignore[arg-type]
    client = factory.build(will=("fleet/v1/x/state", b"bye"))
    factory.connect(client)
    _wait(lambda: bool(broker.connects))
    client.loop(0.1)
    client.disconnect()
    return broker.connects[0]


def test_connect_carries_credentials_keepalive_will_and_a_clean_v5_session() -> None:
    with FakeBroker(refuse="connack") as broker:
        connect = _first_connect(
            f"mqtt://kiosk%2F7:s3cret@127.0.0.1:{broker.port}",
            {"client_id": "wx-1", "keepalive": 20, "session": SessionPolicy(clean=True)},
            broker,
        )
    assert (connect.level, connect.clean, connect.keepalive) == (5, True, 20)
    assert connect.properties == {SESSION_EXPIRY: 0}
    assert (connect.username, connect.password) == ("kiosk/7", b"s3cret")
    assert (connect.will_topic, connect.will_payload) == ("fleet/v1/x/state", b"bye")
    assert (connect.will_qos, connect.will_retain) == (1, True)


def test_a_persistent_session_says_so_in_each_version() -> None:
    session = SessionPolicy(clean=False, expiry=3600, receive_maximum=4000)
    args: dict[str, object] = {"client_id": "ctl", "keepalive": 30, "session": session}
    with FakeBroker(refuse="connack") as broker:
        v5 = _first_connect(broker.url("?version=5"), args, broker)
    with FakeBroker(refuse="connack") as broker:
        v311 = _first_connect(broker.url("?version=3.1.1"), args, broker)
    assert (v5.level, v5.clean) == (5, False)
    assert v5.properties == {SESSION_EXPIRY: 3600, RECEIVE_MAXIMUM: 4000}
    assert (v311.level, v311.clean, v311.properties) == (4, False, {})


def test_built_clients_carry_the_factory_settings() -> None:
    factory = MqttClientFactory(
        parse_broker_url("mqtt://u:p@127.0.0.1:1883?version=3.1.1"),
        client_id="wx-2",
        keepalive=20,
        session=SessionPolicy(clean=True),
        max_inflight=100,
    )
    client = factory.build(will=("t", b"w"))
    assert client.protocol == mqtt.MQTTv311
    assert (client.username, client.password) == ("u", "p")
    assert (client.will_topic, client.will_payload) == ("t", b"w")
    assert client.max_inflight_messages == 100


# -- the agent's link falls back (or not) ------------------------------------------------------
def _link(url: str, will: Callable[[], tuple[str, bytes]]) -> MqttLink:
    return MqttLink(
        client_id=f"wx-fb-{uuid.uuid4().hex[:6]}",
        url=parse_broker_url(url),
        subscriptions=["fleet/v1/x/cmd/#"],
        will=will,
        on_connect=lambda: None,
        on_message=lambda topic, payload: None,
        on_published=lambda mid: None,
        keepalive=6,
        reconnect_min=0.1,
        reconnect_max=0.2,
        rng=random.Random(1),
    )


async def _until(check: Callable[[], bool], *, within: float = 10.0) -> None:
    """Poll a condition the link's callbacks change (nothing to await on)."""
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("refuse", ["connack", "connack-3.1.1", "close"])
def test_the_link_falls_back_to_311_when_the_broker_refuses_5(refuse: Refusal) -> None:
    attempts = iter(range(1, 100))

    async def main(broker: FakeBroker) -> None:
        link = _link(broker.url(), lambda: ("fleet/v1/x/state", f"will {next(attempts)}".encode()))
        link.start()
        await _until(lambda: link.connected)
        assert link.protocol_version == "3.1.1"
        assert link.last_error is None
        await link.stop()

    with FakeBroker(refuse) as broker:
        asyncio.run(main(broker))
    first, second = broker.connects
    assert (first.level, first.clean, first.properties) == (5, True, {SESSION_EXPIRY: 0})
    assert (second.level, second.clean) == (4, True)
    # each attempt carries the will of its own session
    assert [c.will_payload for c in (first, second)] == [b"will 1", b"will 2"]
    assert {c.keepalive for c in (first, second)} == {4}  # 2/3 of the promised 6 s


def test_the_link_reads_every_packet_of_a_tls_record(pki: tuple[TestCA, TestCA]) -> None:
    # a broker may put several packets in one TLS record: the loop's reader sees the socket
    # readable once, and what paho did not read yet waits decrypted inside the SSL object
    ca, _ = pki
    server = ca.server("fake-broker", ["127.0.0.1"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server.cert, server.key)
    burst = b"".join(publish_packet("fleet/v1/x/cmd/ping", b"%d" % n) for n in range(5))
    received: list[bytes] = []

    async def main(broker: FakeBroker) -> None:
        link = MqttLink(
            client_id="wx-tls-burst",
            url=parse_broker_url(f"mqtts://127.0.0.1:{broker.port}?version=3.1.1"),
            subscriptions=[],
            will=lambda: ("fleet/v1/x/state", b""),
            on_connect=lambda: None,
            on_message=lambda topic, payload: received.append(payload),
            on_published=lambda mid: None,
            keepalive=30,  # no ping (which would bring the rest) for 20 s
            tls=TlsFiles(ca=ca.cert),
        )
        link.start()
        await _until(lambda: len(received) == 5, within=3)
        await link.stop()

    with FakeBroker("close", tls=context, after_connack=burst) as broker:
        asyncio.run(main(broker))
    assert received == [b"0", b"1", b"2", b"3", b"4"]


@pytest.mark.parametrize("refuse", ["connack", "close"])
def test_a_link_pinned_to_5_never_falls_back(refuse: Refusal) -> None:
    async def main(broker: FakeBroker) -> None:
        link = _link(broker.url("?version=5"), lambda: ("fleet/v1/x/state", b"w"))
        link.start()
        await _until(lambda: len(broker.connects) >= 3)
        assert not link.connected
        assert link.protocol_version == "5"
        if refuse == "connack":
            assert link.last_error is not None and "refused" in link.last_error
        await link.stop()

    with FakeBroker(refuse) as broker:
        asyncio.run(main(broker))
    assert {c.level for c in broker.connects} == {5}


# -- the controller's ingest falls back with its persistent session ----------------------------
def test_the_controller_falls_back_to_311_and_keeps_its_session(tmp_path: Path) -> None:
    with FakeBroker("connack") as broker:
        controller = Controller(
            Settings(
                db_url=f"sqlite:///{tmp_path / 'c.db'}",
                mqtt_url=broker.url(),
                client_id="ctl-fallback",
                writer="thread",
                batch_size=1000,
            )
        )
        controller.start()
        try:
            assert controller.ingest is not None
            assert controller.ingest.connected.wait(15), controller.ingest.last_error
        finally:
            controller.stop()
    first, second = broker.connects[:2]
    assert (first.level, first.clean, first.keepalive) == (5, False, 30)
    # (6 batches in the writer + 1 filling) × batch size (docs/decisions.md 18)
    assert first.properties == {SESSION_EXPIRY: 7 * 24 * 3600, RECEIVE_MAXIMUM: 7000}
    assert (second.level, second.clean, second.client_id) == (4, False, "ctl-fallback")
    for connect in (first, second):
        assert (connect.will_topic, connect.will_qos, connect.will_retain) == (
            CONTROLLER_STATE_TOPIC,
            1,
            True,
        )


@pytest.mark.mosquitto
def test_puback_all_confirms_every_message_to_the_broker(mosquitto: Mosquitto) -> None:
    """One write for a batch's PUBACKs: the broker forgets exactly those messages, so a
    persistent session that comes back gets only the one left unconfirmed."""
    client_id = f"pubacks-{uuid.uuid4().hex[:8]}"
    factory = MqttClientFactory(
        parse_broker_url(mosquitto.url),
        client_id=client_id,
        keepalive=30,
        session=SessionPolicy(clean=False, expiry=300, receive_maximum=100),
        manual_ack=True,
    )

    def consume(expect: int) -> tuple[list[mqtt.MQTTMessage], mqtt.Client]:
        got: list[mqtt.MQTTMessage] = []
        subscribed = threading.Event()
        client = factory.build()
        client.on_message = lambda c, u, m: got.append(m)
        client.on_subscribe = lambda *args: subscribed.set()
        client.on_connect = lambda c, *args: c.subscribe("acks/#", qos=1)
        factory.connect(client)
        client.loop_start()
        assert subscribed.wait(10)
        if expect:
            deadline = time.monotonic() + 10
            while len(got) < expect and time.monotonic() < deadline:
                time.sleep(0.02)
        else:
            time.sleep(1.0)  # a redelivery comes right after the CONNACK: give it a second
        return got, client

    _, first = consume(0)  # the session and its subscription exist
    first.disconnect()
    first.loop_stop()
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{client_id}-pub")
    publisher.connect("127.0.0.1", mosquitto.port)
    publisher.loop_start()
    infos = [publisher.publish(f"acks/{n}", str(n).encode(), qos=1) for n in range(50)]
    for info in infos:
        info.wait_for_publish(10)
    publisher.disconnect()
    publisher.loop_stop()

    got, client = consume(50)
    assert [m.payload for m in got] == [str(n).encode() for n in range(50)]
    puback_all(client, [m.mid for m in got[:49]])  # all but the last
    client.disconnect()  # queued after the PUBACKs: written after them
    client.loop_stop()
    again, client = consume(1)
    assert [m.payload for m in again] == [b"49"]
    puback_all(client, [again[0].mid])
    client.disconnect()
    client.loop_stop()
    nothing, client = consume(0)
    assert nothing == []
    client.disconnect()
    client.loop_stop()


# -- paho's properties with shared tables ----------------------------------------------------
#: what MQTT allows in a string (no NUL, no U+FEFF; surrogates cannot be encoded anyway)
_MQTT_TEXT = st.characters(blacklist_characters="\x00\ufeff", blacklist_categories=("Cs",))
_PUBLISH_PROPERTIES = st.fixed_dictionaries(
    {},
    optional={
        "PayloadFormatIndicator": st.integers(0, 1),
        "MessageExpiryInterval": st.integers(0, 2**32 - 1),
        "ContentType": st.text(_MQTT_TEXT, max_size=20),
        "ResponseTopic": st.text(_MQTT_TEXT, min_size=1, max_size=20),
        "CorrelationData": st.binary(max_size=20),
        "SubscriptionIdentifier": st.lists(st.integers(1, 2**28 - 1), min_size=1, max_size=3),
        "TopicAlias": st.integers(1, 2**16 - 1),
        "UserProperty": st.lists(
            st.tuples(st.text(_MQTT_TEXT, max_size=8), st.text(_MQTT_TEXT, max_size=8)),
            min_size=1,
            max_size=3,
        ),
    },
)


def _sent(values: dict[str, object]) -> bytes:
    """A PUBLISH's property section as paho packs it."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        if isinstance(value, list):
            for item in value:
                setattr(props, name, item)
        else:
            setattr(props, name, value)
    return bytes(props.pack())  # type: ignore[no-untyped-call]


@settings(max_examples=200, deadline=None)
@given(values=_PUBLISH_PROPERTIES, payload=st.binary(max_size=8))
def test_shared_table_properties_decode_as_paho_does(
    values: dict[str, object], payload: bytes
) -> None:
    """Whatever properties a PUBLISH carries (none: all of a fleet's telemetry), the shared
    tables decode the same values and consume the same bytes as paho's own class."""
    packed = _sent(values) + payload
    theirs, their_length = Properties(PacketTypes.PUBLISH).unpack(packed)  # type: ignore[no-untyped-call]
    ours, our_length = SharedTableProperties(PacketTypes.PUBLISH).unpack(packed)
    assert our_length == their_length
    assert ours.json() == theirs.json()  # type: ignore[no-untyped-call]
    assert ours.isEmpty() == theirs.isEmpty() == (not values)  # type: ignore[no-untyped-call]


def test_shared_table_properties_clear_what_an_earlier_unpack_set() -> None:
    """Unpacked again (paho's own code never does, but the class allows it), an object drops
    what the earlier packet set, as paho's does."""
    props = SharedTableProperties(PacketTypes.PUBLISH)
    props.unpack(_sent({"ContentType": "json"}))
    assert props.json() == {"ContentType": "json"}  # type: ignore[no-untyped-call]
    props.unpack(b"\x00")
    assert props.isEmpty()  # type: ignore[no-untyped-call]


def test_shared_property_tables_decode_what_paho_receives(mosquitto: Mosquitto) -> None:
    """Installed, paho's own packet decoding builds the shared-table class, and a message
    sent with properties arrives with them (and one without, with none)."""
    from paho.mqtt import _packet

    before = _packet.Properties  # type: ignore[attr-defined]
    try:
        assert share_property_tables()
        got: list[mqtt.MQTTMessage] = []
        received = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        subscribed = threading.Event()
        client.on_subscribe = lambda *args: subscribed.set()

        def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
            got.append(m)
            if len(got) == 2:
                received.set()

        client.on_message = on_message
        host, port = mosquitto.url.removeprefix("mqtt://").split(":")
        client.connect(host, int(port))
        client.loop_start()
        topic = f"test/shared-props/{uuid.uuid4().hex[:8]}"
        client.subscribe(topic, qos=1)
        assert subscribed.wait(10)
        with_props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        with_props.ContentType = "application/json"
        with_props.UserProperty = ("k", "v")
        client.publish(topic, b"a", qos=1, properties=with_props)
        client.publish(topic, b"b", qos=1)
        assert received.wait(10)
        client.disconnect()
        client.loop_stop()
        assert all(isinstance(m.properties, SharedTableProperties) for m in got)
        by_payload = {m.payload: m.properties.json() for m in got}  # type: ignore[union-attr]
        assert by_payload == {
            b"a": {"ContentType": "application/json", "UserProperty": [("k", "v")]},
            b"b": {},
        }
    finally:
        setattr(_packet, "Properties", before)  # noqa: B010


# -- reading ahead -----------------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=3000),
    sizes=st.lists(st.integers(1, 700), min_size=1, max_size=50),
    chunk=st.integers(1, 1024),
)
def test_read_ahead_socket_reads_the_stream_as_it_was_sent(
    data: bytes, sizes: list[int], chunk: int
) -> None:
    """Whatever sizes paho asks for and however the socket hands the bytes over, the reads
    are the stream in order, none longer than asked, and ``pending`` is what is buffered."""
    import socket

    ours, theirs = socket.socketpair()
    reader = ReadAheadSocket(ours)
    reader.CHUNK = chunk  # type: ignore[misc]
    theirs.sendall(data)
    theirs.close()
    got = b""
    for size in sizes * (len(data) // len(sizes) + 1):
        buffered = reader.pending()
        piece = reader.recv(size)
        assert len(piece) <= size
        assert buffered == 0 or len(piece) == min(size, buffered)
        if not piece:
            break
        got += piece
    while piece := reader.recv(700):
        got += piece
    reader.close()
    assert got == data


def test_a_read_ahead_client_gets_every_message_in_order(mosquitto: Mosquitto) -> None:
    """Through the factory (read_ahead, as the ingest builds it), a burst of QoS 1 messages
    queued for a persistent session comes in order and complete: many packets per read."""
    client_id = f"readahead-{uuid.uuid4().hex[:8]}"
    topic = f"test/readahead/{uuid.uuid4().hex[:8]}"
    factory = MqttClientFactory(
        parse_broker_url(mosquitto.url),
        client_id=client_id,
        keepalive=30,
        session=SessionPolicy(clean=False, expiry=300, receive_maximum=1000),
        read_ahead=True,
    )
    subscribed = threading.Event()
    first = factory.build()
    assert isinstance(first, ReadAheadClient)
    first.on_subscribe = lambda *args: subscribed.set()
    factory.connect(first)
    first.loop_start()
    first.subscribe(topic, qos=1)
    assert subscribed.wait(10)
    first.disconnect()
    first.loop_stop()

    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    host, port = mosquitto.url.removeprefix("mqtt://").split(":")
    publisher.connect(host, int(port))
    publisher.loop_start()
    sent = [f"{n:05d}".encode() * (1 + n % 300) for n in range(2000)]
    for payload in sent:
        publisher.publish(topic, payload, qos=1)
    publisher.publish(topic, b"end", qos=1).wait_for_publish(10)
    publisher.disconnect()
    publisher.loop_stop()

    got: list[bytes] = []
    done = threading.Event()
    client = factory.build()

    def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        if m.payload == b"end":
            done.set()
        else:
            got.append(m.payload)

    client.on_message = on_message
    factory.connect(client)
    client.loop_start()
    assert done.wait(30)
    client.disconnect()
    client.loop_stop()
    assert got == sent
