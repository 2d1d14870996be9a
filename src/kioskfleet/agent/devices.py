"""The peripheral coordinator: polls every device through one place (HA ``DataUpdateCoordinator``).

Blocking serial calls run off the event loop; failures map to one kind (an offline status);
changes become ``device_status`` events; logs are written on state *changes* only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from kioskfleet.protocol.devices import DeviceStatus

log = logging.getLogger(__name__)


class DeviceSource(Protocol):
    """Something that can report one device's status: a driver, or a simulated device."""

    slot: str
    #: True when :meth:`read` does serial I/O and must run off the event loop
    blocking: bool

    def read(self) -> DeviceStatus:
        """Current status; never raises (a device that does not answer reports ``offline``)."""
        ...

    def poll_interval(self) -> float:
        """How soon to read again (an enabled cash acceptor needs frequent polls)."""
        ...


class Coordinator:
    """Keeps the last status of every device and reports changes.

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

    def poll_once(self) -> None:
        """Read every non-blocking source now (simulated devices, tests)."""
        for source in self.sources:
            if not source.blocking:
                self._update(source.slot, source.read())

    async def refresh(self) -> None:
        """Read every source once (blocking ones in a worker thread)."""
        for source in self.sources:
            status = await self._read(source)
            self._update(source.slot, status)

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
            self._update(source.slot, await self._read(source))
            await asyncio.sleep(source.poll_interval())

    @staticmethod
    async def _read(source: DeviceSource) -> DeviceStatus:
        if source.blocking:
            return await asyncio.to_thread(source.read)
        return source.read()

    def _update(self, slot: str, status: DeviceStatus) -> None:
        before = self.statuses.get(slot)
        self.statuses[slot] = status
        if before is None or (_same(before, status) and not status.events):
            return  # the first reading travels in the birth; only changes become events
        if before is not None and before.state != status.state:
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
