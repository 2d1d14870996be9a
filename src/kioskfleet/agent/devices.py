"""The peripheral coordinator: polls every device through one place (HA ``DataUpdateCoordinator``).

Blocking serial calls run off the event loop; failures map to one kind (an offline status);
changes become ``device_status`` events; logs are written on state *changes* only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import NamedTuple, Protocol

from kioskfleet.protocol.devices import DeviceStatus

log = logging.getLogger(__name__)


#: seconds between polls of a source whose ``poll_interval`` raises
FALLBACK_INTERVAL = 5.0


class DeviceSource(Protocol):
    """Something that can report one device's status: a driver, or a simulated device."""

    slot: str
    #: True when :meth:`read` does serial I/O and must run off the event loop
    blocking: bool

    def read(self) -> DeviceStatus:
        """Current status; should not raise (a device that does not answer reports
        ``offline``) — if it does, the coordinator reports the device ``offline`` itself."""
        ...

    def poll_interval(self) -> float:
        """How soon to read again (an enabled cash acceptor needs frequent polls)."""
        ...


class _Reading(NamedTuple):
    #: None: the source raised before it ever reported, so nothing says which device it is
    status: DeviceStatus | None
    #: the read started or stopped failing, and that was logged already
    logged: bool = False


class Coordinator:
    """Keeps the last status of every device and reports changes.

    A source whose ``read`` raises (a bug: sources report failures as statuses) does not end
    its polling: the device is reported ``offline`` (faults ``["offline"]``, as a driver that
    cannot reach its device does) and polled on; the failure and the recovery are logged once.

    Args:
        sources: the station's devices.
        on_change: called with (slot, status) whenever a device's status changes.
    """

    def __init__(
        self, sources: list[DeviceSource], on_change: Callable[[str, DeviceStatus], None]
    ) -> None:
        self.sources = sources
        self._on_change = on_change
        self.statuses: dict[str, DeviceStatus] = {}
        self._tasks: list[asyncio.Task[None]] = []
        #: slots whose source raised at its last read / its last poll_interval
        self._failing: set[str] = set()
        self._bad_interval: set[str] = set()

    def poll_once(self) -> None:
        """Read every non-blocking source now (simulated devices, tests)."""
        for source in self.sources:
            if not source.blocking:
                try:
                    reading = self._succeeded(source.slot, source.read())
                except Exception as err:  # noqa: BLE001 — reported offline, logged once
                    reading = self._failed(source.slot, err)
                self._take(source.slot, reading)

    async def refresh(self) -> None:
        """Read every source once (blocking ones in a worker thread)."""
        for source in self.sources:
            self._take(source.slot, await self._read(source))

    def start(self) -> None:
        """Poll each device on its own cadence until :meth:`stop`."""
        self._tasks = [asyncio.create_task(self._poll(source)) for source in self.sources]

    async def stop(self) -> None:
        """Stop polling."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _poll(self, source: DeviceSource) -> None:
        while True:
            self._take(source.slot, await self._read(source))
            await asyncio.sleep(self._interval(source))

    async def _read(self, source: DeviceSource) -> _Reading:
        try:
            status = await asyncio.to_thread(source.read) if source.blocking else source.read()
        except Exception as err:  # noqa: BLE001 — reported offline, logged once
            return self._failed(source.slot, err)
        return self._succeeded(source.slot, status)

    def _succeeded(self, slot: str, status: DeviceStatus) -> _Reading:
        if slot not in self._failing:
            return _Reading(status)
        self._failing.discard(slot)
        log.info("%s recovered: its status reads again (%s)", slot, status.state)
        return _Reading(status, logged=True)

    def _failed(self, slot: str, err: Exception) -> _Reading:
        logged = slot not in self._failing
        if logged:
            self._failing.add(slot)
            # a bug in the source: the traceback is worth its lines, once
            log.warning("%s unavailable: reading its status raised %r", slot, err, exc_info=err)
        before = self.statuses.get(slot)
        if before is None:
            return _Reading(None, logged)
        offline = DeviceStatus(
            device=before.device,
            driver=before.driver,
            state="offline",
            faults=["offline"],
            info=before.info,
        )
        return _Reading(offline, logged)

    def _interval(self, source: DeviceSource) -> float:
        try:
            interval = source.poll_interval()
        except Exception as err:  # a bug in the source: poll at a fixed pace, log once
            if source.slot not in self._bad_interval:
                self._bad_interval.add(source.slot)
                log.warning(
                    "%s: its poll interval raised %r; polling every %g s",
                    source.slot,
                    err,
                    FALLBACK_INTERVAL,
                    exc_info=err,
                )
            return FALLBACK_INTERVAL
        self._bad_interval.discard(source.slot)
        return interval

    def _take(self, slot: str, reading: _Reading) -> None:
        if reading.status is not None:
            self._update(slot, reading.status, quiet=reading.logged)

    def _update(self, slot: str, status: DeviceStatus, *, quiet: bool = False) -> None:
        before = self.statuses.get(slot)
        self.statuses[slot] = status
        if before is None or (_same(before, status) and not status.events):
            return  # the first reading travels in the birth; only changes become events
        if before.state != status.state and not quiet:
            if status.state in ("offline", "no_device"):
                log.warning("%s unavailable (%s)", slot, status.state)
            elif before.state in ("offline", "no_device"):
                log.info("%s recovered (%s)", slot, status.state)
        self._on_change(slot, status)


def _same(a: DeviceStatus, b: DeviceStatus) -> bool:
    return (
        a.state == b.state
        and a.faults == b.faults
        and a.supplies == b.supplies
        and a.media == b.media
        and a.info == b.info
    )
