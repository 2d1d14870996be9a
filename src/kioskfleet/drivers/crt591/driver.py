"""Creator CRT-591 motorized card reader: status, insertion, eject to gate, capture to bin.

Every exchange is: command → ACK (NAK: resend, up to 3 times) → reply when the motor is done
(corrupt reply: NAK, the reader sends it again). Motion commands are never resent once the
reader has ACKed them — doing so could move a customer's card twice; status and identity
reads go through the base class's retries.
"""

from __future__ import annotations

import logging
import time
from typing import ClassVar, Final, Literal, NoReturn

from kioskfleet.drivers.base import DriverOptions, Transport
from kioskfleet.drivers.cards import MotorCardReader
from kioskfleet.drivers.crt591 import frames
from kioskfleet.drivers.exceptions import (
    DeviceOperationError,
    DeviceTimeoutError,
    FrameError,
)
from kioskfleet.protocol.devices import DeviceInfo, DeviceKind, DeviceStatus, DriverName, Media

log = logging.getLogger(__name__)

MODEL: Final = "CRT-591"
#: the handshake tries a command this often when the reader NAKs it, or a reply when it is corrupt
HANDSHAKE_TRIES: Final = 3

_MEDIA: Final[dict[str, Media]] = {
    frames.ST0_NO_CARD: "not_present",
    frames.ST0_AT_GATE: "present",  # in the gate: still ours until the customer takes it
    frames.ST0_INSIDE: "present",
}
_STACKER: Final[dict[str, str]] = {
    frames.ST1_EMPTY: "empty",
    frames.ST1_LOW: "low",
    frames.ST1_ENOUGH: "ok",
}
InitMode = Literal["gate", "capture", "leave"]
_INIT: Final[dict[InitMode, tuple[int, int]]] = {
    "gate": frames.INIT_TO_GATE,
    "capture": frames.INIT_CAPTURE,
    "leave": frames.INIT_LEAVE,
}


