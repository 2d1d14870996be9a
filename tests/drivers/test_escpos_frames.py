"""ESC/POS codec: worked examples from the notes, round trips, and garbage that never crashes."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kioskfleet.drivers.escpos import frames
from kioskfleet.drivers.escpos.frames import (
    Asb,
    Flow,
    Garbage,
    PrinterFlags,
    RealTime,
    Text,
)
from kioskfleet.drivers.exceptions import FrameError

flags_strategy = st.builds(
    PrinterFlags, **{f.name: st.booleans() for f in dataclasses.fields(PrinterFlags)}
)
# everything GB18030 can encode that a receipt line may hold: no control characters
line_text = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Cc"), blacklist_characters="\x7f", max_codepoint=0x2FFFF
    ),
    max_size=40,
)


# -- worked examples (device-protocols.md §1.3–§1.6) -----------------------------------------------
def test_all_ok_is_0x12() -> None:
    assert frames.encode_dle_eot(PrinterFlags()) == bytes([0x12] * 4)
    assert frames.decode_dle_eot(bytes([0x12] * 4)) == PrinterFlags()


def test_out_of_paper_example() -> None:
    # DLE EOT 1/2/4 -> 1A 32 7E: offline, stopped by paper end, near end + end
    flags = frames.decode_dle_eot(bytes([0x1A, 0x32, 0x12, 0x7E]))
    assert flags.offline
    assert flags.paper_end_stop
    assert flags.paper_near_end
    assert flags.paper_end
    assert not flags.cover_open


@pytest.mark.parametrize(
    ("byte", "field"),
    [(0x1A, "cutter_error"), (0x32, "unrecoverable_error"), (0x52, "recoverable_error")],
)
def test_dle_eot_3_examples(byte: int, field: str) -> None:
    flags = frames.decode_dle_eot(bytes([0x12, 0x12, byte, 0x12]))
    assert frames.flag_names(flags) == [field]


def test_either_sensor_bit_counts() -> None:
    # Citizen splits near-end (bits 2/3) and end (5/6) between two sensors
    assert frames.decode_dle_eot(bytes([0x12, 0x12, 0x12, 0x16])).paper_near_end
    assert frames.decode_dle_eot(bytes([0x12, 0x12, 0x12, 0x32])).paper_end


def test_asb_examples() -> None:
    assert frames.encode_asb(PrinterFlags()) == bytes([0x10, 0, 0, 0])
    cover = frames.decode_asb(bytes([0x38, 0, 0, 0]))
    assert (cover.offline, cover.cover_open) == (True, True)
    out = frames.decode_asb(bytes([0x18, 0, 0x0F, 0]))
    assert (out.offline, out.paper_end, out.paper_near_end, out.paper_end_stop) == (
        True,
        True,
        True,
        True,
    )


@pytest.mark.parametrize(
    "replies", [b"", b"\x12\x12\x12", bytes([0x12, 0x12, 0x12, 0x10]), bytes([0x00] * 4)]
)
def test_dle_eot_rejects_wrong_bytes(replies: bytes) -> None:
    with pytest.raises(FrameError):
        frames.decode_dle_eot(replies)


def test_reply_patterns_are_disjoint() -> None:
    for byte in range(256):
        kinds = [
            frames.is_realtime_reply(byte),
            frames.is_asb_first(byte),
            byte in (frames.XON, frames.XOFF),
        ]
        assert sum(kinds) <= 1, hex(byte)


def test_requests_on_the_wire() -> None:
    assert frames.status_request(4) == b"\x10\x04\x04"
    assert frames.identity_request(frames.ID_MODEL) == b"\x1d\x49\x43"
    assert frames.asb_request(15) == b"\x1d\x61\x0f"
    assert frames.recovery_request(1) == b"\x10\x05\x01"
    assert frames.encode_cut("partial") == b"\x1d\x56\x42\x00"
    assert frames.encode_cut("full") == b"\x1d\x56\x41\x00"
    assert frames.encode_cut("none") == b""
    with pytest.raises(ValueError, match="1 to 4"):
        frames.status_request(5)


def test_qr_commands_on_the_wire() -> None:
    data = frames.encode_qr(b"AB", size=4, level="H")
    assert data == (
        b"\x1d(k\x04\x001A2\x00"  # model 2
        b"\x1d(k\x03\x001C\x04"  # module size 4
        b"\x1d(k\x03\x001E3"  # level H
        b"\x1d(k\x05\x001P0AB"  # store "AB"
        b"\x1d(k\x03\x001Q0"  # print
    )


def test_chinese_line_is_gb18030() -> None:
    assert frames.encode_line("无锡", chinese=True) == "无锡".encode("gb18030") + b"\n"
    assert frames.encode_line("无锡", chinese=False) == b"??\n"
    with pytest.raises(ValueError, match="control"):
        frames.encode_line("a\x1bb", chinese=True)


def test_receipt_starts_with_init_and_chinese_mode() -> None:
    data = frames.encode_receipt(["hi"], cut="partial")
    assert data.startswith(frames.INITIALISE + frames.CHINESE_ON + b"hi\n")
    assert data.endswith(b"\x1d\x56\x42\x00")


# -- splitting replies -----------------------------------------------------------------------------
def test_split_routes_every_kind() -> None:
    buffer = (
        b"\x13\x12"  # XOFF, DLE EOT reply
        + b"\x18\x00\x13\x0f\x00"  # ASB with an XOFF inside
        + b"\x11"  # XON
        + b"_TM-T82\x00"  # GS I string
        + b"\xff"  # noise
        + b"\x10\x00"  # incomplete ASB
    )
    replies, used = frames.split_replies(buffer)
    assert replies == [
        Flow(xoff=True),
        RealTime(0x12),
        Flow(xoff=True),
        Asb(b"\x18\x00\x0f\x00"),
        Flow(xoff=False),
        Text("TM-T82"),
        Garbage(0xFF),
    ]
    assert buffer[used:] == b"\x10\x00"


def test_false_asb_start_is_dropped() -> None:
    # 0x10 then a DLE EOT reply: 0x12 cannot be an ASB byte, so 0x10 was noise
    assert frames.split_replies(b"\x10\x12") == ([Garbage(0x10), RealTime(0x12)], 2)


def test_false_text_header_is_dropped() -> None:
    assert frames.split_replies(b"_ab\x12") == (
        [Garbage(0x5F), Garbage(ord("a")), Garbage(ord("b")), RealTime(0x12)],
        4,
    )


reply_items = st.one_of(
    flags_strategy.map(lambda f: ("rt", frames.encode_dle_eot(f)[0:1])),
    flags_strategy.map(lambda f: ("asb", frames.encode_asb(f))),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20).map(
        lambda t: ("text", frames.encode_text_reply(t))
    ),
    st.sampled_from([("flow", b"\x11"), ("flow", b"\x13")]),
)


@given(st.lists(reply_items, max_size=20))
def test_split_recovers_a_reply_stream(items: list[tuple[str, bytes]]) -> None:
    buffer = b"".join(data for _, data in items)
    replies, used = frames.split_replies(buffer)
    assert used == len(buffer)
    kinds = {RealTime: "rt", Asb: "asb", Text: "text", Flow: "flow"}
    assert [kinds[type(r)] for r in replies] == [kind for kind, _ in items]


@given(st.binary(max_size=200))
def test_split_never_raises_and_feeding_bytewise_agrees(data: bytes) -> None:
    whole, used = frames.split_replies(data)
    assert 0 <= used <= len(data)
    # the same bytes arriving one at a time give the same replies
    pending = b""
    bytewise: list[frames.Reply] = []
    for byte in data:
        pending += bytes([byte])
        replies, consumed = frames.split_replies(pending)
        bytewise += replies
        pending = pending[consumed:]
    assert bytewise == whole
    assert pending == data[used:]


# -- round trips -----------------------------------------------------------------------------------
@given(flags_strategy)
def test_dle_eot_round_trip(flags: PrinterFlags) -> None:
    replies = frames.encode_dle_eot(flags)
    assert all(frames.is_realtime_reply(b) for b in replies)
    assert frames.decode_dle_eot(replies) == flags


@given(flags_strategy)
def test_asb_round_trip(flags: PrinterFlags) -> None:
    block = frames.encode_asb(flags)
    assert frames.is_asb_first(block[0])
    assert all(frames.is_asb_next(b) for b in block[1:])
    view = frames.decode_asb(block)
    assert frames.encode_asb(view) == block
    # what ASB carries directly survives unchanged
    for name in ("offline", "cover_open", "cutter_error", "unrecoverable_error", "paper_end"):
        assert getattr(view, name) == getattr(flags, name)


@given(st.binary(min_size=4, max_size=4))
def test_decoders_accept_or_raise_frame_error(data: bytes) -> None:
    for decode in (frames.decode_dle_eot, frames.decode_asb):
        with contextlib.suppress(FrameError):
            decode(data)


@given(
    st.lists(line_text, max_size=8),
    st.none() | st.text(min_size=1, max_size=300),
    st.sampled_from(["partial", "full", "none"]),
)
def test_receipt_round_trip_through_the_tokenizer(
    lines: list[str], qr: str | None, cut: frames.CutMode
) -> None:
    data = frames.encode_receipt(lines, qr, cut=cut, feed_lines=0)
    commands, rest = frames.parse_commands(data)
    assert rest == b""
    text: list[str] = []
    current = b""
    payloads: list[bytes] = []
    for command in commands:
        if command.name == "text":
            current += command.data
        elif command.name == "lf":
            text.append(current.decode("gb18030"))
            current = b""
        elif command.name == "gs_k" and command.data[1] == 80:
            payloads.append(command.data[3:])
    expected_lines = [*lines, ""] if qr else list(lines)
    assert text == expected_lines
    assert payloads == ([qr.encode()] if qr else [])
    assert [c.name for c in commands][:2] == ["init", "chinese_on"]
    assert sum(c.name == "cut" for c in commands) == (0 if cut == "none" else 1)
    assert not any(c.name == "unknown" for c in commands)


@given(st.binary(max_size=300))
def test_tokenizer_never_raises(data: bytes) -> None:
    commands, rest = frames.parse_commands(data)
    assert len(rest) <= len(data)
    for command in commands:
        assert command.name
