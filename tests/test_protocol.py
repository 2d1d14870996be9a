"""The wire contract: topics, models, and rejection of every kind of bad payload."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kioskfleet.protocol import (
    MAX_PAYLOAD_BYTES,
    ProtocolError,
    decode_agent_message,
    is_valid_station_id,
    parse_topic,
)
from kioskfleet.protocol.broker_url import parse_broker_url
from kioskfleet.protocol.devices import DeviceStatus
from kioskfleet.protocol.messages import Reply, TelemetryMessage, decode_telemetry_record
from tests.hypothesis_profiles import examples

STATION = "wx-binhu-sub-03"


def envelope(**extra: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "station": STATION,
        "session": 1764000000000,
        "seq": 1,
        "ts": 1764000000.5,
        **extra,
    }


def printer(**fields: Any) -> dict[str, Any]:
    """A printer's status in the device vocabulary, with ``fields`` changed."""
    return {"device": "printer", "driver": "escpos", "state": "online", "faults": [], **fields}


def telemetry(**extra: Any) -> bytes:
    body = envelope(
        host={"cpu_percent": 3.5, "temperature_c": None},
        devices={
            "printer": {
                "device": "printer",
                "driver": "escpos",
                "state": "online",
                "faults": [],
                "supplies": {"paper": "low"},
            }
        },
        counters={"commands": 0},
    )
    body.update(extra)
    return json.dumps(body).encode()


def test_good_telemetry_decodes() -> None:
    message = decode_agent_message("telemetry", STATION, telemetry())
    assert message.seq == 1
    assert message.devices["printer"].supplies == {"paper": "low"}


def test_birth_needs_its_description_and_seq_zero() -> None:
    birth = envelope(
        seq=0,
        online=True,
        district="Binhu",
        site="Taihu Square Metro Station",
        site_type="subway_station",
        profile="estation-gen2",
        telemetry_interval=10,
    )
    assert decode_agent_message("state", STATION, json.dumps(birth).encode()).online
    for window in ("01:00-05:00", "23:00-02:00"):
        windowed = json.dumps({**birth, "maintenance_window": window}).encode()
        assert decode_agent_message("state", STATION, windowed).maintenance_window == window
    will = envelope(seq=0, online=False)
    assert not decode_agent_message("state", STATION, json.dumps(will).encode()).online
    for broken in (
        {**birth, "district": None},
        {**birth, "seq": 3},
        {k: v for k, v in birth.items() if k != "profile"},
        {**birth, "maintenance_window": "1:00-5:00"},
        {**birth, "maintenance_window": "24:00-05:00"},
        {**birth, "maintenance_window": "01:00"},
        {**birth, "maintenance_window": 1},
    ):
        with pytest.raises(ProtocolError) as err:
            decode_agent_message("state", STATION, json.dumps(broken).encode())
        assert err.value.reason == "schema"


BAD = [
    ("not json", b"{not json", "not_json"),
    ("not utf-8", b"\xff\xfe{}", "not_json"),
    ("empty", b"", "not_json"),
    ("a list", b"[1, 2]", "schema"),
    ("seq as string", telemetry(seq="1"), "schema"),
    ("negative seq", telemetry(seq=-1), "schema"),
    ("seq zero on telemetry", telemetry(seq=0), "schema"),
    ("session as float", telemetry(session=1.5), "schema"),
    ("bool as seq", telemetry(seq=True), "schema"),
    (
        "ts missing",
        json.dumps({k: v for k, v in json.loads(telemetry()).items() if k != "ts"}).encode(),
        "schema",
    ),
    ("ts NaN", telemetry().replace(b'"ts": 1764000000.5', b'"ts": NaN'), "schema"),
    ("NaN host metric", telemetry(host={"cpu_percent": float("nan")}), "schema"),
    ("infinite host metric", telemetry(host={"cpu_percent": float("inf")}), "schema"),
    (
        "overflowing host metric",
        telemetry(host={"temp": 1}).replace(b'"temp": 1', b'"temp": 1e400'),
        "schema",
    ),
    (
        "NaN deep in a device event",
        telemetry(devices={"printer": printer(events=[{"x": -float("inf")}])}),
        "schema",
    ),
    ("future v", telemetry(v=2), "version"),
    ("v as string", telemetry(v="1"), "version"),
    ("other station", telemetry(station="wx-xishan-gov-01"), "station_mismatch"),
    ("illegal station id", telemetry(station="X"), "schema"),
    (
        "unknown device state",
        telemetry(devices={"printer": printer(state="on fire")}),
        "schema",
    ),
    (
        "unknown slot",
        telemetry(devices={"toaster": printer()}),
        "schema",
    ),
    ("oversized", telemetry(pad="x" * MAX_PAYLOAD_BYTES), "too_large"),
]


@pytest.mark.parametrize(
    ("payload", "reason"), [(p, r) for _, p, r in BAD], ids=[n for n, _, _ in BAD]
)
def test_bad_payloads_are_rejected_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as err:
        decode_agent_message("telemetry", STATION, payload)
    assert err.value.reason == reason
    assert str(err.value)


