"""ESC/POS receipt printer driver (Epson TM and compatibles: SNBC, Citizen, Bixolon, …).

Status comes from the real-time ``DLE EOT 1–4`` requests, which a printer answers even while
offline; replies are single bytes recognised by their fixed bits, with XON/XOFF and Automatic
Status Back blocks possibly interleaved (device-protocols.md §1.3, §1.6). Identity comes from
``GS I`` strings where the printer has them; ``GS I`` is processed in buffer order, so it is
not even asked while the printer is offline (it would answer late, into a later exchange).

Printing sends the receipt in chunks and honours XOFF (software flow control) until the print
deadline. Quirks (``DriverOptions.quirks``, from the firmware profile):

- ``dle_eot3_bit2``: what DLE EOT 3 bit 2 means — ``"mechanical_error"`` (Epson, default) or
  ``"paper_jam"`` (SNBC BT-T080 anti-jam module, §1.8);
- ``chinese`` (bool, default true): select Chinese mode (``FS &``) and send GB18030;
- ``cut`` (``"partial"`` default, ``"full"``, ``"none"``);
- ``qr_size`` (1–16, default 6), ``qr_error_correction`` (``L``/``M``/``Q``/``H``, default M);
- ``gs_i`` (bool, default true): ask ``GS I`` identity strings; ``id_timeout`` (s);
- ``asb`` (bool): :meth:`EscPosPrinter.open` enables Automatic Status Back;
- ``model``: model name to report when the printer does not say;
- ``print_timeout``, ``busy_wait`` (see :class:`~kioskfleet.drivers.printer.ReceiptPrinter`).
"""

from __future__ import annotations

import logging
import time
from typing import ClassVar, Final

from kioskfleet.drivers.base import DriverOptions, ProbeOptions, Transport
from kioskfleet.drivers.escpos import frames
from kioskfleet.drivers.exceptions import (
    ConfigurationError,
    DeviceTimeoutError,
    DriverError,
    FrameError,
)
from kioskfleet.drivers.printer import Receipt, ReceiptPrinter
from kioskfleet.protocol.devices import (
    DeviceInfo,
    DeviceKind,
    DeviceState,
    DeviceStatus,
    DriverName,
)

log = logging.getLogger(__name__)

#: bytes written between two looks at the input for XOFF; small enough that the printer's
#: spare buffer (Citizen: XOFF at 128 free bytes) absorbs what is in flight
CHUNK: Final = 128
#: ASB mask the agent enables: drawer, online/offline, error, paper sensor (GS a 15)
ASB_ALL: Final = 0x0F

_JAM_MEANINGS: Final = ("mechanical_error", "paper_jam")


def status_from_flags(
    flags: frames.PrinterFlags, *, jam_bit: str = "mechanical_error"
) -> tuple[DeviceState, list[str], str]:
    """Map decoded status bits to the contract vocabulary (CONTRACT §5, notes §5.5).

    Args:
        flags: what DLE EOT 1–4 (or an ASB block) said.
        jam_bit: the meaning of DLE EOT 3 bit 2 for this model (quirk ``dle_eot3_bit2``).

    Returns:
        ``(state, faults, paper)``. Where several conditions hold the state is the worst:
        ``hardware_error`` > ``user_error`` > ``busy`` > ``online``. A jam, paper out or an
        open cover need a person (``user_error``, the contract wins over §5.5's table); a
        cutter, mechanical or unrecoverable error is ``hardware_error``; an auto-recoverable
        error (head temperature) is ``busy``.
    """
    faults: list[str] = []
    hardware = user = busy = False
    paper_jam = flags.mechanical_error and jam_bit == "paper_jam"
    paper_out = flags.paper_end or flags.paper_end_stop
    if flags.cover_open:
        faults.append("cover_open")
        user = True
    if paper_out:
        faults.append("paper_out")
        user = True
    if paper_jam:
        faults.append("paper_jam")
        user = True
    if flags.cutter_error:
        faults.append("cutter_error")
        hardware = True
    if flags.mechanical_error and not paper_jam:
        faults.append("mechanical_error")
        hardware = True
    if flags.unrecoverable_error:
        faults.append("unrecoverable_error")
        hardware = True
    if flags.recoverable_error:
        faults.append("recoverable_error")
        busy = True
    known_cause = bool(faults)
    if flags.error and not known_cause:
        # DLE EOT 2 says "error" but DLE EOT 3 names no cause we know
        faults.append("hardware_fault")
        hardware = True
        known_cause = True
    if flags.offline and not known_cause:
        if flags.feeding or flags.feed_button or flags.waiting_recovery:
            busy = True  # someone feeds paper, or the printer is coming back by itself
        else:
            faults.append("offline")
            user = True
    if paper_jam:
        paper = "jammed"
    elif paper_out:
        paper = "out"
    elif flags.paper_near_end:
        paper = "low"
    else:
        paper = "full"
    state: DeviceState = (
        "hardware_error" if hardware else "user_error" if user else "busy" if busy else "online"
    )
    return state, faults, paper


