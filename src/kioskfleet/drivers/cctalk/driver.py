"""ccTalk bill validators and coin acceptors over an injected transport.

One request, one reply, on a half-duplex bus: the host may read its own request back first
(single-wire echo, detected and stripped per transaction), then the device's reply addressed
to host 1. Events come from the device's five-slot buffer (header 159 bills / 229 coins) with
an event counter; see :mod:`kioskfleet.drivers.cctalk.codes` for what the codes mean.
"""

from __future__ import annotations

import functools
import logging
import time
from abc import abstractmethod
from collections.abc import Callable
from typing import ClassVar, Self

from kioskfleet.drivers.base import DriverOptions, ProbeOptions, Transport
from kioskfleet.drivers.cash import (
    CashAcceptor,
    CashChannel,
    CashEvent,
    build_status,
    events_lost_event,
)
from kioskfleet.drivers.cctalk import codes
from kioskfleet.drivers.cctalk.frames import (
    BILL_ADDRESS,
    COIN_ADDRESS,
    HOST,
    Frame,
    Header,
    encode,
    split,
)
from kioskfleet.drivers.exceptions import (
    DeviceOperationError,
    DeviceTimeoutError,
    DriverError,
    FrameError,
)
from kioskfleet.protocol.devices import DeviceInfo, DeviceKind, DeviceStatus

log = logging.getLogger(__name__)

COIN_POSITIONS = 16
MAX_BILL_TYPES = 16
CATEGORY_BILL = "bill validator"
CATEGORY_COIN = "coin acceptor"


