"""ITL SSP banknote validators (NV9, NV9USB, NV200) over an injected transport, plain SSP.

Every command is one packet with the host's sequence bit; the bit toggles only after a reply,
and a lost reply is retried with the SAME packet, which the validator answers from its cache
instead of executing twice (device-protocols §3.3). SYNC starts a session with seq 1.

Conditions such as a jam, a full stacker or an open note path are repeated in every poll
reply while they last; this driver reports each as one event when it starts and keeps it in
the status until a poll no longer shows it. A removed cashbox stays missing until the
validator says it was replaced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import ClassVar, Final

from kioskfleet.drivers.base import DriverOptions, Transport
from kioskfleet.drivers.cash import (
    CashAcceptor,
    CashChannel,
    CashEvent,
    build_status,
    credit_event,
    escrow_event,
    jam_event,
    rejected_event,
    simple_event,
)
from kioskfleet.drivers.exceptions import (
    DeviceOperationError,
    DeviceTimeoutError,
    FrameError,
)
from kioskfleet.drivers.ssp import codes
from kioskfleet.drivers.ssp.codes import Command, Event
from kioskfleet.drivers.ssp.frames import Packet, encode, split
from kioskfleet.protocol.devices import DeviceInfo, DeviceKind, DeviceStatus

log = logging.getLogger(__name__)

DEFAULT_ADDRESS: Final = 0
#: highest host protocol version whose poll events this driver parses (9+ changes READ/CREDIT)
MAX_PROTOCOL: Final = 8
MIN_PROTOCOL: Final = 4
JAMS: Final = frozenset({Event.SAFE_JAM, Event.UNSAFE_JAM})
#: events the validator repeats in every poll while the condition lasts
PERSISTENT: Final = frozenset(
    {
        Event.SAFE_JAM,
        Event.UNSAFE_JAM,
        Event.STACKER_FULL,
        Event.CASHBOX_REMOVED,
        Event.NOTE_PATH_OPEN,
        Event.FRAUD_ATTEMPT,
        Event.DISABLED,
    }
)
UNIT_TYPES: Final[dict[int, str]] = {0: "banknote validator", 3: "SMART Hopper", 6: "SMART Payout"}


class SspValidator(CashAcceptor):
    """An ITL banknote validator speaking SSP (unencrypted).

    Args:
        transport: an open port (9600 8N2).
        options: ``timeout`` is the wait for one reply (ITL: 1 s), ``retries`` the number of
            re-sends of the same packet; quirks ``protocol_version`` (int),
            ``real_value_multiplier`` (int), ``inter_byte_timeout`` (s), ``poll_interval`` (s).
        address: SSP slave address (default the quirk ``address``, else 0: banknote
            validators).
    """

    name = "ssp"
    kind: ClassVar[DeviceKind] = "cash_acceptor"
    #: SSP runs 9600 8N2
    STOPBITS = 2
    INTER_BYTE_TIMEOUT = 0.1
    # SSP retries where the protocol says to, at the packet (same sequence bit); repeating
    # whole operations on top would multiply the time an absent validator costs
    RETRY_OPERATIONS = False

    def __init__(
        self,
        transport: Transport,
        options: DriverOptions | None = None,
        *,
        address: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(transport, options, clock=clock)
        if address is None:
            address = int(self.options.quirks.get("address", DEFAULT_ADDRESS))
        self.address = address
        self.protocol: int | None = None
        self.disabled_by_device = False
        self._seq = True
        self._synced = False
        self._channels: dict[int, CashChannel] = {}
        self._active: set[int] = set()

    # -- packets ---------------------------------------------------------------------------
    def command(self, code: int, params: bytes = b"") -> bytes:
        """Send one command and return the reply data after the OK byte.

        Raises:
            DeviceTimeoutError: no reply after re-sending the same packet ``retries`` times.
            DeviceOperationError: the validator answered with a generic error (F2…FA).
        """
        if not self._synced and code != Command.SYNC:
            self.sync()
        reply = self._exchange(bytes([code]) + params)
        if reply[0] != codes.OK:
            meaning = codes.GENERIC_RESPONSES.get(reply[0], f"0x{reply[0]:02X}")
            raise DeviceOperationError(f"ssp: command 0x{code:02X} answered {meaning}")
        return reply[1:]

    def sync(self) -> None:
        """Start a session: SYNC with sequence bit 1, so the next command uses 0."""
        self._seq = True
        self._synced = False
        reply = self._exchange(bytes([Command.SYNC]))
        if reply[0] != codes.OK:
            raise DeviceOperationError(f"ssp: SYNC answered 0x{reply[0]:02X}")
        self._synced = True

    def _exchange(self, data: bytes) -> bytes:
        seq = self._seq
        packet = encode(Packet(address=self.address, seq=seq, data=data))

        def attempt() -> Packet:
            # a retry re-sends the SAME bytes: the validator answers it from its reply cache
            self._write(packet)
            return self._read_reply(seq)

        self._resync()
        try:
            reply = self._with_retries(
                f"command 0x{data[0]:02X}", attempt, retries=self.options.retries
            )
        except (DeviceTimeoutError, FrameError):
            # we no longer know which sequence bit the validator expects: resync before the next
            self._synced = False
            raise
        self._seq = not seq
        return reply.data

    def _read_reply(self, seq: bool) -> Packet:
        """Our validator's reply with sequence bit ``seq``, past stale and foreign packets."""
        deadline = time.monotonic() + self.options.timeout
        while True:
            packet = self._receive_frame(split, deadline)
            if packet.address == self.address and packet.seq == seq:
                return packet

    # -- identity --------------------------------------------------------------------------
    def _set_protocol(self) -> None:
        wanted = int(self.options.quirks.get("protocol_version", MAX_PROTOCOL))
        for version in range(min(wanted, MAX_PROTOCOL), MIN_PROTOCOL - 1, -1):
            try:
                self.command(Command.HOST_PROTOCOL_VERSION, bytes([version]))
            except DeviceOperationError:
                continue  # F8: the validator does not speak that version; try an older one
            self.protocol = version
            return
        raise DeviceOperationError("ssp: validator accepts no host protocol version 4..8")

    def _ascii(self, code: int) -> str | None:
        try:
            raw = self.command(code)
        except DeviceOperationError:
            return None
        text = raw.decode("ascii", "replace").strip().strip("\x00")
        return text or None

    def _identify(self) -> DeviceInfo:
        self.sync()
        self._set_protocol()
        real = self.options.quirks.get("real_value_multiplier")
        setup = codes.parse_setup(
            self.command(Command.SETUP_REQUEST),
            real_value_multiplier=int(real) if real is not None else None,
        )
        self._channels = setup.channels
        serial_raw = self.command(Command.GET_SERIAL_NUMBER)
        serial = str(int.from_bytes(serial_raw[:4], "big")) if serial_raw else None
        firmware = self._ascii(Command.GET_FIRMWARE_VERSION) or setup.firmware
        dataset = self._ascii(Command.GET_DATASET_VERSION)
        unit = UNIT_TYPES.get(setup.unit_type, f"unit type {setup.unit_type}")
        model = f"ITL {unit}" + (f" ({dataset})" if dataset else "")
        return DeviceInfo(model=model, serial=serial, firmware=firmware)

    @property
    def channels(self) -> dict[int, CashChannel]:
        """Channel → value in fen, from SETUP REQUEST (read by :meth:`identify`)."""
        if self.protocol is None:
            self.identify()
        return dict(self._channels)

    # -- acceptance ------------------------------------------------------------------------
    def _enable(self, channels: list[int], escrow: bool) -> None:
        mask = 0
        for channel in channels:
            if 1 <= channel <= 24:
                mask |= 1 << (channel - 1)
        width = 3 if mask >> 16 else 2
        self.command(Command.SET_INHIBITS, mask.to_bytes(width, "little"))
        self.command(Command.ENABLE)

    def _disable(self) -> None:
        self.command(Command.DISABLE)

    def _route_escrow(self, *, accept: bool) -> None:
        if accept:
            # a POLL instead of HOLD lets the validator stack the note
            self._stash(self._apply(codes.parse_events(self.command(Command.POLL))))
        else:
            self.command(Command.REJECT)

    # -- events ----------------------------------------------------------------------------
    def _holding(self) -> bool:
        return self._escrow_mode and self._escrow is not None

    def _poll(self) -> list[CashEvent]:
        if self._holding():
            # keep the note in escrow while the application decides (restarts the 10 s timer)
            self.command(Command.HOLD)
            return []
        return self._apply(codes.parse_events(self.command(Command.POLL)))

    def _baseline(self) -> None:
        self._poll()  # conditions stay; the one-off events are dropped by baseline()

    def _last_reject(self) -> str:
        try:
            data = self.command(Command.LAST_REJECT_CODE)
        except DeviceOperationError:
            return "unknown"
        return codes.reject_reason(data[0]) if data else "unknown"

    def _apply(self, events: list[tuple[int, int | None]]) -> list[CashEvent]:
        """Turn one poll's events into the vocabulary and update the conditions."""
        out: list[CashEvent] = []
        previous = self._active
        active: set[int] = set()
        reset = False
        for code, arg in events:
            channel = arg or 0
            if code in PERSISTENT:
                active.add(code)
            if code == Event.READ:
                if channel and self._escrow_mode and self._escrow != channel:
                    self._escrow = channel
                    out.append(escrow_event(channel))
            elif code == Event.CREDIT:
                out.append(credit_event(self._channels.get(channel), channel))
                self._escrow = None
                self.conditions.fraud_until = 0.0
            elif code == Event.REJECTED:
                out.append(rejected_event(self._last_reject()))
                self._escrow = None
            elif code in JAMS:
                if not previous & JAMS and not any(e["type"] == "jam" for e in out):
                    out.append(jam_event(safe=code == Event.SAFE_JAM))
            elif code == Event.STACKER_FULL:
                if code not in previous:
                    out.append(simple_event("cashbox_full"))
            elif code == Event.CASHBOX_REMOVED:
                if self.conditions.cashbox != "missing":
                    out.append(simple_event("cashbox_removed"))
                self.conditions.cashbox = "missing"
            elif code == Event.CASHBOX_REPLACED:
                out.append(simple_event("cashbox_replaced"))
                self.conditions.cashbox = "ok"
            elif code == Event.FRAUD_ATTEMPT:
                self.conditions.flag_fraud(self.clock())
                if code not in previous:
                    out.append(simple_event("fraud_attempt"))
            elif code == Event.NOTE_PATH_OPEN:
                if code not in previous:
                    out.append(simple_event("note_path_open"))
            elif code in (Event.NOTE_CLEARED_FROM_FRONT, Event.NOTE_CLEARED_INTO_CASHBOX):
                where = "front" if code == Event.NOTE_CLEARED_FROM_FRONT else "cashbox"
                out.append({"type": "note_cleared", "channel": channel, "to": where})
            elif code == Event.SLAVE_RESET:
                out.append({"type": "device_reset"})
                reset = True
        self._active = active
        self.conditions.jam = bool(active & JAMS)
        self.conditions.jam_safe = (Event.SAFE_JAM in active) if self.conditions.jam else None
        if self.conditions.cashbox != "missing":
            self.conditions.cashbox = "full" if Event.STACKER_FULL in active else "ok"
        self.conditions.note_path_open = Event.NOTE_PATH_OPEN in active
        self.disabled_by_device = Event.DISABLED in active
        if reset:
            self._after_reset()
        return out

    def _after_reset(self) -> None:
        """A reset validator forgot the session, protocol version and enables: restore them."""
        log.warning("ssp %d: validator reset", self.address)
        self._escrow = None
        self._synced = False
        self._set_protocol()
        if self._enabled:
            self._enable(self._enabled_channels, self._escrow_mode)

    # -- status ----------------------------------------------------------------------------
    def _read_status(self) -> DeviceStatus:
        # SSP has no status command: conditions come with the poll. Events it brings are
        # kept for the next poll(), never dropped here.
        self._stash(self._poll())
        return build_status(
            kind=self.kind,
            driver=self.name,
            info=self.info,
            conditions=self.conditions,
            now=self.clock(),
            busy=self._escrow is not None,
        )


#: the package's entry points (see :mod:`kioskfleet.drivers.registry`)
open_driver = SspValidator.open
probe = SspValidator.probe
