"""The receipt-printer family: what the kiosk agent asks of any receipt printer.

:class:`ReceiptPrinter` adds one verb to :class:`~kioskfleet.drivers.base.Driver`:
:meth:`~ReceiptPrinter.print_receipt`. Like ``identify``/``status`` it is a template method:
the base validates the :class:`Receipt`, refuses to print into a printer that cannot serve,
applies the print timeout and checks the printer's status afterwards (port failures are
wrapped where the bytes are written, in :class:`~kioskfleet.drivers.base.Driver`); a protocol
package writes only ``_print`` (the bytes). Printing is never retried by the base:
a receipt printed twice is worse than one reported as failed.

A receipt may carry a citizen's name, so :class:`Receipt` never shows its text in ``repr`` and
nothing here logs it.
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from kioskfleet.drivers.base import Driver, ProbeResult
from kioskfleet.drivers.exceptions import DeviceOperationError, DriverError
from kioskfleet.protocol.devices import DeviceInfo, DeviceKind, DeviceState, DeviceStatus

log = logging.getLogger(__name__)

#: more lines than any kiosk receipt needs; a bound keeps a runaway caller from emptying the roll
MAX_LINES: Final = 200
#: characters per line before the caller should have wrapped (80 mm paper: 48 ASCII / 24 CJK)
MAX_LINE_CHARS: Final = 256
#: QR model 2, version 40, level L holds 2953 bytes
MAX_QR_BYTES: Final = 2953
#: how long a print may take by default (quirk ``print_timeout``)
PRINT_TIMEOUT: Final = 10.0
#: how long to wait for a ``busy`` printer to come back before giving up (quirk ``busy_wait``)
BUSY_WAIT: Final = 2.0
#: how often ``device probe --watch`` reads the status
PROBE_INTERVAL: Final = 0.25


class InvalidReceiptError(DriverError, ValueError):
    """The receipt itself is wrong (empty, too long, control characters). Fix the caller."""


class PrinterNotReadyError(DeviceOperationError):
    """The printer answered but cannot print (paper out, cover open, cutter jam, …).

    ``status`` is the printer's status at that moment, so the caller can show what is wrong.
    """

    def __init__(self, message: str, status: DeviceStatus) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, repr=False)
class Receipt:
    """What to print: lines of text (Chinese allowed), an optional QR code, then a cut.

    Args:
        lines: the text, one string per printed line, without line breaks or control
            characters (wrapping is the caller's business).
        qr: text to encode as a QR code printed below the lines.
        cut: cut the paper after the receipt.
    """

    lines: Sequence[str] = field(default_factory=tuple)
    qr: str | None = None
    cut: bool = True

    def __post_init__(self) -> None:
        # keep the receipt immutable even when the caller passes a list
        object.__setattr__(self, "lines", tuple(self.lines))

    def validate(self) -> None:
        """Check the receipt can be printed as asked.

        Raises:
            InvalidReceiptError: no content, too many or too long lines, control characters,
                or a QR payload too large for a QR code.
        """
        if not self.lines and not self.qr:
            raise InvalidReceiptError("a receipt needs at least one line or a QR code")
        if len(self.lines) > MAX_LINES:
            raise InvalidReceiptError(f"{len(self.lines)} lines; at most {MAX_LINES}")
        for number, line in enumerate(self.lines, start=1):
            if not isinstance(line, str):
                raise InvalidReceiptError(f"line {number} is not text")
            if len(line) > MAX_LINE_CHARS:
                raise InvalidReceiptError(
                    f"line {number} has {len(line)} characters; at most {MAX_LINE_CHARS}"
                )
            # control characters would be read by the printer as commands
            if _has_control(line):
                raise InvalidReceiptError(f"line {number} contains a control character")
        if self.qr is not None:
            if not self.qr:
                raise InvalidReceiptError("the QR payload is empty")
            size = len(self.qr.encode("utf-8"))
            if size > MAX_QR_BYTES:
                raise InvalidReceiptError(f"QR payload of {size} bytes; at most {MAX_QR_BYTES}")

    def __repr__(self) -> str:
        qr = "None" if self.qr is None else f"<{len(self.qr)} chars>"
        return f"Receipt(lines=<{len(self.lines)} lines>, qr={qr}, cut={self.cut})"

    __str__ = __repr__


def _has_control(text: str) -> bool:
    return any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in text)


class ReceiptPrinter(Driver):
    """A receipt printer: ``identify``, ``status`` and ``print_receipt``.

    Status in the contract vocabulary (CONTRACT §5): ``supplies`` always has ``paper``
    (``full``/``low``/``out``/``jammed``/``unknown``); faults among ``cover_open``,
    ``paper_out``, ``paper_jam``, ``cutter_error``, ``unrecoverable_error``,
    ``recoverable_error``, ``offline``.

    Quirks read here: ``print_timeout`` (s, default 10), ``busy_wait`` (s, default 2).
    """

    kind: ClassVar[DeviceKind] = "printer"

    @property
    def print_timeout(self) -> float:
        """Longest a whole print may take, flow control included."""
        return float(self.options.quirks.get("print_timeout", PRINT_TIMEOUT))

    @property
    def busy_wait(self) -> float:
        """Longest to wait for a ``busy`` printer (head cooling down) before refusing."""
        return float(self.options.quirks.get("busy_wait", BUSY_WAIT))

    def print_receipt(self, receipt: Receipt) -> DeviceStatus:
        """Print ``receipt`` and return the printer's status afterwards.

        Raises:
            InvalidReceiptError: the receipt is wrong (nothing was sent).
            PrinterNotReadyError: the printer cannot print (nothing was sent), or reported a
                fault after printing (the receipt may be incomplete); see its ``status``.
            DeviceTimeoutError: the printer held the data back (flow control) or did not
                answer in time.
            DeviceUnavailableError: the port failed.
        """
        receipt.validate()
        before = self._wait_ready()
        self._print(receipt, time.monotonic() + self.print_timeout)
        after = self.status()
        if after.state not in ("online", "busy"):
            raise PrinterNotReadyError(
                f"{self.name}: printer reports {after.state} ({_faults(after)}) after printing",
                after,
            )
        log.debug(
            "%s: printed %d lines%s (state before: %s)",
            self.name,
            len(receipt.lines),
            " and a QR code" if receipt.qr else "",
            before.state,
        )
        return after

    def _wait_ready(self) -> DeviceStatus:
        """Read the status; wait out ``busy``; refuse anything but ``online``."""
        deadline = time.monotonic() + self.busy_wait
        status = self.status()
        while status.state == "busy" and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            status = self.status()
        if status.state != "online":
            raise PrinterNotReadyError(
                f"{self.name}: cannot print, printer is {status.state} ({_faults(status)})",
                status,
            )
        return status

    def status_object(
        self,
        *,
        state: DeviceState,
        paper: str,
        faults: list[str] | None = None,
        info: DeviceInfo | None = None,
        events: list[dict[str, Any]] | None = None,
    ) -> DeviceStatus:
        """Build this printer's status in the contract vocabulary (CONTRACT §5)."""
        return DeviceStatus(
            device=self.kind,
            driver=self.name,
            state=state,
            faults=faults or [],
            info=info or DeviceInfo(),
            supplies={"paper": paper},
            events=events or [],
        )

    @classmethod
    def offline_status(cls, error: DriverError, info: DeviceInfo | None = None) -> DeviceStatus:
        """As :meth:`Driver.offline_status`, with paper ``unknown`` (printers have it)."""
        return (
            super()
            .offline_status(error, info)
            .model_copy(update={"supplies": {"paper": "unknown"}})
        )

    def _probe(self, watch: float | None) -> ProbeResult:
        """``kioskfleet device probe`` for a printer: identify and read the status once.

        Sends only status and identity requests: nothing on the printer changes. With
        ``watch`` it keeps reading the status for that many seconds and reports the last.
        """
        info: DeviceInfo | None = None
        try:
            # bytes buffered before we started (old ASB blocks) are not news
            self._resync()
            info = self.identify()
            status = self.status()
            if watch:
                end = time.monotonic() + watch
                while time.monotonic() < end:
                    time.sleep(min(PROBE_INTERVAL, max(0.0, end - time.monotonic())))
                    status = self.status()
            return ProbeResult(status=status.model_copy(update={"info": info}), answered=True)
        except DriverError as err:
            return ProbeResult(status=self.offline_status(err, info), answered=False)

    @abstractmethod
    def _print(self, receipt: Receipt, deadline: float) -> None:
        """Send one validated receipt to the printer before ``deadline`` (monotonic).

        Raises:
            DeviceTimeoutError: the printer did not take the data in time.
        """


def _faults(status: DeviceStatus) -> str:
    return ", ".join(status.faults) or "no fault reported"


__all__ = [
    "BUSY_WAIT",
    "MAX_LINES",
    "MAX_LINE_CHARS",
    "MAX_QR_BYTES",
    "PRINT_TIMEOUT",
    "PROBE_INTERVAL",
    "InvalidReceiptError",
    "PrinterNotReadyError",
    "Receipt",
    "ReceiptPrinter",
]
