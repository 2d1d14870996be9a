"""A simulated ESC/POS receipt printer with fault switches.

It tokenizes the host's byte stream with :func:`~kioskfleet.drivers.escpos.frames.next_command`
and behaves like a real printer in the ways a driver can notice:

- real-time commands (``DLE EOT``, ``DLE ENQ``) are answered on arrival, always;
- every other command waits in the receive buffer while the printer is offline (cover open,
  paper out, an error) and runs once the fault is cleared — so ``GS I`` is not answered then;
- Automatic Status Back (``GS a``, or switched on at power-up) sends a 4-byte block when
  enabled and on every change;
- ``xoff_noise`` wraps every reply in XOFF … XON and answers print data with XOFF, XON.

Fault switches: ``sim.paper`` (``"full"``, ``"low"``, ``"out"``), ``sim.cover_open``,
``sim.cutter_error`` (or ``sim.jam_next_cut()``), ``sim.paper_jam`` (DLE EOT 3 bit 2, the SNBC
anti-jam module), ``sim.unrecoverable``, ``sim.recoverable`` (head too hot),
``sim.silent`` (no answer), ``sim.xoff_noise``, ``sim.xoff_stuck`` (XOFF, never XON),
``sim.asb_mask``, ``sim.paper_lines_left`` (paper runs out after that many lines). What was
printed is recorded in ``sim.receipts`` (cut receipts), ``sim.current`` (printed but not cut
yet) and ``sim.cuts``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import ClassVar, Final, Literal

from kioskfleet.drivers.escpos import frames
from kioskfleet.drivers.simulator import DeviceSimulator

Paper = Literal["full", "low", "out"]

#: GS I strings per simulated model (a missing key: the model does not answer that n)
IDENTITIES: Final[dict[str, dict[int, str]]] = {
    "epson": {
        frames.ID_FIRMWARE: "30.01 ESC/POS",
        frames.ID_MAKER: "EPSON",
        frames.ID_MODEL: "TM-T82",
        frames.ID_SERIAL: "X4SM012345",
    },
    # SNBC: model and firmware, no serial number string
    "snbc": {frames.ID_FIRMWARE: "V1.05", frames.ID_MAKER: "SNBC", frames.ID_MODEL: "BT-T080"},
}
#: GS I 1/2/3 single bytes (model ID, type ID, firmware ID); type: multi-byte chars, autocutter
_ID_BYTES: Final[dict[int, int]] = {1: 0x20, 2: 0x03, 3: 0x01, 49: 0x20, 50: 0x03, 51: 0x01}


@dataclass
class PrintedReceipt:
    """What came out of the simulated printer between two cuts."""

    lines: list[str] = field(default_factory=list)
    qr: list[str] = field(default_factory=list)
    cut: bool = False


class EscPosSimulator(DeviceSimulator):
    """The printer end of the link.

    Args:
        model: ``"epson"`` (TM-T82, GS I strings incl. serial) or ``"snbc"`` (BT-T080).
    """

    FAULTS: ClassVar[dict[str, str]] = {
        "paper_low": "paper near end (DLE EOT 4 bits 2,3)",
        "paper_out": "paper end: printer offline, stopped by paper end",
        "cover_open": "the cover is open: printer offline",
        "cutter_jam": "the autocutter is jammed (DLE EOT 3 bit 3)",
        "paper_jam": "DLE EOT 3 bit 2: SNBC anti-jam module / Epson mechanical error",
        "unrecoverable": "an unrecoverable error (DLE EOT 3 bit 5)",
        "recoverable": "an auto-recoverable error, head too hot (DLE EOT 3 bit 6)",
        "no_answer": "the printer does not answer at all (powered off)",
        "xoff_noise": "XOFF/XON around every reply and after print data",
        "xoff_stuck": "receive buffer full: XOFF after print data, never XON",
        "asb": "Automatic Status Back enabled at power-up (GS a 15)",
        "no_identity": "no GS I strings (model, firmware, serial unknown)",
    }

    def __init__(self, model: str = "epson") -> None:
        if model not in IDENTITIES:
            raise ValueError(f"unknown escpos model {model!r}; known: {', '.join(IDENTITIES)}")
        self.model = model
        self.identity: dict[int, str] = dict(IDENTITIES[model])
        self.paper: Paper = "full"
        self.cover_open = False
        self.cutter_error = False
        self.paper_jam = False
        self.unrecoverable = False
        self.recoverable = False
        self.silent = False
        self.xoff_noise = False
        self.xoff_stuck = False
        self.asb_mask = 0
        #: lines of paper left before the roll runs out (None: plenty)
        self.paper_lines_left: int | None = None
        self.chinese = False
        self.receipts: list[PrintedReceipt] = []
        self.current = PrintedReceipt()
        self.cuts = 0
        #: every command received, for tests that assert on the wire
        self.commands: list[frames.Command] = []
        self._jam_next_cut = False
        self._input = bytearray()
        self._held: list[frames.Command] = []
        self._line = bytearray()
        self._qr_store = b""
        self._asb_sent: bytes | None = None
        self._lock = threading.Lock()

    # -- switches ----------------------------------------------------------------------------
    def set_fault(self, name: str) -> None:
        """Switch on a fault from :attr:`FAULTS`."""
        if name == "paper_low":
            self.paper = "low"
        elif name == "paper_out":
            self.paper = "out"
        elif name == "cover_open":
            self.cover_open = True
        elif name == "cutter_jam":
            self.cutter_error = True
        elif name == "paper_jam":
            self.paper_jam = True
        elif name == "unrecoverable":
            self.unrecoverable = True
        elif name == "recoverable":
            self.recoverable = True
        elif name == "no_answer":
            self.silent = True
        elif name == "xoff_noise":
            self.xoff_noise = True
        elif name == "xoff_stuck":
            self.xoff_stuck = True
        elif name == "asb":
            self.asb_mask = 0x0F
        elif name == "no_identity":
            self.identity = {}
        else:
            super().set_fault(name)

    def jam_next_cut(self) -> None:
        """The next cut jams the autocutter."""
        self._jam_next_cut = True

    def clear_faults(self) -> None:
        """A technician fixes everything: new roll, cover closed, jams cleared."""
        self.paper = "full"
        self.paper_lines_left = None
        self.cover_open = self.cutter_error = self.paper_jam = False
        self.unrecoverable = self.recoverable = False

    @property
    def ready(self) -> bool:
        """True when the printer executes commands (it is online)."""
        return not self.flags().offline

    @property
    def printed_lines(self) -> list[str]:
        """Every line printed so far, cut or not."""
        return [line for r in self.receipts for line in r.lines] + self.current.lines

    def flags(self) -> frames.PrinterFlags:
        """The printer's state as status bits."""
        paper_end = self.paper == "out"
        error = self.cutter_error or self.paper_jam or self.unrecoverable or self.recoverable
        return frames.PrinterFlags(
            offline=self.cover_open or paper_end or error,
            cover_open=self.cover_open,
            paper_end_stop=paper_end,
            error=error,
            mechanical_error=self.paper_jam,
            cutter_error=self.cutter_error,
            unrecoverable_error=self.unrecoverable,
            recoverable_error=self.recoverable,
            paper_near_end=self.paper in ("low", "out"),
            paper_end=paper_end,
        )

    # -- device ------------------------------------------------------------------------------
    def receive(self, data: bytes) -> bytes:
        """Consume host bytes; answer real-time requests now, run the rest when online."""
        with self._lock:
            if self.silent:
                self._input.clear()
                return b""
            self._input += data
            out = bytearray(self._run_held())
            printed = False
            while self._input:
                command, consumed = frames.next_command(bytes(self._input))
                if command is None:
                    break
                del self._input[:consumed]
                self.commands.append(command)
                if command.realtime:
                    out += self._realtime(command)
                elif self._held or not self.ready:
                    self._held.append(command)
                else:
                    out += self._execute(command)
                    printed = printed or command.name in ("text", "lf", "gs_k")
            if self.xoff_stuck and printed:
                out += bytes([frames.XOFF])
            elif self.xoff_noise and printed:
                out += bytes([frames.XOFF, frames.XON])  # "buffer nearly full", then free again
            out += self._asb_if_changed()
            return bytes(out)

    def unsolicited(self) -> bytes:
        """Held commands that can run now, and ASB blocks when the state changed."""
        with self._lock:
            if self.silent:
                return b""
            return self._run_held() + self._asb_if_changed()

    def _reply(self, data: bytes) -> bytes:
        if self.xoff_noise and data:
            return bytes([frames.XOFF]) + data + bytes([frames.XON])
        return data

    def _run_held(self) -> bytes:
        out = bytearray()
        while self._held and self.ready:
            out += self._execute(self._held.pop(0))
        return bytes(out)

    def _asb_if_changed(self) -> bytes:
        if not self.asb_mask:
            return b""
        block = frames.encode_asb(self.flags())
        if block == self._asb_sent:
            return b""
        self._asb_sent = block
        return self._reply(block)

    def _realtime(self, command: frames.Command) -> bytes:
        if command.name == "dle_eot" and command.arg in (1, 2, 3, 4):
            return self._reply(bytes([frames.encode_dle_eot(self.flags())[command.arg - 1]]))
        if command.name == "dle_enq" and command.arg == 1:
            # recover from a recoverable error; a jammed cutter stays jammed until cleared
            self.recoverable = False
        return b""

    def _execute(self, command: frames.Command) -> bytes:
        name = command.name
        if name == "init":
            self.chinese = False
            self._line.clear()
            self._qr_store = b""
        elif name == "chinese_on":
            self.chinese = True
        elif name == "chinese_off":
            self.chinese = False
        elif name == "text":
            self._line += command.data
        elif name == "lf":
            self._print_line()
        elif name == "gs_k":
            self._qr(command.data)
        elif name == "cut":
            self._cut()
        elif name == "gs_i":
            return self._identity(command.arg)
        elif name == "gs_a":
            self.asb_mask = command.arg
            self._asb_sent = None  # enabling ASB sends the current status at once
        elif name == "gs_r" and command.arg in (1, 49):
            paper = (0x03 if self.paper in ("low", "out") else 0) | (
                0x0C if self.paper == "out" else 0
            )
            return self._reply(bytes([paper]))
        return b""

    def _identity(self, n: int) -> bytes:
        if n in self.identity:
            return self._reply(frames.encode_text_reply(self.identity[n]))
        if n in _ID_BYTES and self.identity:
            return self._reply(bytes([_ID_BYTES[n]]))
        return b""  # unsupported: a real printer ignores it

    def _print_line(self) -> None:
        data = bytes(self._line)
        self._line.clear()
        if self.chinese:
            text = data.decode("gb18030", errors="replace")
        else:
            text = data.decode("ascii", errors="replace")
        self.current.lines.append(text)
        if self.paper_lines_left is not None:
            self.paper_lines_left -= 1
            if self.paper_lines_left <= 0:
                self.paper = "out"
            elif self.paper_lines_left <= 5:
                self.paper = "low"

    def _qr(self, data: bytes) -> None:
        if len(data) < 2 or data[0] != 49:
            return  # not the QR symbol (cn = 49)
        fn = data[1]
        if fn == 80 and len(data) >= 3:
            self._qr_store = data[3:]
        elif fn == 81 and self._qr_store:
            self.current.qr.append(self._qr_store.decode("utf-8", errors="replace"))

    def _cut(self) -> None:
        if self._jam_next_cut:
            self._jam_next_cut = False
            self.cutter_error = True
            return
        self.cuts += 1
        self.current.cut = True
        self.receipts.append(self.current)
        self.current = PrintedReceipt()


def make_simulator(kind: str | None = None) -> EscPosSimulator:
    """An ESC/POS printer simulator; ``kind`` is the model: ``"epson"`` (default) or ``"snbc"``.

    Raises:
        ValueError: unknown model.
    """
    return EscPosSimulator(kind or "epson")
