"""Remote operations a technician runs on a station (CONTRACT §3 ``cmd/{name}``).

The agent (:class:`~kioskfleet.agent.agent.StationAgent`) receives a command, makes sure it
runs at most once (its outbox records every command id with the reply) and calls a handler
from here. What a handler needs from the station comes in through small interfaces, so the
kiosk and the fleet simulator answer the same commands with their own devices:

- :class:`StationOps` — restart a device, print a test receipt, "is a citizen mid-transaction?"
  (:class:`HubOps` over the kiosk's :class:`~kioskfleet.agent.hub.DeviceHub`; the simulator
  has its own);
- a restart hook — what ``restart_agent`` does after its reply is queued (a kiosk exits with
  :data:`RESTART_EXIT_CODE` for systemd to start it again; the simulator rebuilds the agent);
- :class:`LogRing` — the agent's newest log lines, for ``collect_logs``.

A handler refuses with :class:`CommandError` (a clear message for the technician); the agent
turns that, a driver's error and anything unexpected into a reply with ``status: "error"``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import datetime as dt
import gzip
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from kioskfleet import __version__
from kioskfleet.agent.hub import DeviceHub, UnknownDeviceError
from kioskfleet.agent.tracker import TransactionTracker
from kioskfleet.drivers.exceptions import DriverError
from kioskfleet.drivers.printer import PrinterNotReadyError, Receipt, ReceiptPrinter
from kioskfleet.protocol.devices import DeviceStatus

if TYPE_CHECKING:
    from kioskfleet.agent.agent import StationAgent

log = logging.getLogger(__name__)

#: the exit code of an agent asked to restart (``restart_agent``): not 0, so a systemd unit
#: with ``Restart=on-failure`` starts it again; 75 is EX_TEMPFAIL ("try again")
RESTART_EXIT_CODE: Final = 75
#: base64 characters of compressed log lines one ``collect_logs`` reply carries at most: the
#: reply (envelope, up to 32 dropped-range declarations, the id) stays under 64 KiB
LOG_BUDGET: Final = 56 * 1024

RestartHook = Callable[[], Awaitable[None]]
Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class CommandError(Exception):
    """A command refused or failed: the message goes to the technician as the reply's ``error``.

    Never put personal data in it.
    """


@dataclass(frozen=True)
class AfterReply:
    """A handler's result plus what to do once the reply is queued (``restart_agent``)."""

    result: Any
    then: RestartHook


class StationOps(Protocol):
    """What the device commands need from a station."""

    async def restart_device(self, slot: str) -> DeviceStatus:
        """Close and reopen the device in ``slot``; its status afterwards.

        Raises:
            CommandError: no such device, or it did not come back.
        """
        ...

    async def print_test(self, slot: str, lines: list[str]) -> DeviceStatus:
        """Print ``lines`` on the printer in ``slot``; its status afterwards.

        Raises:
            CommandError: no such printer, or it cannot print.
        """
        ...

    def busy(self) -> bool:
        """True while a citizen is mid-transaction."""
        ...


class HubOps:
    """:class:`StationOps` over a kiosk's device hub and transaction state."""

    def __init__(self, hub: DeviceHub, tracker: TransactionTracker | None = None) -> None:
        self.hub = hub
        self.tracker = tracker

    def busy(self) -> bool:
        """Asks the tracker (no tracker: never busy)."""
        return self.tracker is not None and self.tracker.busy

    async def restart_device(self, slot: str) -> DeviceStatus:
        """Reopen the driver through the hub (under the device's lock)."""
        kind = self._kind(slot)
        try:
            return await asyncio.to_thread(self.hub.restart, slot)
        except DriverError as err:
            raise CommandError(f"{slot} did not come back: {_driver_reason(kind, err)}") from err

    async def print_test(self, slot: str, lines: list[str]) -> DeviceStatus:
        """Print on the hub's printer; a printer that cannot print says why (its faults)."""
        if self._kind(slot) != "printer":
            raise CommandError(f"the device in slot {slot!r} is not a receipt printer")
        receipt = Receipt(lines=lines, cut=True)

        def run() -> DeviceStatus:
            with self.hub.use(slot) as driver:
                if not isinstance(driver, ReceiptPrinter):
                    raise CommandError(f"the device in slot {slot!r} is not a receipt printer")
                return driver.print_receipt(receipt)

        try:
            return await asyncio.to_thread(run)
        except PrinterNotReadyError as err:
            faults = ", ".join(err.status.faults) or err.status.state
            raise CommandError(f"{slot} cannot print ({faults}): {err}") from err
        except DriverError as err:
            raise CommandError(f"{slot} did not print: {err}") from err

    def _kind(self, slot: str) -> str:
        try:
            return self.hub.kind(slot)
        except UnknownDeviceError as err:
            raise CommandError(f"no device is configured in slot {slot!r}") from err


