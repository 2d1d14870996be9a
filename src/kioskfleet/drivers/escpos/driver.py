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
- ``asb`` (bool): :func:`open_driver` enables Automatic Status Back;
- ``model``: model name to report when the printer does not say;
- ``print_timeout``, ``busy_wait`` (see :class:`~kioskfleet.drivers.printer.ReceiptPrinter`).
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar, Final

from kioskfleet.drivers import registry
from kioskfleet.drivers.base import DriverOptions, Transport, open_transport
from kioskfleet.drivers.escpos import frames
from kioskfleet.drivers.exceptions import (
    DeviceTimeoutError,
    DeviceUnavailableError,
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

#: a common factory setting; the firmware profile or ``--baudrate`` says otherwise
DEFAULT_BAUDRATE: Final = 9600
#: bytes written between two looks at the input for XOFF; small enough that the printer's
#: spare buffer (Citizen: XOFF at 128 free bytes) absorbs what is in flight
CHUNK: Final = 128
#: ASB mask the agent enables: drawer, online/offline, error, paper sensor (GS a 15)
ASB_ALL: Final = 0x0F
#: an incomplete ASB block or string is dropped after this much silence
INTER_BYTE_TIMEOUT: Final = 0.2

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

    def __init__(self, transport: Transport, options: DriverOptions | None = None) -> None:
        super().__init__(transport, options)
        jam = self.options.quirks.get("dle_eot3_bit2", "mechanical_error")
        if jam not in _JAM_MEANINGS:
            raise ValueError(f"escpos: quirk dle_eot3_bit2 must be one of {_JAM_MEANINGS}")
        self.jam_bit: str = str(jam)
        self.last_asb: frames.PrinterFlags | None = None
        self._rx = bytearray()
        self._rx_since = 0.0  # when the last bytes of an incomplete tail in _rx arrived
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
        try:
            self.transport.write(frames.asb_request(ASB_ALL if enabled else 0))
            self._drain()
        except OSError as err:
            raise DeviceUnavailableError(f"{self.name}: port failed: {err}") from err

    def recover(self) -> None:
        """``DLE ENQ 1``: restart after a recoverable error (cutter jam cleared by a person).

        Raises:
            DeviceUnavailableError: the port failed.
        """
        try:
            self.transport.write(frames.recovery_request(1))
        except OSError as err:
            raise DeviceUnavailableError(f"{self.name}: port failed: {err}") from err

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
            self.transport.write(data[start : start + CHUNK])
            self._drain()

    # -- protocol ----------------------------------------------------------------------------
    def _fallback_info(self) -> DeviceInfo:
        model = self.options.quirks.get("model")
        return DeviceInfo(model=str(model) if model else None)

    def _realtime(self, n: int) -> int:
        """Send DLE EOT n and return its reply byte, skipping everything else."""
        self._drain()  # a late reply to an earlier request must not answer this one
        self.transport.write(frames.status_request(n))
        deadline = time.monotonic() + self.options.timeout
        while True:
            for reply in self._take(deadline):
                if isinstance(reply, frames.RealTime):
                    return reply.value

    def _id_text(self, n: int) -> str | None:
        """Ask ``GS I n`` and return the string, or None when the printer stays silent."""
        timeout = float(self.options.quirks.get("id_timeout", min(self.options.timeout, 0.3)))
        self._drain()
        self.transport.write(frames.identity_request(n))
        deadline = time.monotonic() + timeout
        try:
            while True:
                for reply in self._take(deadline):
                    if isinstance(reply, frames.Text):
                        return reply.text or None
        except DeviceTimeoutError:
            return None

    def _take(self, deadline: float) -> list[frames.Reply]:
        """Read once and return the complete replies, having handled flow control and ASB.

        Raises:
            DeviceTimeoutError: nothing complete arrived before ``deadline``.
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeviceTimeoutError(f"{self.name}: no reply before the timeout")
        self.transport.timeout = remaining
        # block for the first byte only (pyserial's read(n) waits for all n), then take
        # whatever else is already waiting without blocking
        chunk = self.transport.read(1)
        if not chunk:
            raise DeviceTimeoutError(f"{self.name}: no reply before the timeout")
        self.transport.timeout = 0
        chunk += self.transport.read(256)
        return self._feed(chunk)

    def _feed(self, chunk: bytes) -> list[frames.Reply]:
        now = time.monotonic()
        if self._rx and now - self._rx_since > INTER_BYTE_TIMEOUT:
            # an ASB block or string started and stalled: drop it (not a reply to anything)
            log.debug("%s: dropped a stalled partial reply of %d bytes", self.name, len(self._rx))
            self._rx.clear()
        self._rx += chunk
        replies, used = frames.split_replies(bytes(self._rx))
        del self._rx[:used]
        if self._rx:
            self._rx_since = now
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
        self.transport.timeout = 0
        chunk = self.transport.read(256)
        if chunk:
            self._feed(chunk)

    def _wait_xon(self, deadline: float) -> None:
        """Block while the printer holds XOFF, up to ``deadline``."""
        while self._xoff:
            try:
                self._take(deadline)
            except DeviceTimeoutError as err:
                raise DeviceTimeoutError(
                    f"{self.name}: printer held XOFF until the print timeout"
                ) from err

    def _resync(self) -> None:
        self._rx.clear()
        super()._resync()


def driver_options(options: registry.ProbeOptions) -> DriverOptions:
    """Timeouts, retries and quirks for the driver: the profile's, then the command line's."""
    profile = options.profile
    quirks: dict[str, Any] = {}
    for key in ("quirks", "escpos"):
        table = profile.get(key)
        if isinstance(table, dict):
            quirks.update(table)
    if profile.get("model") and "model" not in quirks:
        quirks["model"] = profile["model"]
    timeout = profile.get("timeout", options.timeout)
    retries = profile.get("retries", options.retries)
    return DriverOptions(
        timeout=float(timeout) if isinstance(timeout, int | float) else options.timeout,
        retries=int(retries) if isinstance(retries, int) else options.retries,
        quirks=quirks,
    )


def _baudrate(options: registry.ProbeOptions) -> int:
    if options.baudrate:
        return options.baudrate
    value = options.profile.get("baudrate")
    return value if isinstance(value, int) and value > 0 else DEFAULT_BAUDRATE


def open_driver(port: str, options: registry.ProbeOptions) -> EscPosPrinter:
    """Open the port and wrap it; enables Automatic Status Back when the profile says ``asb``.

    Raises:
        DeviceUnavailableError: the port cannot be opened.
    """
    driver_opts = driver_options(options)
    transport = open_transport(port, baudrate=_baudrate(options), timeout=driver_opts.timeout)
    try:
        printer = EscPosPrinter(transport, driver_opts)
    except ValueError as err:
        transport.close()
        raise DriverError(str(err)) from err
    if driver_opts.quirks.get("asb"):
        printer.enable_asb()
    return printer


def probe(
    port: str,
    options: registry.ProbeOptions,
    *,
    interval: float = 0.25,
) -> registry.ProbeResult:
    """``kioskfleet device probe escpos PORT``: identify and read the status once.

    Sends only DLE EOT and GS I (no ESC @, no GS a): nothing on the printer changes. With
    ``options.watch`` it keeps reading the status for that many seconds and reports the last.
    """
    driver_opts = driver_options(options)
    try:
        transport = open_transport(port, baudrate=_baudrate(options), timeout=driver_opts.timeout)
    except DeviceUnavailableError:
        status = DeviceStatus(
            device="printer",
            driver="escpos",
            state="no_device",
            faults=["offline"],
            supplies={"paper": "unknown"},
        )
        return registry.ProbeResult(status=status, answered=False)
    try:
        printer = EscPosPrinter(transport, driver_opts)
    except ValueError as err:  # a bad quirk in the profile: not the printer's fault
        transport.close()
        raise DriverError(str(err)) from err
    info: DeviceInfo | None = None
    try:
        # bytes buffered before we started (old ASB blocks) are not news
        printer._resync()
        info = printer.identify()
        status = printer.status()
        if options.watch:
            end = time.monotonic() + options.watch
            while time.monotonic() < end:
                time.sleep(min(interval, max(0.0, end - time.monotonic())))
                status = printer.status()
        return registry.ProbeResult(status=status.model_copy(update={"info": info}), answered=True)
    except DriverError as err:
        return registry.ProbeResult(status=printer.offline_status(err, info), answered=False)
    finally:
        printer.close()
