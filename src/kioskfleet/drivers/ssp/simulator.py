"""An ITL NV9/NV200-like banknote validator speaking plain SSP, behind any transport.

Disabled after reset; notes go READ (escrow) → on the next POLL STACKING, CREDIT, STACKED;
HOLD keeps a note in escrow, REJECT gives it back. Conditions (jam, stacker full, cashbox
removed, note path open, fraud) repeat in every poll while they last. A packet with the same
sequence bit as the previous one is not executed: the cached last reply is sent again::

    sim = SspSimulator()
    sim.insert(6)                 # a 100-yuan note (needs the validator enabled)
    sim.jam(safe=True)
    sim.set_fault("cashbox_removed")
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, ClassVar, Final

from kioskfleet.drivers.simulator import DeviceSimulator
from kioskfleet.drivers.ssp import codes
from kioskfleet.drivers.ssp.codes import Command, Event
from kioskfleet.drivers.ssp.frames import Packet, encode, scan

#: RMB 1, 5, 10, 20, 50, 100 yuan on channels 1..6
CNY_VALUES: Final = (1, 5, 10, 20, 50, 100)
MAX_PROTOCOL: Final = 8


class SspSimulator(DeviceSimulator):
    """The validator end of an SSP link.

    Args:
        address: SSP address (banknote validators: 0).
        values: channel values in whole yuan.
    """

    FAULTS: ClassVar[dict[str, str]] = {
        "note_jam_safe": "a note jammed out of reach (poll event 0xEA while it lasts)",
        "note_jam_unsafe": "a note jammed, reachable from the bezel (0xE9 while it lasts)",
        "cashbox_full": "stacker full (0xE7 while it lasts)",
        "cashbox_removed": "cashbox taken out (0xE3 until replaced)",
        "cashbox_replaced": "cashbox put back (0xE4 once)",
        "fraud": "a fraud attempt in progress (0xE6 while it lasts)",
        "note_path_open": "the note path is open (0xE0 while it lasts)",
        "no_answer": "the validator stops answering",
        "line_noise": "garbage bytes on the line before the next reply",
        "lost_reply": "the next reply is lost on the wire (the host must resend the same packet)",
        "device_reset": "the validator resets (0xF1, disabled, session lost)",
    }

    def __init__(self, *, address: int = 0, values: tuple[int, ...] = CNY_VALUES) -> None:
        self.address = address
        self.values = values
        self.serial = 10203040
        self.firmware = "NV02004141498000"
        self.dataset = "CNY01001"
        #: newest host protocol version this firmware accepts (older firmware: lower)
        self.max_protocol = MAX_PROTOCOL
        # fault switches
        self.no_answer = False
        self.jammed: bool | None = None  # None: no jam; True: safe jam
        self.cashbox = "ok"  # ok | full | missing
        self.note_path_open = False
        self.fraud_active = False
        #: bytes the line adds in front of the next reply
        self.noise = b""
        self.lose_replies = 0
        #: every command the validator executed (not the cached repeats), for tests
        self.executed: list[int] = []
        #: how many times a repeated sequence bit was answered from the cache
        self.repeats = 0
        self._lock = threading.RLock()
        self._rx = bytearray()
        self._queued: list[int] = []
        self._reset_state()
        self._events: list[bytes] = [bytes([Event.SLAVE_RESET])]

    def _reset_state(self) -> None:
        self.enabled = False
        self.inhibit_mask = 0
        self.protocol = 4
        self.escrow: int | None = None
        self.escrow_reported = False
        self.last_reject = 0
        self._events = []
        self._last_seq: bool | None = None
        self._last_reply: bytes | None = None

    # -- things a citizen or a technician does ---------------------------------------------
    def insert(self, channel: int) -> bool:
        """A citizen inserts a note of ``channel``; True when it went into escrow."""
        with self._lock:
            if not self.enabled or self.no_answer or self.note_path_open:
                return False
            if self.jammed is not None or self.cashbox != "ok" or self.escrow is not None:
                return False
            if self.fraud_active:
                self._queue(Event.FRAUD_ATTEMPT, 0)
                return False
            if not 1 <= channel <= len(self.values):
                self._reject(0x01)  # length fail: not a note this dataset knows
                return False
            if not self.inhibit_mask & (1 << (channel - 1)):
                self._reject(0x06)
                return False
            self.escrow = channel
            self.escrow_reported = False
            return True

    def queue_insert(self, *channels: int) -> None:
        """Notes a citizen will insert as soon as the validator is enabled."""
        with self._lock:
            self._queued.extend(channels)

    def jam(self, *, safe: bool) -> None:
        """A note jams until :meth:`clear_jam`."""
        with self._lock:
            self.jammed = safe

    def clear_jam(self) -> None:
        """A technician clears the jam."""
        with self._lock:
            self.jammed = None

    def remove_cashbox(self) -> None:
        """The cashbox is taken out."""
        with self._lock:
            self.cashbox = "missing"

    def replace_cashbox(self) -> None:
        """An emptied cashbox is put back."""
        with self._lock:
            if self.cashbox == "missing" or self.cashbox == "full":
                self.cashbox = "ok"
            self._queue(Event.CASHBOX_REPLACED)

    def power_cycle(self) -> None:
        """The validator resets: disabled, sequence state lost, SLAVE RESET reported."""
        with self._lock:
            self._reset_state()
            self._queue(Event.SLAVE_RESET)

    def set_fault(self, name: str) -> None:
        """Switch on a fault from :attr:`FAULTS`.

        Raises:
            ValueError: unknown fault.
        """
        if name not in self.FAULTS:
            super().set_fault(name)
        actions: dict[str, Callable[[], None]] = {
            "note_jam_safe": lambda: self.jam(safe=True),
            "note_jam_unsafe": lambda: self.jam(safe=False),
            "cashbox_full": lambda: setattr(self, "cashbox", "full"),
            "cashbox_removed": self.remove_cashbox,
            "cashbox_replaced": self.replace_cashbox,
            "fraud": lambda: setattr(self, "fraud_active", True),
            "note_path_open": lambda: setattr(self, "note_path_open", True),
            "no_answer": lambda: setattr(self, "no_answer", True),
            "line_noise": lambda: setattr(self, "noise", b"\x00\x7f\x80\x05\xf0\x12"),
            "lost_reply": lambda: setattr(self, "lose_replies", 1),
            "device_reset": self.power_cycle,
        }
        with self._lock:
            actions[name]()

    # -- internals -------------------------------------------------------------------------
    def _queue(self, event: int, data: int | None = None) -> None:
        self._events.append(bytes([event]) if data is None else bytes([event, data]))

    def _reject(self, code: int) -> None:
        self.last_reject = code
        self._queue(Event.REJECTING)
        self._queue(Event.REJECTED)

    def _conditions(self) -> bytes:
        out = bytearray()
        if self.jammed is not None:
            out.append(Event.SAFE_JAM if self.jammed else Event.UNSAFE_JAM)
        if self.cashbox == "full":
            out.append(Event.STACKER_FULL)
        if self.cashbox == "missing":
            out.append(Event.CASHBOX_REMOVED)
        if self.note_path_open:
            out.append(Event.NOTE_PATH_OPEN)
        if self.fraud_active:
            out += bytes([Event.FRAUD_ATTEMPT, 0])
        if not self.enabled:
            out.append(Event.DISABLED)
        return bytes(out)

    # -- the wire --------------------------------------------------------------------------
    def receive(self, data: bytes) -> bytes:
        """Consume host bytes; return the replies to complete packets for this address."""
        with self._lock:
            self._rx += data
            out = bytearray()
            while True:
                packet, start, end = scan(self._rx)
                if packet is None:
                    del self._rx[:start]
                    break
                del self._rx[:end]
                if packet.address != self.address or self.no_answer:
                    continue
                reply = self._handle(packet)
                if self.lose_replies:
                    self.lose_replies -= 1  # executed, but the host never hears the answer
                    continue
                out += self.noise + reply
                self.noise = b""
            return bytes(out)

    def _handle(self, packet: Packet) -> bytes:
        command = packet.data[0]
        if command != Command.SYNC and packet.seq == self._last_seq and self._last_reply:
            # the host did not get our reply: send it again, do not execute twice
            self.repeats += 1
            return self._last_reply
        self.executed.append(command)
        body = self._execute(command, packet.data[1:])
        reply = encode(Packet(address=self.address, seq=packet.seq, data=body))
        self._last_seq = packet.seq
        self._last_reply = reply
        return reply

    def _execute(self, command: int, params: bytes) -> bytes:
        ok = bytes([codes.OK])
        handlers: dict[int, Callable[[bytes], bytes]] = {
            Command.SYNC: lambda _: ok,
            Command.RESET: self._cmd_reset,
            Command.HOST_PROTOCOL_VERSION: self._cmd_protocol,
            Command.SETUP_REQUEST: lambda _: (
                ok
                + codes.setup_reply(
                    unit_type=0,
                    firmware=self.firmware[4:8],
                    country="CNY",
                    values=list(self.values),
                    protocol=self.protocol,
                )
            ),
            Command.SET_INHIBITS: self._cmd_inhibits,
            Command.ENABLE: lambda _: self._set_enabled(True),
            Command.DISABLE: lambda _: self._set_enabled(False),
            Command.POLL: self._cmd_poll,
            Command.HOLD: self._cmd_hold,
            Command.REJECT: self._cmd_reject,
            Command.LAST_REJECT_CODE: lambda _: ok + bytes([self.last_reject]),
            Command.GET_SERIAL_NUMBER: lambda _: ok + self.serial.to_bytes(4, "big"),
            Command.GET_FIRMWARE_VERSION: lambda _: ok + self.firmware.encode("ascii"),
            Command.GET_DATASET_VERSION: lambda _: ok + self.dataset.encode("ascii"),
        }
        handler = handlers.get(command)
        if handler is None:
            return bytes([0xF2])
        return handler(params)

    def _cmd_reset(self, _: bytes) -> bytes:
        self._reset_state()
        self._queue(Event.SLAVE_RESET)
        return bytes([codes.OK])

    def _cmd_protocol(self, params: bytes) -> bytes:
        if len(params) != 1:
            return bytes([0xF3])
        if not 1 <= params[0] <= self.max_protocol:
            return bytes([codes.FAIL])
        self.protocol = params[0]
        return bytes([codes.OK])

    def _cmd_inhibits(self, params: bytes) -> bytes:
        if not 1 <= len(params) <= 3:
            return bytes([0xF3])
        self.inhibit_mask = int.from_bytes(params, "little")
        return bytes([codes.OK])

    def _set_enabled(self, enabled: bool) -> bytes:
        self.enabled = enabled
        return bytes([codes.OK])

    def _cmd_poll(self, _: bytes) -> bytes:
        if self.enabled and self._queued and self.escrow is None:
            # one note at a time: the next waits until the escrow is free again
            self.insert(self._queued.pop(0))
        out = bytearray([codes.OK])
        for event in self._events:
            out += event
        self._events = []
        if self.escrow is not None:
            if not self.escrow_reported:
                out += bytes([Event.READ, self.escrow])
                self.escrow_reported = True
            else:
                # the host polled instead of holding: stack the note
                out += bytes([Event.STACKING, Event.CREDIT, self.escrow, Event.STACKED])
                self.escrow = None
        out += self._conditions()
        return bytes(out[:255])

    def _cmd_hold(self, _: bytes) -> bytes:
        if self.escrow is None or not self.escrow_reported:
            return bytes([codes.CANNOT_PROCESS])
        return bytes([codes.OK])

    def _cmd_reject(self, _: bytes) -> bytes:
        if self.escrow is None:
            return bytes([codes.CANNOT_PROCESS])
        self.escrow = None
        self._reject(0x08)
        return bytes([codes.OK])


def make_simulator(kind: str | None = None, **options: Any) -> SspSimulator:
    """An SSP banknote validator simulator (``kind`` is ignored: there is one kind)."""
    return SspSimulator(**options)