def _driver_reason(kind: str, err: DriverError) -> str:
    """What a driver said, except an ID card reader's words (a reply could quote a card)."""
    if kind == "id_reader":
        return f"the ID card reader failed ({type(err).__name__})"
    return str(err) or type(err).__name__


# -- the agent's own log lines -------------------------------------------------------------------
#: what could be a resident ID number (18 characters, the last maybe X) or a bank card number:
#: the product never logs them, and collect_logs masks them should a bug ever do so
_PERSONAL: Final = re.compile(r"(?<![0-9A-Za-z])(?:\d{17}[0-9Xx]|\d{15,19})(?![0-9A-Za-z])")


class _UtcFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


class LogRing(logging.Handler):
    """The newest log lines of this process, in memory and bounded, for ``collect_logs``.

    Attach it to the ``kioskfleet`` logger (:meth:`attach`). By the product's rules no log
    record holds a citizen's data (an ID card's contents are never logged, not even masked);
    as a second line, whatever looks like an ID or bank card number is masked as it is stored.

    Args:
        max_lines: lines kept at most (the oldest go first).
        max_chars: characters kept at most, over all lines.
        shared: one ring serves many stations of one process (the fleet simulator): a
            station's ``collect_logs`` then gets only the lines that name it.
    """

    def __init__(
        self,
        *,
        max_lines: int = 5000,
        max_chars: int = 1_000_000,
        level: int = logging.INFO,
        shared: bool = False,
    ) -> None:
        super().__init__(level)
        self.max_lines = max_lines
        self.max_chars = max_chars
        self.shared = shared
        self._lines: collections.deque[str] = collections.deque()
        self._chars = 0
        self._guard = threading.Lock()
        self.setFormatter(_UtcFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def attach(self, logger: str = "kioskfleet") -> LogRing:
        """Receive the records of ``logger`` and its children; returns self."""
        logging.getLogger(logger).addHandler(self)
        return self

    def detach(self, logger: str = "kioskfleet") -> None:
        """Stop receiving records."""
        logging.getLogger(logger).removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        """Store one record, formatted and masked."""
        try:
            line = _PERSONAL.sub("[masked]", self.format(record))[: self.max_chars]
        except Exception:  # noqa: BLE001 — logging must never break the agent (handleError reports)
            self.handleError(record)
            return
        with self._guard:
            self._lines.append(line)
            self._chars += len(line) + 1
            while len(self._lines) > self.max_lines or self._chars > self.max_chars:
                self._chars -= len(self._lines.popleft()) + 1

    def lines(self, station: str | None = None) -> list[str]:
        """The lines held, oldest first (in a shared ring: those naming ``station``)."""
        with self._guard:
            lines = list(self._lines)
        if self.shared and station is not None:
            lines = [line for line in lines if station in line]
        return lines

    def collect(self, *, station: str | None = None, budget: int = LOG_BUDGET) -> dict[str, Any]:
        """The newest lines whose gzip+base64 text fits ``budget`` characters."""
        lines = self.lines(station)

        def pack(count: int) -> str:
            text = "\n".join(lines[len(lines) - count :]).encode("utf-8")
            return base64.b64encode(gzip.compress(text, mtime=0)).decode("ascii")

        # the largest count that fits: compression makes the size monotone only roughly, so
        # search for it instead of guessing from the raw length
        low, high = 0, len(lines)
        best = pack(0)
        while low < high:
            middle = (low + high + 1) // 2
            packed = pack(middle)
            if len(packed) <= budget:
                low, best = middle, packed
            else:
                high = middle - 1
        return {
            "format": "gzip+base64",
            "lines": low,
            "available": len(lines),
            "complete": low == len(lines),
            "data": best,
        }


def unpack_logs(result: Mapping[str, Any]) -> list[str]:
    """The lines a ``collect_logs`` reply carries (for tools and tests)."""
    text = gzip.decompress(base64.b64decode(result["data"])).decode("utf-8")
    return text.split("\n") if text else []


# -- the handlers --------------------------------------------------------------------------------
class StationCommands:
    """The remote operations of one agent, as ``cmd/{name}`` handlers.

    Args:
        agent: the station's agent (its in-service flag, birth and coordinator).
        ops: the station's devices; without, device commands answer an error.
        restart: what ``restart_agent`` does once its reply is queued; without, it answers
            an error.
        logs: the log ring ``collect_logs`` reads; without, it answers an error.
    """

    def __init__(
        self,
        agent: StationAgent,
        *,
        ops: StationOps | None = None,
        restart: RestartHook | None = None,
        logs: LogRing | None = None,
    ) -> None:
        self.agent = agent
        self.ops = ops
        self.restart = restart
        self.logs = logs

    def handlers(self) -> dict[str, Handler]:
        """Handler by command name."""
        return {
            "restart_agent": self.restart_agent,
            "restart_device": self.restart_device,
            "print_test": self.print_test,
            "out_of_service": self.out_of_service,
            "in_service": self.in_service,
            "collect_logs": self.collect_logs,
        }

    async def restart_agent(self, args: dict[str, Any]) -> AfterReply:
        """Answer ok, then restart (the reply is queued durably before)."""
        if self.restart is None:
            raise CommandError("this agent runs without a supervisor hook: it cannot restart")
        log.warning("%s: restarting the agent on the controller's request", self.agent.station)
        return AfterReply({"restarting": True}, self.restart)

    async def restart_device(self, args: dict[str, Any]) -> dict[str, Any]:
        """Close and reopen one device's driver; report its status."""
        slot = _slot(args, required=True)
        ops = self._ops()
        if ops.busy():
            # a reopened acceptor forgets what it buffered: a citizen's credit could be lost
            raise CommandError("a citizen is mid-transaction: restart the device when it is idle")
        log.info("%s: restarting device %s on the controller's request", self.agent.station, slot)
        status = await ops.restart_device(slot)
        await self.agent.coordinator.refresh()  # the new status goes out as an event too
        return {"device": slot, "status": _status_json(status)}

    async def print_test(self, args: dict[str, Any]) -> dict[str, Any]:
        """Print a test receipt (no personal data on it), refused while a citizen is busy."""
        slot = _slot(args, default="printer")
        ops = self._ops()
        if ops.busy():
            raise CommandError("a citizen is mid-transaction: no test print now")
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        lines = [
            "kioskfleet print test",
            f"station {self.agent.station}",
            now,
            f"agent {__version__}",
        ]
        status = await ops.print_test(slot, lines)
        return {"device": slot, "printed": True, "status": _status_json(status)}

    async def out_of_service(self, args: dict[str, Any]) -> dict[str, Any]:
        """Take the station out of service (the kiosk application stops new business)."""
        changed = self.agent.set_in_service(False)
        return {"in_service": False, "changed": changed}

    async def in_service(self, args: dict[str, Any]) -> dict[str, Any]:
        """Put the station back in service."""
        changed = self.agent.set_in_service(True)
        return {"in_service": True, "changed": changed}

    async def collect_logs(self, args: dict[str, Any]) -> dict[str, Any]:
        """The newest log lines that fit one reply, gzip-compressed and base64-encoded."""
        if self.logs is None:
            raise CommandError("this agent keeps no log lines to collect")
        logs = self.logs
        # compressing a megabyte of lines a dozen times takes a moment: not on the loop
        return await asyncio.to_thread(lambda: logs.collect(station=self.agent.station))

    def _ops(self) -> StationOps:
        if self.ops is None:
            raise CommandError("this agent has no device operations")
        return self.ops


def _slot(args: dict[str, Any], *, required: bool = False, default: str = "") -> str:
    value = args.get("device", None if required else default)
    if value is None:
        raise CommandError("args.device is required: the device's slot, e.g. 'printer'")
    if not isinstance(value, str) or not value:
        raise CommandError("args.device must be a slot name such as 'printer'")
    return value


def _status_json(status: DeviceStatus) -> dict[str, Any]:
    return status.model_copy(update={"events": []}).model_dump(mode="json", exclude_none=True)
