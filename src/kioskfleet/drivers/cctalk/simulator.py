"""A ccTalk bill validator or coin acceptor, behind any transport.

Answers the headers the driver uses with the behaviour of a real device: master-inhibited
after reset, a five-slot event buffer with a counter that wraps 255 → 1, escrow held until
routed (bills), and fault switches::

    sim = CcTalkSimulator("bill", echo=True)
    sim.insert(6)              # a 100-yuan note (needs acceptance enabled)
    sim.jam(safe=False)        # self-check 39 + event "bill jammed (unsafe)"
    sim.set_fault("cashbox_removed")
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, Final

from kioskfleet.drivers.cctalk import codes
from kioskfleet.drivers.cctalk.frames import (
    BILL_ADDRESS,
    COIN_ADDRESS,
    HOST,
    Frame,
    Header,
    encode,
    scan,
)
from kioskfleet.drivers.simulator import DeviceSimulator

#: RMB notes 1, 5, 10, 20, 50, 100 yuan as bill types 1..6 (value codes in yuan)
BILL_IDS: Final = ("CN0001A", "CN0005A", "CN0010A", "CN0020A", "CN0050A", "CN0100A")
#: RMB coins 1 jiao, 5 jiao, 1 yuan as positions 1..3 (values in fen)
COIN_IDS: Final = ("CN010A", "CN050A", "CN100A")
#: header 156 for "CN": value code x 100 = fen, 2 decimal places
CN_SCALING: Final = bytes([100, 0, 2])
#: the receiver forgets a partial frame after this gap (ccTalk: 50 ms)
INTER_BYTE_GAP: Final = 0.05
BILL_FAULT_ONLY: Final = frozenset(
    {"note_jam_safe", "note_jam_unsafe", "cashbox_full", "cashbox_removed", "cashbox_replaced"}
)


class CcTalkSimulator(DeviceSimulator):
    """The device end of a ccTalk link.

    Args:
        kind: ``"bill"`` (bill validator, address 40) or ``"coin"`` (coin acceptor, address 2).
        address: override the default address.
        echo: hand every byte the host writes straight back (single-wire bus loopback).
        crc16: speak 16-bit CRC frames instead of the simple checksum.
    """

    FAULTS: ClassVar[dict[str, str]] = {
        "note_jam_safe": "a note jammed out of reach (bill; self-check 39, event 16)",
        "note_jam_unsafe": "a note jammed in the transport (bill; self-check 39, event 6)",
        "cashbox_full": "stacker full (bill; self-check 45, event 14)",
        "cashbox_removed": "stacker removed (bill; self-check 44, event 11)",
        "cashbox_replaced": "stacker put back (bill; event 12)",
        "fraud": "a fraud attempt: string fraud (bill event 18) / coin on string (coin event 20)",
        "note_path_open": "the validator's door / note path is open (self-check 51)",
        "hardware_fault": "a sensor or motor fault (self-check 37 bill transport / 2 coils)",
        "no_answer": "the device stops answering (the bus still echoes)",
        "events_lost": "seven events at once when next enabled: the host must report loss",
        "counter_wrap": "event counter at 254, so the next events wrap 255 → 1",
        "device_reset": "the device resets: counter 0, master inhibit, all inhibits off",
        "line_noise": "garbage bytes on the line before the next reply",
        "bus_echo": "wire option: the bus echoes the host's bytes",
        "crc16": "wire option: 16-bit CRC frames instead of the simple checksum",
    }

    def __init__(
        self,
        kind: str = "bill",
        *,
        address: int | None = None,
        echo: bool = False,
        crc16: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if kind not in ("bill", "coin"):
            raise ValueError(f"ccTalk simulator kind is 'bill' or 'coin', not {kind!r}")
        self.kind = kind
        self.address = (
            address if address is not None else (BILL_ADDRESS if kind == "bill" else COIN_ADDRESS)
        )
        self.echo = echo
        self.crc16 = crc16
        self.clock = clock
        self.ids: tuple[str, ...] = BILL_IDS if kind == "bill" else COIN_IDS
        self.serial = 1234567
        # fault switches
        self.no_answer = False
        self.jammed: bool | None = None  # None: no jam; else True = safe
        self.cashbox = "ok"  # ok | full | missing
        self.note_path_open = False
        self.hardware_fault = False
        self.fraud_active = False
        #: bytes the line adds in front of the next reply (noise, a half frame)
        self.noise = b""
        #: every frame the simulator understood, for tests that assert on the wire
        self.received: list[Frame] = []
        self._lock = threading.RLock()
        self._rx = bytearray()
        self._last_rx = 0.0
        self._queued: list[int] = []
        self._power_up()

    # -- device state ----------------------------------------------------------------------
    def _power_up(self) -> None:
        self.counter = 0
        self.buffer: list[tuple[int, int]] = [(0, 0)] * codes.EVENT_SLOTS
        self.master_enabled = False
        self.inhibit_mask = 0
        self.escrow_mode = False
        self.escrow: int | None = None

    @property
    def accepting(self) -> bool:
        """True when the host has enabled acceptance (master inhibit off)."""
        return self.master_enabled

    def push(self, a: int, b: int) -> None:
        """Record one event in the buffer (newest first) and advance the counter."""
        with self._lock:
            self.counter = codes.next_counter(self.counter)
            self.buffer = [(a, b), *self.buffer[: codes.EVENT_SLOTS - 1]]

    def self_check_code(self) -> int:
        """The fault code header 232 reports now (one at a time, most serious first)."""
        if self.hardware_fault:
            return 37 if self.kind == "bill" else 2
        if self.jammed is not None:
            return codes.FAULT_BILL_JAMMED
        if self.cashbox == "missing":
            return codes.FAULT_STACKER_MISSING
        if self.cashbox == "full":
            return codes.FAULT_STACKER_FULL
        if self.note_path_open:
            return codes.FAULT_DOOR_OPEN
        return codes.FAULT_OK

    # -- things a citizen or a technician does ---------------------------------------------
    def insert(self, channel: int) -> bool:
        """A citizen inserts the note (bill type) or coin (position) ``channel``.

        Returns True when the device took it (credited, or held in escrow).
        """
        with self._lock:
            if not self.master_enabled or self.no_answer:
                return False  # inhibited: the transport does not even start
            if self.kind == "coin":
                return self._insert_coin(channel)
            return self._insert_bill(channel)

    def _insert_coin(self, position: int) -> bool:
        if self.fraud_active:
            self.push(0, 20)
            return False
        if not 1 <= position <= len(self.ids):
            self.push(0, 1)
            return False
        if not self.inhibit_mask & (1 << (position - 1)):
            self.push(0, codes.COIN_INHIBITED_FIRST + position - 1)
            return False
        self.push(position, 1)
        return True

    def _insert_bill(self, bill_type: int) -> bool:
        if self.jammed is not None or self.cashbox != "ok" or self.hardware_fault:
            return False
        if self.escrow is not None:
            return False  # the escrow position is taken: the bezel does not take another note
        if self.fraud_active:
            self.push(0, 18)
            return False
        if not 1 <= bill_type <= len(self.ids):
            self.push(0, 2)
            return False
        if not self.inhibit_mask & (1 << (bill_type - 1)):
            self.push(0, 4)
            return False
        if self.escrow_mode:
            self.escrow = bill_type
            self.push(bill_type, 1)
        else:
            self.push(bill_type, 0)
        return True

    def queue_insert(self, *channels: int) -> None:
        """Notes or coins a citizen will insert as soon as acceptance is enabled."""
        with self._lock:
            self._queued.extend(channels)

    def jam(self, *, safe: bool) -> None:
        """A note jams (self-check 39 until :meth:`clear_jam`)."""
        with self._lock:
            self.jammed = safe
            self.push(0, 16 if safe else 6)

    def clear_jam(self) -> None:
        """A technician clears the jam."""
        with self._lock:
            self.jammed = None

    def remove_cashbox(self) -> None:
        """The stacker is taken out."""
        with self._lock:
            self.cashbox = "missing"
            self.push(0, codes.BILL_STACKER_REMOVED)

    def replace_cashbox(self) -> None:
        """An emptied stacker is put back."""
        with self._lock:
            self.cashbox = "ok"
            self.push(0, codes.BILL_STACKER_INSERTED)

    def fill_cashbox(self) -> None:
        """The stacker is full."""
        with self._lock:
            self.cashbox = "full"
            self.push(0, codes.BILL_STACKER_FULL)

    def fraud(self) -> None:
        """A fraud attempt happens now (and every insert is one until :attr:`fraud_active` off)."""
        with self._lock:
            self.fraud_active = True
            self.push(0, 18 if self.kind == "bill" else 20)

    def power_cycle(self) -> None:
        """The device resets (host sees the counter back at 0)."""
        with self._lock:
            self._power_up()

    def set_fault(self, name: str) -> None:
        """Switch on a fault from :attr:`FAULTS`.

        Raises:
            ValueError: unknown fault, or a bill-only fault on a coin acceptor.
        """
        if name not in self.FAULTS:
            super().set_fault(name)
        if self.kind == "coin" and name in BILL_FAULT_ONLY:
            raise ValueError(f"fault {name!r} is for bill validators only")
        with self._lock:
            actions: dict[str, Callable[[], None]] = {
                "note_jam_safe": lambda: self.jam(safe=True),
                "note_jam_unsafe": lambda: self.jam(safe=False),
                "cashbox_full": self.fill_cashbox,
                "cashbox_removed": self.remove_cashbox,
                "cashbox_replaced": self.replace_cashbox,
                "fraud": self.fraud,
                "note_path_open": lambda: setattr(self, "note_path_open", True),
                "hardware_fault": lambda: setattr(self, "hardware_fault", True),
                "no_answer": lambda: setattr(self, "no_answer", True),
                "events_lost": lambda: self.queue_insert(*([1] * 7)),
                "counter_wrap": lambda: setattr(self, "counter", 254),
                "device_reset": self.power_cycle,
                "line_noise": lambda: setattr(self, "noise", b"\xaa\x01\x07\x55"),
                "bus_echo": lambda: setattr(self, "echo", True),
                "crc16": lambda: setattr(self, "crc16", True),
            }
            actions[name]()

    # -- the wire --------------------------------------------------------------------------
    def receive(self, data: bytes) -> bytes:
        """Consume host bytes; return echo (if on) and replies to frames for this address."""
        with self._lock:
            out = bytearray(data if self.echo else b"")
            now = self.clock()
            if self._rx and now - self._last_rx > INTER_BYTE_GAP:
                self._rx.clear()  # a gap inside a frame resets the receiver
            self._last_rx = now
            self._rx += data
            while True:
                frame, start, end = scan(self._rx, crc16_mode=self.crc16)
                if frame is None:
                    del self._rx[:start]
                    break
                del self._rx[:end]
                if frame.dest != self.address or self.no_answer:
                    continue
                self.received.append(frame)
                reply = self._answer(frame)
                if reply is not None:
                    out += self.noise + encode(reply, crc16_mode=self.crc16)
                    self.noise = b""
            return bytes(out)

    def _reply(self, data: bytes = b"", header: int = Header.REPLY) -> Frame:
        return Frame(dest=HOST, src=self.address, header=header, data=data)

    def _answer(self, frame: Frame) -> Frame | None:
        handler = self._handlers().get(frame.header)
        if handler is None:
            return self._reply(header=Header.NAK)
        return handler(frame.data)

    def _handlers(self) -> dict[int, Callable[[bytes], Frame | None]]:
        text = self._text
        handlers: dict[int, Callable[[bytes], Frame | None]] = {
            Header.SIMPLE_POLL: lambda _: self._reply(),
            Header.EQUIPMENT_CATEGORY: lambda _: text(
                "Bill Validator" if self.kind == "bill" else "Coin Acceptor"
            ),
            Header.MANUFACTURER_ID: lambda _: text("KFS"),
            Header.PRODUCT_CODE: lambda _: text("BV-SIM" if self.kind == "bill" else "CA-SIM"),
            Header.SERIAL_NUMBER: lambda _: self._reply(self.serial.to_bytes(3, "little")),
            Header.SOFTWARE_REVISION: lambda _: text("1.2.0"),
            Header.BUILD_CODE: lambda _: text("SIM1"),
            Header.COMMS_REVISION: lambda _: self._reply(bytes([1, 4, 6])),
            Header.SELF_CHECK: lambda _: self._reply(bytes([self.self_check_code()])),
            Header.INHIBIT_STATUS: lambda _: self._reply(self.inhibit_mask.to_bytes(2, "little")),
            Header.MODIFY_INHIBIT_STATUS: self._modify_inhibits,
            Header.MASTER_INHIBIT_STATUS: lambda _: self._reply(bytes([int(self.master_enabled)])),
            Header.MODIFY_MASTER_INHIBIT: self._modify_master,
            Header.RESET: self._reset,
        }
        if self.kind == "bill":
            handlers.update(
                {
                    Header.VARIABLE_SET: lambda _: self._reply(bytes([len(self.ids), 1])),
                    Header.BILL_ID: lambda d: text(self._id(d)),
                    Header.COUNTRY_SCALING_FACTOR: lambda d: self._reply(
                        CN_SCALING if d == b"CN" else bytes(3)
                    ),
                    Header.MODIFY_BILL_OPERATING_MODE: self._operating_mode,
                    Header.ROUTE_BILL: self._route,
                    Header.READ_BUFFERED_BILL_EVENTS: self._events,
                }
            )
        else:
            handlers.update(
                {
                    Header.COIN_ID: lambda d: text(self._id(d)),
                    Header.READ_BUFFERED_CREDIT: self._events,
                    Header.STATUS: lambda _: self._reply(b"\x00"),
                }
            )
        return handlers

    def _text(self, value: str) -> Frame:
        return self._reply(value.encode("ascii"))

    def _id(self, data: bytes) -> str:
        width = 7 if self.kind == "bill" else 6
        if len(data) == 1 and 1 <= data[0] <= len(self.ids):
            return self.ids[data[0] - 1]
        return "." * width  # an unprogrammed position

    def _modify_inhibits(self, data: bytes) -> Frame:
        if len(data) != 2:
            return self._reply(header=Header.NAK)
        self.inhibit_mask = int.from_bytes(data, "little")
        return self._reply()

    def _modify_master(self, data: bytes) -> Frame:
        if len(data) != 1:
            return self._reply(header=Header.NAK)
        self.master_enabled = bool(data[0] & 1)
        return self._reply()

    def _operating_mode(self, data: bytes) -> Frame:
        if len(data) != 1:
            return self._reply(header=Header.NAK)
        self.escrow_mode = bool(data[0] & 0x02)
        return self._reply()

    def _route(self, data: bytes) -> Frame:
        if len(data) != 1:
            return self._reply(header=Header.NAK)
        if self.escrow is None:
            return self._reply(bytes([254]))
        if data[0] == 1:
            self.push(self.escrow, 0)
            self.escrow = None
        elif data[0] == 0:
            self.push(0, codes.BILL_RETURNED_FROM_ESCROW)
            self.escrow = None
        return self._reply()  # 255 = extend the escrow timeout: nothing to do here

    def _events(self, _: bytes) -> Frame:
        if self.master_enabled and self._queued:
            queued, self._queued = self._queued, []
            for channel in queued:
                self.insert(channel)
        flat = bytes(byte for pair in self.buffer for byte in pair)
        return self._reply(bytes([self.counter]) + flat)

    def _reset(self, _: bytes) -> Frame:
        self._power_up()
        return self._reply()


def make_simulator(kind: str | None = None, **options: Any) -> CcTalkSimulator:
    """A ccTalk simulator: ``kind`` ``"bill"`` (default) or ``"coin"``; ``echo``, ``crc16``."""
    return CcTalkSimulator(kind or "bill", **options)