@pytest.mark.parametrize(
    ("payload", "reason"), [(p, r) for _, p, r in BAD], ids=[n for n, _, _ in BAD]
)
def test_the_writers_telemetry_decoder_rejects_the_same_with_the_same_words(
    payload: bytes, reason: str
) -> None:
    with pytest.raises(ProtocolError) as err:
        decode_telemetry_record(STATION, payload)
    assert err.value.reason == reason
    with pytest.raises(ProtocolError) as as_models:
        decode_agent_message("telemetry", STATION, payload)
    assert str(err.value) == str(as_models.value)


def _verdict(decode: Any) -> Any:
    try:
        return decode()
    except ProtocolError as err:
        return err.reason


def _agree(payload: bytes) -> None:
    """decode_telemetry_record and decode_agent_message take and refuse the same payloads,
    and what they take says the same."""
    record = _verdict(lambda: decode_telemetry_record(STATION, payload))
    model = _verdict(lambda: decode_agent_message("telemetry", STATION, payload))
    if isinstance(model, str) or isinstance(record, str):
        assert record == model
        return
    assert isinstance(model, TelemetryMessage)
    as_sent = {
        slot: status.model_dump(exclude_unset=True) for slot, status in model.devices.items()
    }
    assert record.devices == as_sent
    assert (record.station, record.session, record.seq, record.ts) == (
        model.station,
        model.session,
        model.seq,
        model.ts,
    )
    assert (record.host, record.counters, record.dropped) == (
        model.host,
        model.counters,
        model.dropped,
    )
    assert {s: DeviceStatus.model_validate(d) for s, d in record.devices.items()} == model.devices


def test_the_writers_telemetry_decoder_reads_what_the_models_read() -> None:
    lean = {"printer": printer(supplies={"paper": "low"}, media="present", extra="ignored")}
    for payload in (
        telemetry(),
        telemetry(devices=lean, host={}, counters={"a": 0, "b": 2**62}),
        telemetry(devices={"printer": printer(info={"model": "M", "serial": None})}),
        telemetry(dropped=[{"session": 1, "from_seq": 2, "to_seq": 3, "kind": "lost"}]),
        telemetry(devices={"printer": printer(events=[{"x": 1.5}])}),
    ):
        _agree(payload)


def test_events_and_replies() -> None:
    events = envelope(
        events=[
            {
                "type": "device_status",
                "device": "printer",
                "status": {
                    "device": "printer",
                    "driver": "escpos",
                    "state": "user_error",
                    "faults": ["paper_out"],
                },
            },
            {"type": "credit", "value": 10000, "currency": "CNY", "channel": 4},
        ]
    )
    message = decode_agent_message("events", STATION, json.dumps(events).encode())
    assert message.events[1].model_dump()["value"] == 10000
    with pytest.raises(ProtocolError):
        half = envelope(events=[{"type": "device_status", "device": "printer"}])
        decode_agent_message("events", STATION, json.dumps(half).encode())
    reply = envelope(id="c1", status="ok", result={"x": 1})
    assert decode_agent_message("reply", STATION, json.dumps(reply).encode()).status == "ok"
    with pytest.raises(ProtocolError):
        decode_agent_message("reply", STATION, json.dumps({**reply, "status": "fine"}).encode())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=examples(300))
@given(
    kind=st.sampled_from(["state", "telemetry", "events", "reply"]), payload=st.binary(max_size=300)
)
def test_random_bytes_never_raise_anything_else(kind: str, payload: bytes) -> None:
    with contextlib.suppress(ProtocolError):  # anything else fails the test
        decode_agent_message(kind, STATION, payload)


@settings(max_examples=examples(300))
@given(
    kind=st.sampled_from(["state", "telemetry", "events", "reply"]),
    doc=st.dictionaries(
        st.sampled_from(
            [
                "v",
                "station",
                "session",
                "seq",
                "ts",
                "online",
                "host",
                "devices",
                "events",
                "id",
                "status",
                "dropped",
            ]
        ),
        json_values,
    ),
)
def test_random_documents_never_raise_anything_else(kind: str, doc: dict[str, Any]) -> None:
    with contextlib.suppress(ProtocolError):  # anything else fails the test
        decode_agent_message(kind, STATION, json.dumps(doc).encode())


@pytest.mark.parametrize(
    ("station", "ok"),
    [
        ("wx-binhu-sub-03", True),
        ("sim-0001", True),
        ("abc", True),
        ("ab", False),
        ("Wx-1", False),
        ("-abc", False),
        ("controller", False),
        ("a" * 64, True),
        ("a" * 65, False),
        ("wx_1", False),
    ],
)
def test_station_ids(station: str, ok: bool) -> None:
    assert is_valid_station_id(station) is ok


