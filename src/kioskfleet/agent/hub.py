"""The station's devices by slot: one owner per port, one lock per device, listeners.

:class:`DeviceHub` owns the drivers, so the coordinator's polling and the local device service
never interleave frames on one port (``with hub.use(slot) as d``). Every cash event and status
read through the hub goes, in device order, to its listeners: the transaction tracker
(:mod:`kioskfleet.agent.tracker`: credits, escrow, card presence) and :class:`HubSource`, the
coordinator's view, which forwards them to the ``events`` topic — so nobody "steals" a credit
from the other. The agent builds one hub whether or not the local service runs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from kioskfleet.agent.config import DeviceConfig
from kioskfleet.drivers.base import Driver
from kioskfleet.drivers.cash import CashAcceptor, CashChannel, CashEvent
from kioskfleet.drivers.exceptions import (
    DeviceTimeoutError,
    DeviceUnavailableError,
    DriverError,
)
from kioskfleet.drivers.registry import ProbeOptions, driver_module
from kioskfleet.protocol.devices import DeviceKind, DeviceStatus, DriverName

log = logging.getLogger(__name__)

CASH_KINDS: Final = frozenset({"cash_acceptor", "coin_acceptor"})
_KINDS: Final[frozenset[str]] = frozenset(
    {"printer", "cash_acceptor", "coin_acceptor", "id_reader", "card_reader"}
)


class UnknownDeviceError(LookupError):
    """No device is configured in that slot."""


def kind_of_slot(slot: str) -> DeviceKind | None:
    """The device kind a slot name implies: ``printer``, ``cash_acceptor_2`` → cash_acceptor."""
    base, _, suffix = slot.rpartition("_")
    name = base if suffix.isdigit() and base else slot
    return name if name in _KINDS else None  # type: ignore[return-value]


@dataclass(frozen=True)
class DeviceUpdate:
    """What one read or poll through the hub brought, handed to every listener."""

    slot: str
    kind: DeviceKind
    #: cash events of this poll (contract vocabulary), oldest first
    events: list[CashEvent]
    #: the status read, when this was a status read
    status: DeviceStatus | None = None
    #: the acceptor's channel table (cash devices), to value an escrowed note
    channels: dict[int, CashChannel] = field(default_factory=dict)


Listener = Callable[[DeviceUpdate], None]
Opener = Callable[[], Driver]


class _Slot:
    def __init__(self, slot: str, opener: Opener, kind: DeviceKind, driver_name: DriverName):
        self.slot = slot
        self.opener = opener
        self.kind = kind
        self.driver_name = driver_name
        self.driver: Driver | None = None
        self.lock = threading.Lock()
        self.last_status: DeviceStatus | None = None


class DeviceHub:
    """The station's drivers by slot, each behind its own lock.

    Drivers are opened lazily and reopened after their port failed
    (:class:`~kioskfleet.drivers.exceptions.DeviceUnavailableError`). Listeners run in the
    thread that polled, while the device lock is held, so they see each device's events in
    order; they must be quick and must not call back into the hub.

    Args:
        lock_timeout: how long an operation waits for a device another one is using.
    """

    def __init__(self, *, lock_timeout: float = 30.0) -> None:
        self.lock_timeout = lock_timeout
        self._slots: dict[str, _Slot] = {}
        self._listeners: list[Listener] = []

    # -- configuration ---------------------------------------------------------------------
    def add(
        self, slot: str, opener: Opener, *, driver: DriverName, kind: DeviceKind | None = None
    ) -> None:
        """Register a device: ``opener`` returns an identified driver (and may raise
        :class:`DriverError`); ``kind`` defaults to what the slot name implies."""
        found = kind or kind_of_slot(slot)
        if found is None:
            raise ValueError(f"cannot tell the device kind of slot {slot!r}; pass kind=")
        self._slots[slot] = _Slot(slot, opener, found, driver)

    @property
    def slots(self) -> list[str]:
        """Configured slots, in the order they were added."""
        return list(self._slots)

    def kind(self, slot: str) -> DeviceKind:
        """The kind of device in ``slot``.

        Raises:
            UnknownDeviceError: no such slot.
        """
        return self._slot(slot).kind

    def slots_of(self, kinds: Iterable[str]) -> list[str]:
        """Slots holding a device of one of ``kinds``."""
        wanted = set(kinds)
        return [s.slot for s in self._slots.values() if s.kind in wanted]

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every :class:`DeviceUpdate`; returns the unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _slot(self, slot: str) -> _Slot:
        found = self._slots.get(slot)
        if found is None:
            raise UnknownDeviceError(f"no device is configured in slot {slot!r}")
        return found

    # -- access ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def use(self, slot: str) -> Iterator[Driver]:
        """Hold ``slot``'s device for one operation (blocking: call from a worker thread).

        Raises:
            UnknownDeviceError: no such slot.
            DeviceTimeoutError: another operation held the device for ``lock_timeout``.
            DriverError: the device could not be opened.
        """
        entry = self._slot(slot)
        if not entry.lock.acquire(timeout=self.lock_timeout):
            raise DeviceTimeoutError(f"{slot}: still busy with another operation")
        try:
            yield self._open(entry)
        except DeviceUnavailableError:
            self._drop(entry)  # the port is gone: reopen on next use
            raise
        finally:
            entry.lock.release()

    def poll(self, slot: str) -> list[CashEvent]:
        """Poll a cash acceptor and hand its events to the listeners (blocking).

        Raises:
            UnknownDeviceError, DriverError.
        """
        with self.use(slot) as driver:
            if not isinstance(driver, CashAcceptor):
                return []
            events = driver.poll()
            if events:
                self._dispatch(DeviceUpdate(slot, driver.kind, events, None, driver.channels))
            return events

    def read(self, slot: str) -> DeviceStatus:
        """The coordinator's read: poll (cash devices), then status; never raises (a device
        that cannot be read reports ``offline``/``no_device``). Blocking."""
        entry = self._slot(slot)
        try:
            with self.use(slot) as driver:
                events: list[CashEvent] = []
                channels: dict[int, CashChannel] = {}
                if isinstance(driver, CashAcceptor):
                    events = driver.poll()
                    channels = driver.channels
                status = driver.status()
                entry.last_status = status
                self._dispatch(DeviceUpdate(slot, entry.kind, events, status, channels))
                return status
        except DriverError as err:
            status = _offline(entry, err)
        entry.last_status = status
        self._dispatch(DeviceUpdate(slot, entry.kind, [], status))
        return status

    def restart(self, slot: str) -> DeviceStatus:
        """Close ``slot``'s driver, open it again and read its status (blocking; a technician's
        ``restart_device``). The listeners get the status as from :meth:`read`.

        Raises:
            UnknownDeviceError: no such slot.
            DeviceTimeoutError: another operation held the device for ``lock_timeout``.
            DriverError: the device did not open again (it is reopened on next use).
        """
        entry = self._slot(slot)
        if not entry.lock.acquire(timeout=self.lock_timeout):
            raise DeviceTimeoutError(f"{slot}: still busy with another operation")
        try:
            self._drop(entry)
            try:
                driver = self._open(entry)
                status = driver.status()
            except DriverError:
                self._drop(entry)
                raise
            entry.last_status = status
            self._dispatch(DeviceUpdate(slot, entry.kind, [], status))
            log.info("%s: driver reopened (%s)", slot, status.state)
            return status
        finally:
            entry.lock.release()

    def last_status(self, slot: str) -> DeviceStatus | None:
        """The status read last, if any."""
        return self._slot(slot).last_status

    def poll_interval(self, slot: str) -> float:
        """How soon ``slot`` wants its next poll (an enabled acceptor: well inside a second)."""
        driver = self._slot(slot).driver
        hint = getattr(driver, "poll_interval_hint", None)
        return float(hint) if isinstance(hint, int | float) and hint > 0 else 2.0

    def close(self) -> None:
        """Close every open driver."""
        for entry in self._slots.values():
            with entry.lock:
                self._drop(entry)

    # -- internals -------------------------------------------------------------------------
    def _open(self, entry: _Slot) -> Driver:
        if entry.driver is None:
            driver = entry.opener()
            if isinstance(driver, CashAcceptor):
                try:
                    # what the acceptor buffered before this host started is not ours
                    driver.baseline()
                except DriverError:
                    driver.close()
                    raise
            entry.driver = driver
        return entry.driver

    @staticmethod
    def _drop(entry: _Slot) -> None:
        broken, entry.driver = entry.driver, None
        if broken is not None:
            broken.close()

    def _dispatch(self, update: DeviceUpdate) -> None:
        for listener in list(self._listeners):
            try:
                listener(update)
            except Exception:  # why: one broken listener must not stop the device
                log.exception("%s: a device listener failed", update.slot)


def _offline(entry: _Slot, err: DriverError) -> DeviceStatus:
    state = "no_device" if isinstance(err, DeviceUnavailableError) else "offline"
    data: dict[str, Any] = {
        "device": entry.kind,
        "driver": entry.driver_name,
        "state": state,
        "faults": ["offline"],
    }
    if entry.kind in ("id_reader", "card_reader"):
        data["media"] = "unknown"
    return DeviceStatus.model_validate(data)


class HubSource:
    """A :class:`~kioskfleet.agent.devices.DeviceSource` over the hub, for the coordinator.

    It reports every cash event of its slot, whoever polled it (the coordinator or a cash-in
    session), once — so the ``events`` topic sees each credit exactly once.
    """

    blocking = True

    def __init__(self, hub: DeviceHub, slot: str, *, max_events: int = 256) -> None:
        self.slot = slot
        self._hub = hub
        self._events: deque[CashEvent] = deque(maxlen=max_events)
        self._lock = threading.Lock()
        hub.listen(self._collect)

    def _collect(self, update: DeviceUpdate) -> None:
        if update.slot == self.slot and update.events:
            with self._lock:
                self._events.extend(update.events)

    def read(self) -> DeviceStatus:
        """Status with every event since the last read; never raises."""
        status = self._hub.read(self.slot)
        with self._lock:
            events, self._events = list(self._events), deque(maxlen=self._events.maxlen)
        if events:
            status = status.model_copy(update={"events": status.events + events})
        return status

    def poll_interval(self) -> float:
        """The driver's own hint (fast while an acceptor is enabled)."""
        return self._hub.poll_interval(self.slot)


def config_opener(config: DeviceConfig) -> Opener:
    """An opener for a configured device: firmware profile, options, ``open_driver``."""

    def open_device() -> Driver:
        profile: dict[str, Any] = {}
        if config.profile:
            from kioskfleet.firmware_profiles import ProfileError, load_model_profile

            try:
                profile = load_model_profile(config.profile).as_options()
            except ProfileError as err:
                raise DeviceUnavailableError(f"{config.slot}: {err}") from err
        options = ProbeOptions(
            baudrate=config.baudrate,
            address=config.address,
            profile=profile,
            timeout=config.timeout,
            retries=config.retries,
        )
        try:
            module = driver_module(config.driver)
        except ValueError as err:
            raise DeviceUnavailableError(str(err)) from err
        driver: Driver = module.open_driver(config.port, options)
        return driver

    return open_device


def hub_from_config(devices: Iterable[DeviceConfig]) -> DeviceHub:
    """A hub with every configured device (opened on first use)."""
    hub = DeviceHub()
    for device in devices:
        hub.add(device.slot, config_opener(device), driver=device.driver)
    return hub
