"""GA 467 resident ID card reader (SAM_V over UART): find, select, read; SAM status.

The driver never logs or raises with card contents: it logs command names and status words
only, and every codec error names a field or a length, never the bytes.
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar, Final, NoReturn

from kioskfleet.drivers.base import DriverOptions, Transport
from kioskfleet.drivers.cards import IdCard, IdCardReader, mask_name
from kioskfleet.drivers.exceptions import DeviceOperationError, FrameError
from kioskfleet.drivers.ga467 import frames
from kioskfleet.protocol.devices import DeviceInfo, DeviceKind, DeviceStatus, DriverName, Media

log = logging.getLogger(__name__)

MODEL: Final = "GA 467 SAM_V"

_NAMES: Final[dict[tuple[int, int], str]] = {
    frames.RESET: "reset",
    frames.SAM_STATUS: "SAM status",
    frames.SAM_ID: "SAM id",
    frames.FIND_CARD: "find card",
    frames.SELECT_CARD: "select card",
    frames.READ_TEXT_PHOTO: "read card",
}


class Ga467Driver(IdCardReader):
    """A SAM_V resident ID card reader on an injected transport.

    Quirks (``DriverOptions.quirks``): ``read_timeout`` (s, default 3.0 — reading text and
    photo takes the card up to a few seconds), ``inter_byte_timeout`` (s, default 0.2).
    """

    name: ClassVar[DriverName] = "ga467"
    kind: ClassVar[DeviceKind] = "id_reader"
    #: SAM_V modules ship at 115200 8N1 (device-protocols.md §4a); a profile may say otherwise
    DEFAULT_BAUDRATE = 115200

    def __init__(self, transport: Transport, options: DriverOptions | None = None) -> None:
        super().__init__(transport, options)
        self._info: DeviceInfo | None = None
        # latched when a card was found but could not be read; cleared by a good read or when
        # the card leaves, so the status shows read_error while the bad card is still there
        self._read_failed = False

    # -- public ----------------------------------------------------------------------------
    def read_card(self) -> IdCard | None:
        """Find, select and read the card on the reader (``None`` when there is none).

        Raises:
            DeviceOperationError: a card is there but could not be read, or the SAM is faulty.
            DriverError: the reader did not answer or answered garbage.
        """
        return self._with_retries("read_card", self._read_card_once)

    # -- template --------------------------------------------------------------------------
    def _identify(self) -> DeviceInfo:
        reply = self._command(frames.SAM_ID)
        serial = frames.format_sam_id(reply.data) if reply.sw3 == frames.SW_OK else None
        self._info = DeviceInfo(model=MODEL, serial=serial, firmware=None)
        return self._info

    def _read_status(self) -> DeviceStatus:
        info = self._info or DeviceInfo(model=MODEL)
        sam = self._command(frames.SAM_STATUS)
        if sam.sw3 != frames.SW_OK:
            return self._sam_fault_status(sam.sw3, info)
        found = self._command(frames.FIND_CARD)
        media: Media
        if found.sw3 == frames.SW_CARD_FOUND:
            media = "present"
        elif found.sw3 == frames.SW_NO_CARD:
            media = "not_present"
            self._read_failed = False
        elif found.sw3 in frames.SAM_FAULT_WORDS:
            return self._sam_fault_status(found.sw3, info)
        else:
            # the reader saw something it could not even find properly: a bad card
            log.debug("%s: find card answered %s", self.name, frames.describe_status(found.sw3))
            media = "unknown"
            self._read_failed = True
        if self._read_failed:
            # a person has to take the unreadable card away (or present it again)
            return self.status_object(
                state="user_error", media=media, faults=["read_error"], info=info
            )
        return self.status_object(state="online", media=media, info=info)

    def _card_events(self) -> list[dict[str, Any]]:
        # on probe: the card is read and reported with the holder's name masked, nothing else
        card = self.read_card()
        if card is None:
            return []
        return [{"type": "id_card_read", "holder": mask_name(card.name)}]

    # -- protocol --------------------------------------------------------------------------
    def _sam_fault_status(self, sw3: int, info: DeviceInfo) -> DeviceStatus:
        log.debug("%s: SAM reports %s", self.name, frames.describe_status(sw3))
        return self.status_object(
            state="hardware_error", media="unknown", faults=["sam_fault"], info=info
        )

    def _read_card_once(self) -> IdCard | None:
        found = self._command(frames.FIND_CARD)
        if found.sw3 == frames.SW_NO_CARD:
            self._read_failed = False
            return None
        if found.sw3 != frames.SW_CARD_FOUND:
            self._fail("find card", found.sw3)
        selected = self._command(frames.SELECT_CARD)
        if selected.sw3 != frames.SW_OK:
            self._fail("select card", selected.sw3)
        reply = self._command(frames.READ_TEXT_PHOTO, timeout=self._read_timeout())
        if reply.sw3 != frames.SW_OK:
            self._fail("read card", reply.sw3)
        try:
            card = frames.decode_read_reply(reply.data)
        except FrameError as err:
            # the frame's checksum was good, so the card itself holds something we cannot read
            self._read_failed = True
            raise DeviceOperationError(f"{self.name}: card data unreadable: {err}") from None
        self._read_failed = False
        log.debug("%s: card read", self.name)  # no card data in logs, ever
        return card

    def _fail(self, step: str, sw3: int) -> NoReturn:
        text = frames.describe_status(sw3)
        if sw3 in frames.SAM_FAULT_WORDS:
            raise DeviceOperationError(f"{self.name}: {step}: SAM fault: {text}")
        self._read_failed = True
        raise DeviceOperationError(f"{self.name}: {step} failed: {text}")

    def _read_timeout(self) -> float:
        return max(self.options.timeout, float(self.options.quirks.get("read_timeout", 3.0)))

    def _command(self, command: tuple[int, int], timeout: float | None = None) -> frames.Response:
        """One exchange: send a command, return the reply (any status word).

        Raises:
            DeviceTimeoutError: no reply in time.
            FrameError: a corrupt reply, or the SAM says our frame was corrupt (retry both).
        """
        name = _NAMES.get(command, "command")
        self._resync()
        self._write(frames.encode_command(*command))
        deadline = time.monotonic() + (timeout or self.options.timeout)
        reply = frames.decode_response(self._receive_frame(frames.next_frame, deadline))
        log.debug("%s: %s -> %s", self.name, name, frames.describe_status(reply.sw3))
        if reply.sw3 in frames.HOST_FRAME_WORDS:
            raise FrameError(f"{self.name}: {name}: {frames.describe_status(reply.sw3)}")
        return reply


#: the package's entry points (see :mod:`kioskfleet.drivers.registry`)
open_driver = Ga467Driver.open
probe = Ga467Driver.probe