class CcTalkDevice(CashAcceptor):
    """What ccTalk bill validators and coin acceptors share: transactions, identity, events.

    Args:
        transport: an open port (9600 8N1).
        options: timeouts/retries; quirks ``crc16`` (bool), ``inter_byte_timeout`` (s),
            ``scaling_factor`` ([scale, decimals], bills), ``poll_interval`` (s).
        address: the device's ccTalk address (default by kind: 40 bills, 2 coins).
        crc16: use 16-bit CRC frames instead of the simple checksum (overrides the quirk).
    """

    name = "cctalk"
    #: the spec's inter-byte limit is 50 ms; a pty on a busy machine needs a little more slack
    INTER_BYTE_TIMEOUT = 0.1
    DEFAULT_ADDRESS: ClassVar[int]
    EVENT_HEADER: ClassVar[Header]

    def __init__(
        self,
        transport: Transport,
        options: DriverOptions | None = None,
        *,
        address: int | None = None,
        crc16: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(transport, options, clock=clock)
        quirks = self.options.quirks
        self.address = address if address is not None else self.DEFAULT_ADDRESS
        self.crc16 = bool(quirks.get("crc16", False)) if crc16 is None else crc16
        #: None until the first reply tells whether the bus echoes our own bytes
        self.echo: bool | None = None
        self._split = functools.partial(split, crc16_mode=self.crc16)
        self._counter: int | None = None
        self._channels: dict[int, CashChannel] = {}
        self._channels_read = False

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def attach(cls, transport: Transport, options: ProbeOptions) -> Self:
        """Find the device on the bus (:func:`discover`) and return its driver.

        Raises:
            DeviceTimeoutError: nothing answers at the expected address(es).
            DeviceOperationError: the device found is not of this class (a coin acceptor
                where ``CcTalkBillValidator`` was asked for).
            DeviceUnavailableError: the port failed.
        """
        found = discover(transport, options)
        if found is None:
            raise DeviceTimeoutError("cctalk: no device answered")
        if not isinstance(found, cls):
            raise DeviceOperationError(f"cctalk: found a {found.kind}, not a {cls.__name__}")
        return found

    @classmethod
    def unreachable_status(cls, options: ProbeOptions, error: DriverError) -> DeviceStatus:
        """Offline status of the kind expected at the address asked for (2: coins)."""
        expected: type[CcTalkDevice] = cls
        if cls is CcTalkDevice:
            address = cls.driver_options(options).quirks.get("address")
            expected = CcTalkCoinAcceptor if address == COIN_ADDRESS else CcTalkBillValidator
        return expected.offline_status(error)

    # -- transactions ----------------------------------------------------------------------
    def request(self, header: int, data: bytes = b"") -> bytes:
        """Send one command and return the reply's data bytes, with retries.

        Raises:
            DeviceTimeoutError: no reply after the retries.
            DeviceOperationError: the device answered NAK.
        """
        return self._with_retries(f"header {header}", lambda: self.transact(header, data))

    def transact(self, header: int, data: bytes = b"") -> bytes:
        """One request/reply exchange without retries (the probe uses it to find devices).

        Raises:
            DeviceTimeoutError: no reply (or the device is busy).
            FrameError: only garbage came back.
            DeviceOperationError: the device answered NAK.
            DeviceUnavailableError: the port failed.
        """
        sent = Frame(dest=self.address, src=HOST, header=header, data=data)
        self._resync()
        self._write(encode(sent, crc16_mode=self.crc16))
        reply = self._read_reply(sent)
        if reply.header == Header.NAK:
            raise DeviceOperationError(f"cctalk: device {self.address} NAKed header {header}")
        if reply.header == Header.BUSY:
            # BUSY means "ask again later": the retry loop does exactly that
            raise DeviceTimeoutError(f"cctalk: device {self.address} busy for header {header}")
        return reply.data

    def _read_reply(self, sent: Frame) -> Frame:
        """The device's reply to ``sent``, past our own echo and other devices' traffic."""
        deadline = time.monotonic() + self.options.timeout
        echo_seen = False
        while True:
            frame = self._receive_frame(self._split, deadline)
            if not echo_seen and _is_echo(frame, sent):
                # a single-wire bus hands our own request back before the reply
                echo_seen = True
                continue
            if frame.dest != HOST or (frame.src is not None and frame.src != self.address):
                continue  # not addressed to us by our device: wait for the reply
            self.echo = echo_seen
            return frame

    # -- identity --------------------------------------------------------------------------
    def read_category(self) -> str:
        """The equipment category ("Bill Validator", "Coin Acceptor", …), one attempt."""
        return self.transact(Header.EQUIPMENT_CATEGORY).decode("ascii", "replace").strip()

    def _text(self, header: int, data: bytes = b"") -> str | None:
        try:
            raw = self.transact(header, data)
        except DeviceOperationError:
            return None  # optional header this model does not implement
        text = raw.decode("ascii", "replace").strip().strip("\x00")
        return text or None

    def _identify(self) -> DeviceInfo:
        manufacturer = self._text(Header.MANUFACTURER_ID)
        product = self._text(Header.PRODUCT_CODE)
        firmware = self._text(Header.SOFTWARE_REVISION)
        try:
            serial_raw = self.transact(Header.SERIAL_NUMBER)
        except DeviceOperationError:
            serial_raw = b""
        serial = str(int.from_bytes(serial_raw, "little")) if serial_raw else None
        model = " ".join(part for part in (manufacturer, product) if part) or None
        self._channels = self._read_channels()
        self._channels_read = True
        return DeviceInfo(model=model, serial=serial, firmware=firmware)

    @property
    def channels(self) -> dict[int, CashChannel]:
        """Channel → value in fen; read from the device on first use."""
        if not self._channels_read:
            self._channels = self._with_retries("channels", self._read_channels)
            self._channels_read = True
        return dict(self._channels)

    @abstractmethod
    def _read_channels(self) -> dict[int, CashChannel]:
        """Read the channel table (coin ids or bill ids) from the device, one attempt."""

    # -- acceptance ------------------------------------------------------------------------
    def _inhibit_mask(self, channels: list[int]) -> bytes:
        mask = 0
        for channel in channels:
            if 1 <= channel <= 16:
                mask |= 1 << (channel - 1)
        return mask.to_bytes(2, "little")

    def _enable(self, channels: list[int], escrow: bool) -> None:
        self.transact(Header.MODIFY_INHIBIT_STATUS, self._inhibit_mask(channels))
        self.transact(Header.MODIFY_MASTER_INHIBIT, b"\x01")

    def _disable(self) -> None:
        self.transact(Header.MODIFY_MASTER_INHIBIT, b"\x00")

    # -- events ----------------------------------------------------------------------------
    def _read_buffer(self) -> tuple[int, list[tuple[int, int]]]:
        data = self.transact(self.EVENT_HEADER)
        if len(data) != 1 + 2 * codes.EVENT_SLOTS:
            raise FrameError(f"cctalk: event buffer of {len(data)} bytes, expected 11")
        return codes.split_results(data)

    def _baseline(self) -> None:
        counter, pairs = self._read_buffer()
        self._counter = counter
        # the buffer still tells what state the device is in: a fraud attempt newer than the
        # last credit keeps the device flagged even though we do not report it as an event
        valid = pairs[: min(counter, codes.EVENT_SLOTS)] if counter else []
        for a, b in reversed(valid):
            effects = self._meaning(a, b)
            if effects.fraud:
                self.conditions.flag_fraud(self.clock())
            if effects.credited:
                self.conditions.fraud_until = 0.0

    def _poll(self) -> list[CashEvent]:
        counter, pairs = self._read_buffer()
        if self._counter is None:
            # first read: whatever is buffered happened before this host was watching
            self._counter = counter
            return []
        step = codes.counter_step(self._counter, counter)
        self._counter = counter
        events: list[CashEvent] = []
        if step.reset:
            log.warning("cctalk %d: device reset (event counter back to 0)", self.address)
            events.append({"type": "device_reset"})
            self._escrow = None
            if self._enabled:
                # a reset device is master-inhibited again; restore what the host asked for
                self._enable(self._enabled_channels, self._escrow_mode)
            return events
        if step.lost:
            log.warning("cctalk %d: %d events lost", self.address, step.lost)
            events.append(events_lost_event(step.lost))
        for a, b in reversed(pairs[: step.new]):
            effects = self._meaning(a, b)
            events.extend(effects.events)
            if effects.escrow is not None:
                self._escrow = effects.escrow
            if effects.escrow_cleared:
                self._escrow = None
            if effects.fraud:
                self.conditions.flag_fraud(self.clock())
            if effects.credited:
                self.conditions.fraud_until = 0.0
        return events

    @abstractmethod
    def _meaning(self, a: int, b: int) -> codes.EventEffects:
        """What one buffered result pair means for this kind of device."""

    def _check_still_enabled(self) -> None:
        """A reset before any event leaves the counter at 0, so the buffer cannot show it;
        the master inhibit status can. Re-enable what the host asked for."""
        try:
            master = self.transact(Header.MASTER_INHIBIT_STATUS)
        except DeviceOperationError:
            return  # optional header
        if master and not master[0] & 1:
            log.warning(
                "cctalk %d: found master-inhibited while enabled; re-enabling", self.address
            )
            self._enable(self._enabled_channels, self._escrow_mode)

    # -- status ----------------------------------------------------------------------------
    def _read_status(self) -> DeviceStatus:
        data = self.transact(Header.SELF_CHECK)
        code = data[0] if data else codes.FAULT_OK
        if self._enabled:
            self._check_still_enabled()
        codes.apply_self_check(self.conditions, code)
        return build_status(
            kind=self.kind,
            driver=self.name,
            info=self.info,
            conditions=self.conditions,
            now=self.clock(),
            busy=self._escrow is not None,
            cashbox_known=self.kind == "cash_acceptor",
        )


class CcTalkBillValidator(CcTalkDevice):
    """A ccTalk bill validator (equipment category "Bill Validator", default address 40)."""

    kind: ClassVar[DeviceKind] = "cash_acceptor"
    DEFAULT_ADDRESS = BILL_ADDRESS
    EVENT_HEADER = Header.READ_BUFFERED_BILL_EVENTS

    def _read_channels(self) -> dict[int, CashChannel]:
        try:
            variable_set = self.transact(Header.VARIABLE_SET)
        except DeviceOperationError:
            variable_set = b""
        count = variable_set[0] if variable_set else MAX_BILL_TYPES
        count = max(1, min(count, MAX_BILL_TYPES))
        ids: dict[int, tuple[str, int]] = {}
        for bill_type in range(1, count + 1):
            text = self._text(Header.BILL_ID, bytes([bill_type]))
            parsed = codes.parse_bill_id(text or "")
            if parsed:
                ids[bill_type] = parsed
        scaling: dict[str, tuple[int, int]] = {}
        for country in sorted({country for country, _ in ids.values()}):
            scaling[country] = self._scaling(country)
        return {
            bill_type: CashChannel(
                channel=bill_type,
                value=codes.bill_value(code, *scaling[country]),
                currency=codes.currency_of(country),
            )
            for bill_type, (country, code) in ids.items()
        }

    def _scaling(self, country: str) -> tuple[int, int]:
        quirk = self.options.quirks.get("scaling_factor")
        if isinstance(quirk, list | tuple) and len(quirk) == 2:
            return int(quirk[0]), int(quirk[1])
        try:
            data = self.transact(Header.COUNTRY_SCALING_FACTOR, country.encode("ascii"))
        except DeviceOperationError:
            data = b""
        scale = int.from_bytes(data[:2], "little") if len(data) >= 3 else 0
        if not scale:
            # unknown country scaling: take the value code as whole currency units
            log.warning("cctalk %d: no scaling for %s; assuming units", self.address, country)
            return 1, 0
        return scale, data[2]

    def _enable(self, channels: list[int], escrow: bool) -> None:
        # bit 0 = use the stacker, bit 1 = hold notes in escrow until routed
        self.transact(Header.MODIFY_BILL_OPERATING_MODE, bytes([0x01 | (0x02 if escrow else 0)]))
        super()._enable(channels, escrow)

    def _meaning(self, a: int, b: int) -> codes.EventEffects:
        return codes.bill_result(a, b, self._channels)

    def _route_escrow(self, *, accept: bool) -> None:
        data = self.request(Header.ROUTE_BILL, b"\x01" if accept else b"\x00")
        if data and data[0] == 254:
            raise DeviceOperationError("cctalk: route bill: escrow is empty")
        if data and data[0] == 255:
            raise DeviceOperationError("cctalk: route bill failed")


class CcTalkCoinAcceptor(CcTalkDevice):
    """A ccTalk coin acceptor (equipment category "Coin Acceptor", default address 2)."""

    kind: ClassVar[DeviceKind] = "coin_acceptor"
    DEFAULT_ADDRESS = COIN_ADDRESS
    EVENT_HEADER = Header.READ_BUFFERED_CREDIT

    def _read_channels(self) -> dict[int, CashChannel]:
        table: dict[int, CashChannel] = {}
        for position in range(1, COIN_POSITIONS + 1):
            channel = codes.parse_coin_id(
                self._text(Header.COIN_ID, bytes([position])) or "", position
            )
            if channel:
                table[position] = channel
        return table

    def _meaning(self, a: int, b: int) -> codes.EventEffects:
        return codes.coin_result(a, b, self._channels)

    def _route_escrow(self, *, accept: bool) -> None:
        raise DeviceOperationError("cctalk: coin acceptors have no escrow")


def discover(transport: Transport, options: ProbeOptions) -> CcTalkDevice | None:
    """Find a ccTalk device on the bus and return the right driver for it, or None.

    Tries the address asked for (``--address`` or the profile's, else both defaults: 2 coin,
    40 bill) with the configured checksum mode first, then the other mode; one simple poll
    each. The kind comes from the equipment category, not from the address.

    Raises:
        DeviceUnavailableError: the port failed.
    """
    driver_options = CcTalkDevice.driver_options(options)
    quirks = driver_options.quirks
    address = quirks.get("address")
    addresses = [address] if isinstance(address, int) else [COIN_ADDRESS, BILL_ADDRESS]
    configured_crc = bool(quirks.get("crc16", False))
    finder_options = DriverOptions(timeout=options.timeout, retries=0, quirks=quirks)
    for crc in (configured_crc, not configured_crc):
        for address in addresses:
            finder = CcTalkBillValidator(transport, finder_options, address=address, crc16=crc)
            try:
                finder.transact(Header.SIMPLE_POLL)
            except (DeviceTimeoutError, FrameError):
                continue
            except DeviceOperationError:
                log.info("cctalk: device %d answers simple poll with NAK", address)
            cls: type[CcTalkDevice] | None
            try:
                cls = driver_for_category(finder.read_category())
            except (DeviceTimeoutError, FrameError, DeviceOperationError):
                cls = None
            if cls is None:
                # not a category we drive (or no answer to it): go by the default address
                cls = CcTalkCoinAcceptor if address == COIN_ADDRESS else CcTalkBillValidator
            if crc != configured_crc:
                mode = "CRC-16" if crc else "simple checksum"
                log.info("cctalk: device %d speaks %s frames", address, mode)
            return cls(transport, driver_options, address=address, crc16=crc)
    return None


def driver_for_category(category: str) -> type[CcTalkDevice] | None:
    """The driver class for an equipment category reply, or None for other equipment."""
    lowered = category.strip().lower()
    if lowered == CATEGORY_BILL:
        return CcTalkBillValidator
    if lowered == CATEGORY_COIN:
        return CcTalkCoinAcceptor
    return None


def _is_echo(frame: Frame, sent: Frame) -> bool:
    # in CRC-16 mode the source byte carries the CRC, so a decoded frame has no source
    return frame.src in (None, sent.src) and (frame.dest, frame.header, frame.data) == (
        sent.dest,
        sent.header,
        sent.data,
    )


#: the package's entry points (see :mod:`kioskfleet.drivers.registry`)
open_driver = CcTalkDevice.open
probe = CcTalkDevice.probe