class Crt591Driver(MotorCardReader):
    """A CRT-591 on an injected transport.

    Quirks (``DriverOptions.quirks``): ``address`` (DIP-switch address, default 0),
    ``ack_timeout`` (s, default the driver timeout but at least the spec's 0.3),
    ``motion_timeout`` (s, default 30 — a motor move can take seconds),
    ``inter_byte_timeout`` (s, default 0.2).
    """

    name: ClassVar[DriverName] = "crt591"
    kind: ClassVar[DeviceKind] = "card_reader"
    #: the unit in the kiosk runs at 115200; the family auto-detects 9600 to 57600 at INIT, so
    #: a firmware profile or ``--baudrate`` may say otherwise
    DEFAULT_BAUDRATE = 115200

    def __init__(self, transport: Transport, options: DriverOptions | None = None) -> None:
        super().__init__(transport, options)
        self._info: DeviceInfo | None = None
        # a motion command reported a jam: the status says so until a move or INIT succeeds,
        # whatever the status command itself answers
        self._jammed = False

    # -- public ----------------------------------------------------------------------------
    def initialise(self, mode: InitMode = "leave") -> str | None:
        """INIT after power-up: ``leave`` the card where it is, move it to the ``gate``, or
        ``capture`` it. Returns the firmware string the reader reports.

        Raises:
            DeviceOperationError: the reader refused (e.g. a jam it cannot clear).
            DriverError: no answer or garbage.
        """
        reply = self._motion(_INIT[mode], f"initialise ({mode})")
        firmware = _text(reply.data)
        if self._info is not None and firmware:
            self._info = self._info.model_copy(update={"firmware": firmware})
        return firmware

    def accept(self) -> None:
        """Enable card entry from the gate."""
        self._motion(frames.ENTRY_ENABLE, "enable entry")

    def refuse(self) -> None:
        """Disable card entry from the gate."""
        self._motion(frames.ENTRY_DISABLE, "disable entry")

    def eject(self) -> Media:
        """Move the card to the gate for the customer to take."""
        return _MEDIA.get(self._motion(frames.MOVE_TO_GATE, "eject").st[:1], "unknown")

    def capture(self) -> Media:
        """Move the card into the error (retain) bin."""
        return _MEDIA.get(self._motion(frames.MOVE_TO_BIN, "capture").st[:1], "unknown")

    # -- template --------------------------------------------------------------------------
    def _identify(self) -> DeviceInfo:
        version = self._exchange(frames.VERSION, self.options.timeout)
        serial = self._exchange(frames.SERIAL_NUMBER, self.options.timeout)
        firmware = _text(version.data) if isinstance(version, frames.Positive) else None
        serial_text = None
        if isinstance(serial, frames.Positive) and serial.data:
            # DATA = length byte + ASCII serial number
            serial_text = _text(serial.data[1 : 1 + serial.data[0]])
        self._info = DeviceInfo(model=MODEL, serial=serial_text, firmware=firmware)
        return self._info

    def _read_status(self) -> DeviceStatus:
        info = self._info or DeviceInfo(model=MODEL)
        reply = self._exchange(frames.STATUS, self.options.timeout)
        if isinstance(reply, frames.Negative):
            return self._negative_status(reply.error, info)
        st0, st1, st2 = reply.st[0], reply.st[1], reply.st[2]
        supplies = {
            "stacker": _STACKER.get(st1, "unknown"),
            "retain_bin": "full" if st2 == frames.ST2_FULL else "ok",
        }
        faults = ["retain_bin_full"] if st2 == frames.ST2_FULL else []
        if self._jammed:
            return self.status_object(
                state="user_error",
                media="jammed",
                faults=["card_jammed", *faults],
                info=info,
                supplies=supplies,
            )
        # a full retain bin still lets customers use the reader (§5.5): online, but say so
        return self.status_object(
            state="online",
            media=_MEDIA.get(st0, "unknown"),
            faults=faults,
            info=info,
            supplies=supplies,
        )

    # -- protocol --------------------------------------------------------------------------
    def _negative_status(self, error: str, info: DeviceInfo) -> DeviceStatus:
        log.debug("%s: status answered %s", self.name, frames.describe_error(error))
        if error == frames.E_JAM:
            # CONTRACT §5: a card jam needs a person, so user_error (the note's §5.5 table says
            # hardware_error; the contract wins)
            self._jammed = True
            return self.status_object(
                state="user_error", media="jammed", faults=["card_jammed"], info=info
            )
        if error == frames.E_NOT_INITIALISED:
            # power-cycled: it answers but serves nothing until INIT (§5.5: offline)
            return self.status_object(
                state="offline", media="unknown", faults=["not_initialised"], info=info
            )
        if error == frames.E_BIN_FULL:
            return self.status_object(
                state="online",
                media="unknown",
                faults=["retain_bin_full"],
                info=info,
                supplies={"retain_bin": "full"},
            )
        return self.status_object(
            state="hardware_error", media="unknown", faults=["hardware_fault"], info=info
        )

    def _motion(self, command: tuple[int, int], what: str) -> frames.Positive:
        """One motion command, never resent after its ACK; a negative reply raises."""
        reply = self._exchange(command, self._motion_timeout())
        if isinstance(reply, frames.Negative):
            self._refused(what, reply.error)
        self._jammed = False
        return reply

    def _refused(self, what: str, error: str) -> NoReturn:
        if error == frames.E_JAM:
            self._jammed = True
        raise DeviceOperationError(f"{self.name}: {what}: {frames.describe_error(error)}")

    def _motion_timeout(self) -> float:
        return max(self.options.timeout, float(self.options.quirks.get("motion_timeout", 30.0)))

    def _ack_timeout(self) -> float:
        # the reader ACKs within 300 ms (spec 1.4); an explicit quirk wins
        return float(self.options.quirks.get("ack_timeout", max(0.3, self.options.timeout)))

    def _exchange(
        self, command: tuple[int, int], timeout: float, data: bytes = b""
    ) -> frames.Positive | frames.Negative:
        """Send a command through the ACK/NAK handshake and return the reader's reply.

        Raises:
            DeviceTimeoutError: no ACK, or no reply before ``timeout``.
            FrameError: NAKed or corrupt too often, or a reply to another command.
        """
        cm, pm = command
        address = int(self.options.quirks.get("address", 0))
        self._resync()
        frame = frames.encode_command(cm, pm, data, address)
        for _ in range(HANDSHAKE_TRIES):
            self._write(frame)
            deadline = time.monotonic() + self._ack_timeout()
            if self._receive_frame(frames.next_handshake, deadline):
                break
            log.debug("%s: command %02X %02X NAKed, sending it again", self.name, cm, pm)
        else:
            raise FrameError(f"{self.name}: command NAKed {HANDSHAKE_TRIES} times")
        deadline = time.monotonic() + timeout
        for _ in range(HANDSHAKE_TRIES):
            try:
                reply = frames.decode(self._receive_frame(frames.next_frame, deadline))
            except FrameError as err:
                log.debug("%s: corrupt reply (%s), NAK", self.name, err)
                self._write(bytes([frames.NAK]))
                continue
            except DeviceTimeoutError:
                # tell the reader to give up on this exchange before we report the timeout
                self._write(bytes([frames.EOT]))
                raise
            if isinstance(reply, frames.Command) or (reply.cm, reply.pm) != command:
                raise FrameError(f"{self.name}: reply does not answer {cm:02X} {pm:02X}")
            return reply
        raise FrameError(f"{self.name}: reply corrupt {HANDSHAKE_TRIES} times")


def _text(data: bytes) -> str | None:
    """ASCII text the reader sends (firmware, serial), or ``None`` when there is none."""
    text = data.decode("ascii", errors="replace").strip(" \x00")
    return text or None


#: the package's entry points (see :mod:`kioskfleet.drivers.registry`)
open_driver = Crt591Driver.open
probe = Crt591Driver.probe
