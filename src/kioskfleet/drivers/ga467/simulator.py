"""A simulated SAM_V ID card reader, with an obviously fake citizen's card.

Fault switches: ``sim.card`` (``None`` or an :class:`IdCard`), ``sim.sam_fault``,
``sim.read_error``, ``sim.bad_record``, ``sim.silent``; ``sim.truncate_next()`` and
``sim.noise_next(b"...")`` damage the next reply once, for the driver's resync paths.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import ClassVar, Final

from kioskfleet.drivers.cards import IdCard
from kioskfleet.drivers.exceptions import FrameError
from kioskfleet.drivers.ga467 import frames
from kioskfleet.drivers.simulator import DeviceSimulator

#: nobody: born 1900 in a city-level region code (320200) that is never issued to people
FAKE_CITIZEN: Final = IdCard(
    name="测试公民",
    sex="female",
    nation="01",
    birth_date=dt.date(1900, 1, 1),
    address="江苏省无锡市模拟区测试路1号",
    id_number="320200190001011234",
    issuer="无锡市公安局模拟分局",
    valid_from=dt.date(2020, 1, 1),
    valid_until=dt.date(2040, 1, 1),
    photo=b"WLT-FAKE-PHOTO",
)
SAM_ID_TEXT: Final = "05.01-20200101-0000012345-1234567890"


class Ga467Simulator(DeviceSimulator):
    """The SAM_V end of the link: answers find / select / read / SAM status like a reader."""

    FAULTS: ClassVar[dict[str, str]] = {
        "no_card": "no card on the reader (find card answers 0x80)",
        "card_present": "the fake citizen's card lies on the reader",
        "sam_fault": "SAM_V self-test failed (SW3 0x60 to everything)",
        "read_error": "a card is there but reading it fails (SW3 0x41)",
        "bad_record": "a card whose text record holds an impossible birth date",
        "no_answer": "the reader does not answer at all",
    }

    def __init__(self, card: IdCard | None = None) -> None:
        self.card = card
        self.sam_fault = False
        self.read_error = False
        #: the card's record is read fine but does not decode (a damaged or forged card)
        self.bad_record = False
        self.silent = False
        self._buffer = bytearray()
        self._truncate = False
        self._noise = b""
        self._lock = threading.Lock()
        #: commands received, as (CMD, Para), for tests that assert on the wire
        self.commands: list[tuple[int, int]] = []

    # -- switches ----------------------------------------------------------------------------
    def present(self, card: IdCard = FAKE_CITIZEN) -> None:
        """Lay a card on the reader."""
        self.card = card

    def remove(self) -> None:
        """Take the card away."""
        self.card = None

    def truncate_next(self) -> None:
        """Send only the first half of the next reply (a frame that stalls)."""
        self._truncate = True

    def noise_next(self, noise: bytes) -> None:
        """Send ``noise`` before the next reply (line garbage)."""
        self._noise = noise

    def set_fault(self, name: str) -> None:
        """Switch on a fault from :attr:`FAULTS` (``no_card``/``card_present`` set the card)."""
        if name == "no_card":
            self.remove()
        elif name == "card_present":
            self.present()
        elif name == "sam_fault":
            self.sam_fault = True
        elif name == "read_error":
            self.present()
            self.read_error = True
        elif name == "bad_record":
            self.present()
            self.bad_record = True
        elif name == "no_answer":
            self.silent = True
        else:
            super().set_fault(name)

    # -- device ------------------------------------------------------------------------------
    def receive(self, data: bytes) -> bytes:
        """Answer every complete command frame in ``data`` (buffered across calls)."""
        with self._lock:
            self._buffer += data
            out = bytearray()
            while True:
                frame, consumed, _ = frames.next_frame(bytes(self._buffer))
                del self._buffer[:consumed]
                if frame is not None:
                    out += self._answer(frame)
                elif not consumed:
                    break
            if self.silent:
                return b""
            reply = self._noise + bytes(out)
            if out:
                self._noise = b""
                if self._truncate:
                    self._truncate = False
                    reply = reply[: len(reply) // 2]
            return reply

    def _answer(self, frame: bytes) -> bytes:
        try:
            command = frames.decode_command(frame)
        except FrameError:
            return frames.encode_response(frames.SW_HOST_CHECKSUM)
        key = (command.cmd, command.para)
        self.commands.append(key)
        if command.cmd == 0x60:  # set baud rate: answered at the old rate; a pty has none
            return frames.encode_response(frames.SW_OK)
        if self.sam_fault and key != frames.RESET:
            return frames.encode_response(frames.SW_SAM_SELF_TEST)
        if key in (frames.RESET, frames.SAM_STATUS):
            return frames.encode_response(frames.SW_OK)
        if key == frames.SAM_ID:
            return frames.encode_response(frames.SW_OK, frames.encode_sam_id(SAM_ID_TEXT))
        if key == frames.FIND_CARD:
            if self.card is None:
                return frames.encode_response(frames.SW_NO_CARD)
            return frames.encode_response(frames.SW_CARD_FOUND, bytes(4))
        if key == frames.SELECT_CARD:
            if self.card is None:
                return frames.encode_response(frames.SW_SELECT_FAILED)
            return frames.encode_response(frames.SW_OK, bytes(8))
        if key == frames.READ_TEXT_PHOTO:
            if self.card is None or self.read_error:
                return frames.encode_response(frames.SW_READ_FAILED)
            data = bytearray(frames.encode_read_reply(self.card))
            if self.bad_record:
                # birth date (text offset 36) with month 13; 4 bytes of lengths come first
                data[40:56] = "19001399".encode("utf-16-le")
            return frames.encode_response(frames.SW_OK, bytes(data))
        if key == frames.READ_NEW_ADDRESS:
            return frames.encode_response(frames.SW_NO_CONTENT)
        return frames.encode_response(frames.SW_COMMAND_ERROR)


def make_simulator(kind: str | None = None) -> Ga467Simulator:
    """The simulator ``kioskfleet device simulate ga467`` runs: a reader with no card on it."""
    return Ga467Simulator()
