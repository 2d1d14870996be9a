"""CRT-591 codec: worked examples, round trips, and garbage that never crashes."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kioskfleet.drivers.crt591 import frames
from kioskfleet.drivers.exceptions import FrameError

bytes_ = st.integers(0, 255)
printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=1)
data_ = st.binary(max_size=frames.MAX_DATA)


@pytest.mark.parametrize(
    ("frame", "hex_"),
    [
        (frames.encode_command(0x31, 0x30), "f2 00 0003 433130 03 b0"),
        (frames.encode(frames.Positive(0x31, 0x30, "020")), "f2 00 0006 503130 303230 03 94"),
        (frames.encode_command(0x32, 0x31), "f2 00 0003 433231 03 b2"),
        (frames.encode(frames.Negative(0x32, 0x31, "A0")), "f2 00 0005 4e3231 4130 03 c8"),
    ],
)
def test_worked_examples(frame: bytes, hex_: str) -> None:
    assert frame == bytes.fromhex(hex_)
    assert frames.encode(frames.decode(frame)) == frame


@given(bytes_, bytes_, data_, bytes_)
def test_command_round_trip(cm: int, pm: int, data: bytes, addr: int) -> None:
    command = frames.Command(cm, pm, data, addr)
    assert frames.decode(frames.encode(command)) == command


@given(bytes_, bytes_, st.tuples(printable, printable, printable).map("".join), data_, bytes_)
def test_positive_round_trip(cm: int, pm: int, status: str, data: bytes, addr: int) -> None:
    reply = frames.Positive(cm, pm, status, data, addr)
    assert frames.decode(frames.encode(reply)) == reply


@given(bytes_, bytes_, st.tuples(printable, printable).map("".join), data_)
def test_negative_round_trip(cm: int, pm: int, error: str, data: bytes) -> None:
    reply = frames.Negative(cm, pm, error, data)
    assert frames.decode(frames.encode(reply)) == reply


@given(
    st.binary(max_size=30).filter(lambda b: frames.STX not in b),
    st.lists(st.tuples(bytes_, bytes_, st.binary(max_size=30)), min_size=1, max_size=4),
    st.data(),
)
def test_stream_reassembly_skips_garbage(
    garbage: bytes, commands: list[tuple[int, int, bytes]], data: st.DataObject
) -> None:
    sent = [frames.encode_command(cm, pm, payload) for cm, pm, payload in commands]
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


@given(st.binary(max_size=600))
def test_random_bytes_only_raise_frame_errors(data: bytes) -> None:
    _, consumed, need = frames.next_frame(data)
    assert 0 <= consumed <= len(data)
    assert need >= 1
    with contextlib.suppress(FrameError):
        frames.decode(data)


@given(st.binary(min_size=1, max_size=40))
def test_framed_random_text_only_raises_frame_errors(text: bytes) -> None:
    body = bytes([frames.STX, 0]) + len(text).to_bytes(2, "big") + text + bytes([frames.ETX])
    with contextlib.suppress(FrameError):
        frames.decode(body + bytes([frames.bcc(body)]))


def test_a_flipped_bit_is_caught() -> None:
    frame = bytearray(frames.encode_command(0x31, 0x30))
    frame[5] ^= 0x01
    with pytest.raises(FrameError, match="BCC"):
        frames.decode(bytes(frame))
