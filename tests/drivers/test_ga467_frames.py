"""GA 467 SAM_V codec: worked examples, round trips, and garbage that never crashes."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kioskfleet.drivers.cards import IdCard
from kioskfleet.drivers.exceptions import FrameError
from kioskfleet.drivers.ga467 import FAKE_CITIZEN, frames

bytes_ = st.integers(0, 255)


@pytest.mark.parametrize(
    ("frame", "hex_"),
    [
        (frames.encode_command(0x20, 0x01), "aaaaaa9669 0003 2001 22"),
        (frames.encode_command(0x20, 0x02), "aaaaaa9669 0003 2002 21"),
        (frames.encode_command(0x30, 0x01), "aaaaaa9669 0003 3001 32"),
        (frames.encode_command(0x11, 0xFF), "aaaaaa9669 0003 11ff ed"),
        (frames.encode_response(0x9F, bytes(4)), "aaaaaa9669 0008 00009f 00000000 97"),
        (frames.encode_response(0x80), "aaaaaa9669 0004 000080 84"),
        (frames.encode_response(0x90, bytes(8)), "aaaaaa9669 000c 000090 0000000000000000 9c"),
        (frames.encode_response(0x41), "aaaaaa9669 0004 000041 45"),
        (frames.encode_response(0x90), "aaaaaa9669 0004 000090 94"),
    ],
)
def test_worked_examples(frame: bytes, hex_: str) -> None:
    assert frame == bytes.fromhex(hex_)


def test_read_reply_has_the_documented_length() -> None:
    frame = frames.encode_response(0x90, frames.encode_read_reply(FAKE_CITIZEN))
    assert len(frame) == 1295
    assert frame[:14] == bytes.fromhex("aaaaaa9669 0508 000090 0100 0400")


@given(bytes_, bytes_, st.binary(max_size=300))
def test_command_round_trip(cmd: int, para: int, data: bytes) -> None:
    assert frames.decode_command(frames.encode_command(cmd, para, data)) == frames.Command(
        cmd, para, data
    )


@given(bytes_, bytes_, bytes_, st.binary(max_size=300))
def test_response_round_trip(sw1: int, sw2: int, sw3: int, data: bytes) -> None:
    reply = frames.decode_response(frames.encode_response(sw3, data, sw1=sw1, sw2=sw2))
    assert (reply.sw1, reply.sw2, reply.sw3, reply.data) == (sw1, sw2, sw3, data)


def test_response_repr_hides_data() -> None:
    reply = frames.Response(0, 0, 0x90, "测试公民".encode("utf-16-le"))
    assert "data=<8 bytes>" in repr(reply)


@given(
    st.binary(max_size=50).filter(lambda b: 0xAA not in b),
    st.lists(st.binary(max_size=40), min_size=1, max_size=4),
    st.data(),
)
def test_stream_reassembly_skips_garbage(
    garbage: bytes, payloads: list[bytes], data: st.DataObject
) -> None:
    sent = [frames.encode_response(0x90, p) for p in payloads]
    stream = garbage + b"".join(sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    buffer = b""
    found: list[bytes] = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        buffer += stream[previous:cut]
        previous = cut
        while True:
            frame, consumed, need = frames.next_frame(buffer)
            assert need >= 1
            buffer = buffer[consumed:]
            if frame is not None:
                found.append(frame)
            elif not consumed:
                break
    assert found == sent


@given(st.binary(max_size=400))
def test_random_bytes_only_raise_frame_errors(data: bytes) -> None:
    _, consumed, need = frames.next_frame(data)
    assert 0 <= consumed <= len(data)
    assert need >= 1
    for decode in (frames.decode_command, frames.decode_response, frames.decode_read_reply):
        with contextlib.suppress(FrameError):
            decode(data)
    with contextlib.suppress(FrameError):
        frames.decode_text(data[:256].ljust(256, b"\x00"))
    frames.format_sam_id(data)


def _field(max_chars: int) -> st.SearchStrategy[str]:
    # BMP characters (UCS-2), no trailing padding the decoder would strip
    chars = st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",))
    return st.text(chars, max_size=max_chars).filter(lambda s: s == s.rstrip(" \x00"))


dates = st.dates(dt.date(1900, 1, 1), dt.date(2099, 12, 31))
cards = st.builds(
    IdCard,
    name=_field(15),
    sex=st.sampled_from(["male", "female", "unknown", "unspecified"]),
    nation=st.sampled_from([f"{n:02d}" for n in range(1, 57)] + ["97", "98"]),
    birth_date=dates,
    address=_field(35),
    id_number=st.from_regex(r"\A[0-9]{17}[0-9X]\Z"),
    issuer=_field(15),
    valid_from=dates,
    valid_until=st.none() | dates,
    photo=st.binary(min_size=1024, max_size=1024),
)


@given(cards)
def test_text_record_round_trip(card: IdCard) -> None:
    record = frames.encode_text(card)
    assert len(record) == frames.TEXT_SIZE
    assert frames.decode_read_reply(frames.encode_read_reply(card)) == card


def test_lifelong_validity() -> None:
    lifelong = dataclasses.replace(FAKE_CITIZEN, valid_until=None, photo=b"")
    record = frames.encode_text(lifelong)
    assert "长期".encode("utf-16-le") in record
    assert frames.decode_text(record) == lifelong


def test_bad_date_error_names_the_field_not_the_value() -> None:
    record = bytearray(frames.encode_text(FAKE_CITIZEN))
    record[36:52] = "19001399".encode("utf-16-le")  # birth date: month 13
    with pytest.raises(FrameError) as err:
        frames.decode_text(bytes(record))
    assert "birth date" in str(err.value)
    assert "1900" not in str(err.value)


def test_sam_id_format_round_trip() -> None:
    text = "05.01-20130101-0009346211-2363129087"
    assert frames.format_sam_id(frames.encode_sam_id(text)) == text
    assert frames.format_sam_id(b"\x01\x02") == "0102"
    assert frames.format_sam_id(b"") is None