def test_topics() -> None:
    assert parse_topic("fleet/v1/wx-binhu-sub-03/telemetry") == (STATION, "telemetry", None)
    assert parse_topic("fleet/v1/wx-binhu-sub-03/cmd/rebirth") == (STATION, "cmd", "rebirth")
    for bad in (
        "fleet/v2/abc/telemetry",
        "fleet/v1/controller/state",
        "fleet/v1/abc/telemetry/x",
        "x",
    ):
        with pytest.raises(ProtocolError):
            parse_topic(bad)


def test_broker_urls() -> None:
    url = parse_broker_url("mqtt://broker.example:1884?version=3.1.1")
    assert (url.host, url.port, url.version, url.tls) == ("broker.example", 1884, "3.1.1", False)
    assert parse_broker_url("mqtts://b").port == 8883
    for bad in ("http://x", "mqtt://", "mqtt://x?version=4", "mqtt://x:notaport"):
        with pytest.raises(ValueError):
            parse_broker_url(bad)


def test_non_finite_numbers_are_refused_anywhere_but_look_alike_text_is_fine() -> None:
    def reply(result: str) -> bytes:
        return (
            b'{"v": 1, "station": "%s", "session": 1, "seq": 2, "ts": 1.0, "id": "c1", '
            b'"status": "ok", "result": %s}' % (STATION.encode(), result.encode())
        )

    fine = decode_agent_message(
        "reply", STATION, reply('{"note": "NaN Infinity 1e400", "n": 2e10}')
    )
    assert isinstance(fine, Reply) and fine.result == {"note": "NaN Infinity 1e400", "n": 2e10}
    for bad in ("NaN", "[1, -Infinity]", '{"big": 1E+400}', '{"big": 12e0400}'):
        with pytest.raises(ProtocolError) as err:
            decode_agent_message("reply", STATION, reply(bad))
        assert err.value.reason == "schema" and "number" in str(err.value)


@pytest.mark.parametrize("result", ['"a\\u0000b"', '{"k\\u0000": 1}', '[["\\u0000"]]'])
def test_nul_characters_are_refused_anywhere(result: str) -> None:
    # PostgreSQL text refuses NUL: one such message would make every retry of its batch fail
    payload = {"v": 1, "station": STATION, "session": 1, "seq": 2, "ts": 1.0, "id": "c1"}
    raw = json.dumps({**payload, "status": "ok"})[:-1] + f', "result": {result}}}'
    with pytest.raises(ProtocolError) as err:
        decode_agent_message("reply", STATION, raw.encode())
    assert err.value.reason == "schema" and "NUL" in str(err.value)


def test_an_escaped_backslash_before_u0000_is_not_a_nul() -> None:
    payload = {"v": 1, "station": STATION, "session": 1, "seq": 2, "ts": 1.0, "id": "c1"}
    text = "a\\u0000b"  # backslash, then the letters u0000
    message = decode_agent_message(
        "reply", STATION, json.dumps({**payload, "status": "ok", "result": text}).encode()
    )
    assert isinstance(message, Reply) and message.result == text


@settings(max_examples=examples(300))
@given(
    doc=st.fixed_dictionaries(
        {"v": st.just(1), "station": st.just(STATION), "session": st.just(1), "ts": st.just(1.0)},
        optional={
            "seq": st.integers(-1, 3) | st.booleans() | st.text(max_size=2),
            "host": st.dictionaries(st.text(max_size=3), st.none() | st.floats() | st.integers()),
            "counters": st.dictionaries(st.text(max_size=3), st.integers() | st.floats()),
            "dropped": st.lists(
                st.fixed_dictionaries(
                    {"session": st.integers(-1, 3), "from_seq": st.integers(0, 3)},
                    optional={"to_seq": st.integers(0, 3), "kind": st.sampled_from(["lost", "x"])},
                ),
                max_size=2,
            ),
            "devices": st.dictionaries(
                st.sampled_from(["printer", "printer_2", "toaster", "card_reader"]),
                st.fixed_dictionaries(
                    {
                        "device": st.sampled_from(["printer", "card_reader", "fax"]),
                        "driver": st.sampled_from(["escpos", "crt591", "?"]),
                        "state": st.sampled_from(["online", "busy", "on fire"]),
                    },
                    optional={
                        "faults": st.lists(st.text(max_size=3), max_size=2) | st.none(),
                        "info": st.none()
                        | st.dictionaries(
                            st.sampled_from(["model", "serial", "firmware", "x"]),
                            st.none() | st.text(max_size=3) | st.integers(),
                        ),
                        "supplies": st.dictionaries(
                            st.text(max_size=3), st.text(max_size=3) | st.integers()
                        ),
                        "media": st.none() | st.sampled_from(["present", "wet"]),
                        "events": st.lists(st.dictionaries(st.text(max_size=2), json_values)),
                    },
                ),
                max_size=3,
            ),
        },
    )
)
def test_the_writers_telemetry_decoder_agrees_on_random_documents(doc: dict[str, Any]) -> None:
    _agree(json.dumps(doc).encode())
