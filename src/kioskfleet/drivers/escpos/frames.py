"""ESC/POS codec: pure functions, no I/O (device-protocols.md §1).

Two directions:

- host → printer: command bytes (:func:`encode_receipt`, :func:`status_request`, …) and a
  tokenizer that splits a host byte stream back into commands (:func:`next_command`), used by
  the simulator and by round-trip tests;
- printer → host: status replies have no frame. Each is one raw byte told apart by fixed bits
  (§1.3), Automatic Status Back sends 4-byte blocks, XON/XOFF may be interleaved anywhere, and
  ``GS I`` answers strings as ``_ text NUL``. :func:`split_replies` routes a receive buffer into
  those kinds and leaves an incomplete tail for the next read; :func:`next_replies` is the same
  for the driver's receive loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Final, Literal

from kioskfleet.drivers.base import Split
from kioskfleet.drivers.exceptions import FrameError

ESC: Final = 0x1B
GS: Final = 0x1D
FS: Final = 0x1C
DLE: Final = 0x10
EOT: Final = 0x04
ENQ: Final = 0x05
LF: Final = 0x0A
CR: Final = 0x0D
XON: Final = 0x11
XOFF: Final = 0x13
NUL: Final = 0x00
#: header of a ``GS I`` string reply ("_")
TEXT_HEADER: Final = 0x5F

INITIALISE: Final = bytes([ESC, 0x40])
CHINESE_ON: Final = bytes([FS, 0x26])
CHINESE_OFF: Final = bytes([FS, 0x2E])

#: ``GS I n`` string identities (Epson TM reference; printers without them stay silent)
ID_FIRMWARE: Final = 0x41
ID_MAKER: Final = 0x42
ID_MODEL: Final = 0x43
ID_SERIAL: Final = 0x44
#: longest ``GS I`` string we accept before deciding the ``_`` was noise
MAX_TEXT: Final = 80

CutMode = Literal["partial", "full", "none"]
QrLevel = Literal["L", "M", "Q", "H"]
_QR_LEVEL: Final[dict[str, int]] = {"L": 48, "M": 49, "Q": 50, "H": 51}
#: GS V m n, m = 65 full / 66 partial: feed to the cutter, then cut (works at any position)
_CUT: Final[dict[str, int]] = {"full": 65, "partial": 66}


# -- status bits ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrinterFlags:
    """Everything DLE EOT 1–4 (or an ASB block) says about the printer, as booleans."""

    drawer: bool = False  # drawer kick-out connector pin 3 high
    offline: bool = False
    waiting_recovery: bool = False  # waiting for online recovery
    feed_button: bool = False  # paper feed button pressed
    cover_open: bool = False
    feeding: bool = False  # paper being fed by the FEED button
    paper_end_stop: bool = False  # printing stopped by paper end
    error: bool = False  # an error occurred (cause in DLE EOT 3)
    mechanical_error: bool = False  # DLE EOT 3 bit 2 (SNBC: anti-jam module, a paper jam)
    cutter_error: bool = False
    unrecoverable_error: bool = False
    recoverable_error: bool = False  # auto-recoverable (head temperature, …)
    paper_near_end: bool = False
    paper_end: bool = False


def is_realtime_reply(byte: int) -> bool:
    """A DLE EOT reply: ``0xx1xx10``."""
    return (byte & 0x93) == 0x12


def is_asb_first(byte: int) -> bool:
    """First byte of an Automatic Status Back block: ``0xx1xx00``."""
    return (byte & 0x93) == 0x10


def is_asb_next(byte: int) -> bool:
    """Second to fourth ASB byte (and GS r / GS I single bytes): ``0xx0xxxx``."""
    return (byte & 0x90) == 0x00


def status_request(n: int) -> bytes:
    """``DLE EOT n``: real-time status, answered even while the printer is offline.

    Raises:
        ValueError: ``n`` is not 1 to 4.
    """
    if n not in (1, 2, 3, 4):
        raise ValueError(f"DLE EOT n must be 1 to 4, not {n}")
    return bytes([DLE, EOT, n])


def _bit(value: int, bit: int) -> bool:
    return bool(value & (1 << bit))


def decode_dle_eot(replies: bytes) -> PrinterFlags:
    """Decode the replies to DLE EOT 1, 2, 3 and 4 (in that order).

    Bits that two sensors may share (near end: 2/3, end: 5/6) count when either is set.

    Raises:
        FrameError: not four bytes, or a byte without the DLE EOT fixed bits.
    """
    if len(replies) != 4:
        raise FrameError(f"escpos: DLE EOT 1-4 needs 4 replies, got {len(replies)}")
    for n, byte in enumerate(replies, start=1):
        if not is_realtime_reply(byte):
            raise FrameError(f"escpos: 0x{byte:02X} is not a DLE EOT {n} reply")
    printer, cause, error, paper = replies
    return PrinterFlags(
        drawer=_bit(printer, 2),
        offline=_bit(printer, 3),
        waiting_recovery=_bit(printer, 5),
        feed_button=_bit(printer, 6),
        cover_open=_bit(cause, 2),
        feeding=_bit(cause, 3),
        paper_end_stop=_bit(cause, 5),
        error=_bit(cause, 6),
        mechanical_error=_bit(error, 2),
        cutter_error=_bit(error, 3),
        unrecoverable_error=_bit(error, 5),
        recoverable_error=_bit(error, 6),
        paper_near_end=bool(paper & 0x0C),
        paper_end=bool(paper & 0x60),
    )


def encode_dle_eot(flags: PrinterFlags) -> bytes:
    """The four bytes a printer in state ``flags`` answers to DLE EOT 1, 2, 3, 4."""

    def byte(*bits: tuple[bool, int]) -> int:
        value = 0x12  # fixed bits 1 and 4
        for on, mask in bits:
            if on:
                value |= mask
        return value

    return bytes(
        [
            byte(
                (flags.drawer, 0x04),
                (flags.offline, 0x08),
                (flags.waiting_recovery, 0x20),
                (flags.feed_button, 0x40),
            ),
            byte(
                (flags.cover_open, 0x04),
                (flags.feeding, 0x08),
                (flags.paper_end_stop, 0x20),
                (flags.error, 0x40),
            ),
            byte(
                (flags.mechanical_error, 0x04),
                (flags.cutter_error, 0x08),
                (flags.unrecoverable_error, 0x20),
                (flags.recoverable_error, 0x40),
            ),
            byte((flags.paper_near_end, 0x0C), (flags.paper_end, 0x60)),
        ]
    )


def decode_asb(block: bytes) -> PrinterFlags:
    """Decode a 4-byte Automatic Status Back block (§1.6).

    ASB has no "stopped by paper end" nor "error occurred" bit: they are derived (offline with
    paper end; any error cause) so an ASB block and DLE EOT 1–4 describe a state alike.

    Raises:
        FrameError: not 4 bytes, or fixed bits wrong.
    """
    if len(block) != 4:
        raise FrameError(f"escpos: an ASB block has 4 bytes, not {len(block)}")
    if not is_asb_first(block[0]) or not all(is_asb_next(b) for b in block[1:]):
        raise FrameError("escpos: not an ASB block")
    printer, error, paper, _reserved = block
    mechanical, cutter = _bit(error, 2), _bit(error, 3)
    unrecoverable, recoverable = _bit(error, 5), _bit(error, 6)
    paper_end = bool(paper & 0x0C)
    offline = _bit(printer, 3)
    return PrinterFlags(
        drawer=_bit(printer, 2),
        offline=offline,
        waiting_recovery=_bit(error, 0),
        feed_button=_bit(error, 1),
        cover_open=_bit(printer, 5),
        feeding=_bit(printer, 6),
        paper_end_stop=offline and paper_end,
        error=mechanical or cutter or unrecoverable or recoverable,
        mechanical_error=mechanical,
        cutter_error=cutter,
        unrecoverable_error=unrecoverable,
        recoverable_error=recoverable,
        paper_near_end=bool(paper & 0x03),
        paper_end=paper_end,
    )


def encode_asb(flags: PrinterFlags) -> bytes:
    """The ASB block a printer in state ``flags`` sends (§1.6; 4th byte reserved = 0)."""
    printer = 0x10
    printer |= 0x04 if flags.drawer else 0
    printer |= 0x08 if flags.offline else 0
    printer |= 0x20 if flags.cover_open else 0
    printer |= 0x40 if flags.feeding else 0
    error = 0x01 if flags.waiting_recovery else 0
    error |= 0x02 if flags.feed_button else 0
    error |= 0x04 if flags.mechanical_error else 0
    error |= 0x08 if flags.cutter_error else 0
    error |= 0x20 if flags.unrecoverable_error else 0
    error |= 0x40 if flags.recoverable_error else 0
    paper = (0x03 if flags.paper_near_end else 0) | (0x0C if flags.paper_end else 0)
    return bytes([printer, error, paper, 0x00])


def asb_view(flags: PrinterFlags) -> PrinterFlags:
    """``flags`` as an ASB block can carry them (what :func:`decode_asb` gives back)."""
    return decode_asb(encode_asb(flags))


def flag_names(flags: PrinterFlags) -> list[str]:
    """The names of the flags that are set (for logs and tests)."""
    return [f.name for f in fields(flags) if getattr(flags, f.name)]


# -- printer → host: splitting a receive buffer ----------------------------------------------------
@dataclass(frozen=True)
class RealTime:
    """A DLE EOT reply byte."""

    value: int


@dataclass(frozen=True)
class Asb:
    """An Automatic Status Back block (flow-control bytes inside it already removed)."""

    block: bytes


@dataclass(frozen=True)
class Flow:
    """XON (``xoff=False``: send again) or XOFF (``xoff=True``: stop sending)."""

    xoff: bool


@dataclass(frozen=True)
class Text:
    """A ``GS I`` string reply (``_ text NUL``)."""

    text: str


@dataclass(frozen=True)
class Garbage:
    """A byte that fits no reply pattern (line noise, a reply we did not ask for)."""

    value: int


Reply = RealTime | Asb | Flow | Text | Garbage


def split_replies(buffer: bytes) -> tuple[list[Reply], int]:
    """Route the bytes of a receive buffer into replies.

    Returns:
        The complete replies in order, and how many bytes of ``buffer`` they used. The rest
        is an incomplete ASB block or string, to be completed by the next read (or dropped by
        the caller once its inter-byte timeout passes).
    """
    out: list[Reply] = []
    pos = 0
    size = len(buffer)
    while pos < size:
        byte = buffer[pos]
        if byte in (XON, XOFF):
            out.append(Flow(xoff=byte == XOFF))
            pos += 1
        elif is_realtime_reply(byte):
            out.append(RealTime(byte))
            pos += 1
        elif is_asb_first(byte):
            parsed = _split_asb(buffer, pos)
            if parsed is None:
                break  # incomplete: wait for more
            replies, pos = parsed
            out += replies
        elif byte == TEXT_HEADER:
            text = _split_text(buffer, pos)
            if text is None:
                break
            replies, pos = text
            out += replies
        else:
            out.append(Garbage(byte))
            pos += 1
    return out, pos


def next_replies(buffer: bytes) -> Split[tuple[Reply, ...]]:
    """:func:`split_replies` as a split function for the driver's receive loop: every complete
    reply at the front of ``buffer`` at once (an ASB block may carry XON/XOFF inside it), or
    nothing until a byte more arrives. Stray bytes come out as :class:`Garbage` replies."""
    replies, used = split_replies(buffer)
    if replies:
        return Split(tuple(replies), used)
    return Split(None, 0)


def _split_asb(buffer: bytes, start: int) -> tuple[list[Reply], int] | None:
    """An ASB block at ``start``: 3 more bytes, XON/XOFF allowed between them (§1.1)."""
    block = bytearray([buffer[start]])
    flow: list[Reply] = []
    pos = start + 1
    while len(block) < 4:
        if pos >= len(buffer):
            return None
        byte = buffer[pos]
        if byte in (XON, XOFF):
            flow.append(Flow(xoff=byte == XOFF))
        elif is_asb_next(byte):
            block.append(byte)
        else:
            # the first byte was not an ASB start after all: drop it, re-read from the next
            return [Garbage(buffer[start])], start + 1
        pos += 1
    return [*flow, Asb(bytes(block))], pos


def _split_text(buffer: bytes, start: int) -> tuple[list[Reply], int] | None:
    """A ``_ text NUL`` string at ``start``; printable ASCII only."""
    chars = bytearray()
    flow: list[Reply] = []
    pos = start + 1
    while True:
        if pos >= len(buffer):
            if pos - start > MAX_TEXT + 1:
                return [Garbage(buffer[start])], start + 1
            return None
        byte = buffer[pos]
        if byte == NUL:
            return [*flow, Text(chars.decode("ascii").strip())], pos + 1
        if byte in (XON, XOFF):
            flow.append(Flow(xoff=byte == XOFF))
        elif 0x20 <= byte < 0x7F and len(chars) < MAX_TEXT:
            chars.append(byte)
        else:
            # a control byte (another reply) or an overlong run: the "_" was noise
            return [Garbage(buffer[start])], start + 1
        pos += 1


def encode_text_reply(text: str) -> bytes:
    """What a printer sends for a ``GS I`` string (simulator side).

    Raises:
        ValueError: not printable ASCII, or longer than :data:`MAX_TEXT`.
    """
    data = text.encode("ascii")
    if len(data) > MAX_TEXT or any(not 0x20 <= b < 0x7F for b in data):
        raise ValueError("a GS I string is printable ASCII of at most 80 characters")
    return bytes([TEXT_HEADER]) + data + bytes([NUL])


# -- host → printer ------------------------------------------------------------------------------
def identity_request(n: int) -> bytes:
    """``GS I n``: transmit printer ID (processed in buffer order, not in real time)."""
    if not 0 <= n <= 0xFF:
        raise ValueError("GS I n is one byte")
    return bytes([GS, 0x49, n])


def asb_request(mask: int) -> bytes:
    """``GS a n``: Automatic Status Back for the conditions in ``mask`` (0 disables)."""
    if not 0 <= mask <= 0xFF:
        raise ValueError("GS a n is one byte")
    return bytes([GS, 0x61, mask])


def recovery_request(n: int) -> bytes:
    """``DLE ENQ n``: recover from a recoverable error (1) or after clearing buffers (2)."""
    if n not in (1, 2):
        raise ValueError("DLE ENQ n must be 1 or 2")
    return bytes([DLE, ENQ, n])


def _gs_k(fn: int, params: bytes) -> bytes:
    """``GS ( k pL pH cn fn params`` for the QR symbol (cn = 49)."""
    length = len(params) + 2
    return bytes([GS, 0x28, 0x6B, length & 0xFF, length >> 8, 49, fn]) + params


def encode_qr(payload: bytes, *, size: int = 6, level: QrLevel = "M") -> bytes:
    """The QR commands: model 2, module size, error correction, store the data, print it.

    Raises:
        ValueError: empty or oversized payload, size not 1–16, unknown level.
    """
    if not payload or len(payload) > 7089:
        raise ValueError("a QR payload has 1 to 7089 bytes")
    if not 1 <= size <= 16:
        raise ValueError("QR module size is 1 to 16 dots")
    if level not in _QR_LEVEL:
        raise ValueError(f"QR error correction is one of {', '.join(_QR_LEVEL)}")
    return b"".join(
        [
            _gs_k(65, bytes([50, 0])),  # fn 165: model 2
            _gs_k(67, bytes([size])),  # fn 167: module size
            _gs_k(69, bytes([_QR_LEVEL[level]])),  # fn 169: error correction
            _gs_k(80, b"\x30" + payload),  # fn 180: store in the symbol area
            _gs_k(81, b"\x30"),  # fn 181: print the stored symbol
        ]
    )


def encode_cut(mode: CutMode) -> bytes:
    """``GS V m n``: feed to the cutter and cut (nothing for ``none``)."""
    if mode == "none":
        return b""
    return bytes([GS, 0x56, _CUT[mode], 0])


def encode_line(text: str, *, chinese: bool) -> bytes:
    """One line of text and its LF. Chinese mode encodes GB18030, otherwise ASCII (``?``).

    Raises:
        ValueError: the text contains a control character (it would be a command).
    """
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise ValueError("text must not contain control characters")
    data = text.encode("gb18030") if chinese else text.encode("ascii", errors="replace")
    return data + bytes([LF])


def encode_receipt(
    lines: Sequence[str],
    qr: str | None = None,
    *,
    cut: CutMode = "partial",
    chinese: bool = True,
    qr_size: int = 6,
    qr_level: QrLevel = "M",
    feed_lines: int = 3,
) -> bytes:
    """A whole receipt: initialise, Chinese mode, the lines, the QR code, feed, cut."""
    parts = [INITIALISE]
    if chinese:
        parts.append(CHINESE_ON)
    parts += [encode_line(line, chinese=chinese) for line in lines]
    if qr:
        parts.append(encode_qr(qr.encode("utf-8"), size=qr_size, level=qr_level))
        parts.append(bytes([LF]))
    parts.append(bytes([LF]) * feed_lines)
    parts.append(encode_cut(cut))
    return b"".join(parts)


# -- host → printer, read back: the simulator's tokenizer ------------------------------------------
@dataclass(frozen=True)
class Command:
    """One command of a host byte stream.

    ``name`` is ``text`` (``data`` holds the bytes), ``lf``, ``cr``, ``init``,
    ``chinese_on``, ``chinese_off``, ``dle_eot``, ``dle_enq``, ``gs_i``, ``gs_a``, ``gs_r``,
    ``gs_k`` (``data`` = cn fn params), ``cut`` (``arg`` = m, ``data`` = n if any),
    ``param`` (a formatting command with one parameter we do not interpret) or ``unknown``.
    """

    name: str
    arg: int = 0
    data: bytes = b""

    @property
    def realtime(self) -> bool:
        """Executed on arrival, even while the printer is offline."""
        return self.name in ("dle_eot", "dle_enq")


#: ESC / GS / FS commands with exactly one parameter byte that a receipt may use
_ONE_PARAM: Final[dict[int, frozenset[int]]] = {
    ESC: frozenset(b"!-3EGJMadt"),
    GS: frozenset(b"!BHfhkw"),
    FS: frozenset(b"!C-"),
}


def next_command(buffer: bytes) -> tuple[Command | None, int]:
    """The first command in a host byte stream.

    Returns:
        ``(command, consumed)``; ``(None, 0)`` when the buffer holds only the start of one.
    """
    if not buffer:
        return None, 0
    first = buffer[0]
    if first == LF:
        return Command("lf"), 1
    if first == CR:
        return Command("cr"), 1
    if first in (DLE, ESC, GS, FS):
        return _prefixed(buffer)
    if first < 0x20 or first == 0x7F:
        return Command("unknown", first), 1
    end = 1
    while end < len(buffer) and buffer[end] >= 0x20 and buffer[end] != 0x7F:
        end += 1
    return Command("text", data=buffer[:end]), end


def _prefixed(buffer: bytes) -> tuple[Command | None, int]:
    if len(buffer) < 2:
        return None, 0
    first, second = buffer[0], buffer[1]
    if first == DLE:
        if second in (EOT, ENQ):
            if len(buffer) < 3:
                return None, 0
            return Command("dle_eot" if second == EOT else "dle_enq", buffer[2]), 3
        return Command("unknown", first), 1
    if first == ESC and second == 0x40:
        return Command("init"), 2
    if first == FS and second == 0x26:
        return Command("chinese_on"), 2
    if first == FS and second == 0x2E:
        return Command("chinese_off"), 2
    if first == GS and second == 0x28:
        return _gs_paren(buffer)
    if first == GS and second == 0x56:
        if len(buffer) < 3:
            return None, 0
        m = buffer[2]
        if m in (0, 1, 48, 49):
            return Command("cut", m), 3
        if len(buffer) < 4:
            return None, 0
        return Command("cut", m, buffer[3:4]), 4
    if first == ESC and second == 0x63:  # ESC c 3/4/5 n
        if len(buffer) < 4:
            return None, 0
        return Command("param", second, buffer[2:4]), 4
    named = {(GS, 0x49): "gs_i", (GS, 0x61): "gs_a", (GS, 0x72): "gs_r"}.get((first, second))
    if named or second in _ONE_PARAM[first]:
        if len(buffer) < 3:
            return None, 0
        return Command(named or "param", buffer[2] if named else second, buffer[2:3]), 3
    return Command("unknown", first, buffer[1:2]), 2


def _gs_paren(buffer: bytes) -> tuple[Command | None, int]:
    """``GS ( x pL pH data``: every GS ( command carries its own length."""
    if len(buffer) < 5:
        return None, 0
    length = buffer[3] | (buffer[4] << 8)
    if len(buffer) < 5 + length:
        return None, 0
    name = "gs_k" if buffer[2] == 0x6B else "unknown"
    return Command(name, buffer[2], buffer[5 : 5 + length]), 5 + length


def parse_commands(data: bytes) -> tuple[list[Command], bytes]:
    """Every complete command in ``data``, and the incomplete rest."""
    out: list[Command] = []
    pos = 0
    while pos < len(data):
        command, consumed = next_command(data[pos:])
        if command is None:
            break
        out.append(command)
        pos += consumed
    return out, data[pos:]