class EscPosPrinter(ReceiptPrinter):
    """An ESC/POS receipt printer on an injected transport.

    ``last_asb`` holds the latest Automatic Status Back block seen (decoded), if any.
    """

    name: ClassVar[DriverName] = "escpos"
    kind: ClassVar[DeviceKind] = "printer"
    #: a common factory setting; the firmware profile or ``--baudrate`` says otherwise
    DEFAULT_BAUDRATE = 9600
    # an incomplete ASB block or string is dropped after INTER_BYTE_TIMEOUT (base: 0.2 s)

    def __init__(self, transport: Transport, options: DriverOptions | None = None) -> None:
        super().__init__(transport, options)
        jam = self.options.quirks.get("dle_eot3_bit2", "mechanical_error")
        if jam not in _JAM_MEANINGS:
            raise ConfigurationError(f"escpos: quirk dle_eot3_bit2 must be one of {_JAM_MEANINGS}")
        self.jam_bit: str = str(jam)
        self.last_asb: frames.PrinterFlags | None = None
        self._xoff = False
        self._info: DeviceInfo | None = None

    # -- public ------------------------------------------------------------------------------
    @property
    def xoff(self) -> bool:
        """True while the printer has asked us to stop sending (XOFF without XON yet)."""
        return self._xoff

    def enable_asb(self, enabled: bool = True) -> None:
        """Switch Automatic Status Back on (all conditions) or off (``GS a``).

        Raises:
            DeviceUnavailableError: the port failed.
        """
        self._write(frames.asb_request(ASB_ALL if enabled else 0))
        self._drain()

    def recover(self) -> None:
        """``DLE ENQ 1``: restart after a recoverable error (cutter jam cleared by a person).

        Raises:
            DeviceUnavailableError: the port failed.
        """
        self._write(frames.recovery_request(1))

    def read_flags(self) -> frames.PrinterFlags:
        """One DLE EOT 1–4 round (no retries): the raw status bits.

        Raises:
            DeviceTimeoutError: a request went unanswered.
        """
        return frames.decode_dle_eot(bytes(self._realtime(n) for n in (1, 2, 3, 4)))

    # -- template ----------------------------------------------------------------------------
    def _identify(self) -> DeviceInfo:
        # DLE EOT 1 first: it proves the printer is there (timeout otherwise) and tells
        # whether it is offline, when GS I would not be executed until it recovers
        printer = self._realtime(1)
        model = self.options.quirks.get("model")
        info = DeviceInfo(model=str(model) if model else None)
        offline = bool(printer & 0x08)
        if self.options.quirks.get("gs_i", True) and not offline:
            found: dict[int, str | None] = {}
            for n in (frames.ID_MODEL, frames.ID_FIRMWARE, frames.ID_SERIAL):
                found[n] = self._id_text(n)
                if found[n] is None:
                    break  # no answer: the printer lacks GS I strings, do not wait again
            info = DeviceInfo(
                model=found.get(frames.ID_MODEL) or info.model,
                firmware=found.get(frames.ID_FIRMWARE),
                serial=found.get(frames.ID_SERIAL),
            )
        elif self._info is not None:
            info = self._info  # keep what an earlier, online identify found
        self._info = info
        return info

    def _read_status(self) -> DeviceStatus:
        flags = self.read_flags()
        state, faults, paper = status_from_flags(flags, jam_bit=self.jam_bit)
        return self.status_object(
            state=state, paper=paper, faults=faults, info=self._info or self._fallback_info()
        )

    def _print(self, receipt: Receipt, deadline: float) -> None:
        quirks = self.options.quirks
        try:
            data = frames.encode_receipt(
                receipt.lines,
                receipt.qr,
                cut=quirks.get("cut", "partial") if receipt.cut else "none",
                chinese=bool(quirks.get("chinese", True)),
                qr_size=int(quirks.get("qr_size", 6)),
                qr_level=quirks.get("qr_error_correction", "M"),
            )
        except (ValueError, KeyError) as err:
            # the receipt was validated, so this is a bad quirk value in the profile
            raise DriverError(f"{self.name}: cannot encode the receipt: {err}") from err
        self._drain()
        for start in range(0, len(data), CHUNK):
            self._wait_xon(deadline)
            self._write(data[start : start + CHUNK])
            self._drain()

    # -- protocol ----------------------------------------------------------------------------
    def _fallback_info(self) -> DeviceInfo:
        model = self.options.quirks.get("model")
        return DeviceInfo(model=str(model) if model else None)

    def _realtime(self, n: int) -> int:
        """Send DLE EOT n and return its reply byte, skipping everything else."""
        self._drain()  # a late reply to an earlier request must not answer this one
        self._write(frames.status_request(n))
        deadline = time.monotonic() + self.options.timeout
        while True:
            for reply in self._replies(deadline):
                if isinstance(reply, frames.RealTime):
                    self._drain()  # XON/XOFF sent right behind the reply
                    return reply.value

    def _id_text(self, n: int) -> str | None:
        """Ask ``GS I n`` and return the string, or None when the printer stays silent."""
        timeout = float(self.options.quirks.get("id_timeout", min(self.options.timeout, 0.3)))
        self._drain()
        self._write(frames.identity_request(n))
        deadline = time.monotonic() + timeout
        try:
            while True:
                for reply in self._replies(deadline):
                    if isinstance(reply, frames.Text):
                        self._drain()  # XON/XOFF sent right behind the reply
                        return reply.text or None
        except (DeviceTimeoutError, FrameError):
            return None  # silent, or a string that stalled half-way: no usable answer

    def _replies(self, deadline: float) -> tuple[frames.Reply, ...]:
        """The next complete replies, flow control and ASB already handled.

        Raises:
            DeviceTimeoutError: nothing complete arrived before ``deadline``.
            FrameError: an ASB block or string stalled half-way.
        """
        replies = self._receive_frame(frames.next_replies, deadline)
        for reply in replies:
            if isinstance(reply, frames.Flow):
                self._xoff = reply.xoff
            elif isinstance(reply, frames.Asb):
                self._note_asb(reply.block)
        return replies

    def _note_asb(self, block: bytes) -> None:
        try:
            flags = frames.decode_asb(block)
        except FrameError as err:  # split_replies checked the pattern; keep the old one
            log.debug("%s: %s", self.name, err)
            return
        if flags != self.last_asb:
            log.debug("%s: ASB %s", self.name, ", ".join(frames.flag_names(flags)) or "ok")
        self.last_asb = flags

    def _drain(self) -> None:
        """Handle whatever is already waiting (XON/XOFF, ASB) without blocking."""
        while True:
            try:
                # a deadline already past: only the bytes that have arrived are looked at
                self._replies(deadline=0.0)
            except (DeviceTimeoutError, FrameError):
                return  # nothing complete is waiting

    def _wait_xon(self, deadline: float) -> None:
        """Block while the printer holds XOFF, up to ``deadline``."""
        while self._xoff:
            try:
                self._replies(deadline)
            except FrameError:
                continue  # a stalled ASB block, dropped: XON may still come
            except DeviceTimeoutError as err:
                raise DeviceTimeoutError(
                    f"{self.name}: printer held XOFF until the print timeout"
                ) from err

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def driver_options(cls, options: ProbeOptions) -> DriverOptions:
        """As :meth:`Driver.driver_options`; the profile's ``timeout``, ``retries`` and
        ``model`` (the name to report when the printer does not say) count too."""
        base = super().driver_options(options)
        profile = options.profile
        quirks = dict(base.quirks)
        if profile.get("model") and "model" not in quirks:
            quirks["model"] = profile["model"]
        timeout = profile.get("timeout", base.timeout)
        retries = profile.get("retries", base.retries)
        return DriverOptions(
            timeout=float(timeout) if isinstance(timeout, int | float) else base.timeout,
            retries=int(retries) if isinstance(retries, int) else base.retries,
            quirks=quirks,
        )

    def _on_open(self) -> None:
        if self.options.quirks.get("asb"):
            self.enable_asb()


#: the package's entry points (see :mod:`kioskfleet.drivers.registry`)
open_driver = EscPosPrinter.open
probe = EscPosPrinter.probe
