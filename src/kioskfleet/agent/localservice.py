"""The local device service: the kiosk application's HTTP/JSON door to the peripherals.

Bound to loopback only (:func:`check_loopback` refuses anything else), stdlib and asyncio only
(the agent must not load FastAPI or uvicorn). Three layers:

- :class:`DeviceHub` owns the drivers by slot, one lock per device, so the coordinator's
  polling and this service never interleave frames on one port (``with hub.use(slot) as d``).
  Every cash event and status read through the hub goes, in device order, to its listeners:
  this service (credits, escrow, card presence) and :class:`HubSource`, the coordinator's
  view, which forwards them to the ``events`` topic — so nobody "steals" a credit from the other.
- :class:`~kioskfleet.agent.transactions.TransactionState`, the pure state machine the update
  gate asks "is a citizen mid-transaction?".
- :class:`LocalService`, a small HTTP/1.1 server (``asyncio.start_server``) with strict input
  validation: every bad request gets a 4xx ``{"error": ..., "code": ...}``, none crashes it.

Endpoints (JSON in, JSON out)::

    GET  /v1/status                       devices and transaction state
    POST /v1/receipts                     {"lines": [str], "qr": str|null, "cut": bool}
    POST /v1/id-card/read                 the card, in full, to this caller only (404: no card)
    POST /v1/cash-in                      {"channels": null|[int]|{slot: [int]|null},
                                           "escrow": bool, "devices": [slot]|null} → 201 {"id"}
    GET  /v1/cash-in/{id}                 escrow, credits, total (fen)
    POST /v1/cash-in/{id}/escrow          {"action": "accept"|"return"}
    POST /v1/cash-in/{id}/end             the credited total
    GET  /v1/bank-card                    reader status and card state
    POST /v1/bank-card/{accept|eject|retain}

Personal data (an ID card's name, number, address, photo) exists only in the body of the
``/v1/id-card/read`` response: it is never logged (not even masked), never put in an
exception message, a transaction event or any other response.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import ipaddress
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Final, Literal, TypeVar

from kioskfleet.agent.config import DeviceConfig
from kioskfleet.agent.transactions import (
    CURRENCY,
    CashInSession,
    EndReason,
    TransactionError,
    TransactionState,
    UnknownSessionError,
)
from kioskfleet.drivers.base import Driver
from kioskfleet.drivers.cards import IdCard, IdCardReader, MotorCardReader
from kioskfleet.drivers.cash import CashAcceptor, CashChannel, CashEvent
from kioskfleet.drivers.exceptions import (
    DeviceOperationError,
    DeviceTimeoutError,
    DeviceUnavailableError,
    DriverError,
)
from kioskfleet.drivers.printer import (
    InvalidReceiptError,
    PrinterNotReadyError,
    Receipt,
    ReceiptPrinter,
)
from kioskfleet.drivers.registry import ProbeOptions, driver_module
from kioskfleet.protocol.devices import DeviceKind, DeviceStatus, DriverName

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PORT: Final = 8765
CASH_KINDS: Final = frozenset({"cash_acceptor", "coin_acceptor"})
_KINDS: Final[frozenset[str]] = frozenset(
    {"printer", "cash_acceptor", "coin_acceptor", "id_reader", "card_reader"}
)
_SLOT_RE: Final = re.compile(r"^[a-z][a-z_]{1,30}(?:_[0-9]{1,2})?$")
_SESSION_RE: Final = r"(?P<id>[A-Za-z0-9_-]{1,64})"


# -- binding ----------------------------------------------------------------------------------
class LocalServiceError(Exception):
    """The local service cannot start as configured (a non-loopback address, a taken port)."""


def check_loopback(host: str) -> str:
    """The address to bind, if it is a loopback one (``localhost`` means ``127.0.0.1``).

    Raises:
        LocalServiceError: any other address — the service hands out citizens' ID card data
            and moves money, so it must never be reachable from the network.
    """
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        address = None
    if address is None or not address.is_loopback:
        raise LocalServiceError(
            f"the local device service binds to loopback only (127.0.0.1 or ::1), not {host!r}"
        )
    return str(address)


# -- the device hub ---------------------------------------------------------------------------
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


# -- HTTP plumbing ----------------------------------------------------------------------------
class HttpError(Exception):
    """A request the service refuses: status, a clear message and a stable ``code``."""

    def __init__(
        self, status: int, message: str, code: str, extra: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.extra = extra or {}


@dataclass(frozen=True)
class Request:
    """One parsed HTTP request."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


@dataclass(frozen=True)
class Response:
    """A JSON response."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServiceLimits:
    """Bounds that keep a misbehaving caller from hurting the agent."""

    max_body: int = 64 * 1024
    max_line: int = 8 * 1024
    max_headers: int = 64
    max_header_bytes: int = 16 * 1024
    max_connections: int = 16
    #: seconds to send a request once started, and to wait for the next one on a connection
    request_timeout: float = 10.0
    keepalive_timeout: float = 30.0
    #: a cash-in session nobody looked at for this long is abandoned: the escrowed note goes
    #: back, acceptors are disabled, what was credited is reported (a crashed application
    #: must not leave the acceptors taking money, nor block updates forever)
    session_idle_timeout: float = 300.0
    #: how often the bank-card reader is read while it waits for a card or holds one
    card_watch_interval: float = 0.5


Handler = Callable[[Request, dict[str, str]], Awaitable[Response]]


def _error_body(err: HttpError) -> dict[str, Any]:
    return {"error": err.message, "code": err.code, **err.extra}


def _json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object (an empty body is ``{}``)."""
    if not request.body.strip():
        return {}
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise HttpError(
            415, "send the body as JSON with Content-Type: application/json", "unsupported_media"
        )

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        data = json.loads(request.body.decode("utf-8"), parse_constant=no_constants)
    except UnicodeDecodeError:
        raise HttpError(400, "the body is not valid UTF-8", "bad_json") from None
    except (ValueError, RecursionError) as err:
        raise HttpError(400, f"the body is not valid JSON: {err}", "bad_json") from None
    if not isinstance(data, dict):
        raise HttpError(400, "the body must be a JSON object", "bad_json")
    return data


def _only(body: dict[str, Any], allowed: Iterable[str]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise HttpError(400, f"unknown field(s) {names}", "unknown_field")


def _bad(field_name: str, what: str) -> HttpError:
    return HttpError(422, f"{field_name!r} must be {what}", "invalid_field", {"field": field_name})


def _opt_bool(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise _bad(name, "true or false")
    return value


def _opt_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise _bad(name, "a string or null")
    return value


def _int_list(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or len(value) > 64:
        raise _bad(name, "a list of at most 64 channel numbers")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= 64:
            raise _bad(name, "a list of channel numbers between 1 and 64")
    return list(value)


def _slot_field(body: dict[str, Any], default: str) -> str:
    slot = body.get("device", default)
    if not isinstance(slot, str) or not _SLOT_RE.match(slot):
        raise _bad("device", "a device slot name such as 'printer' or 'cash_acceptor_2'")
    return slot


def _card_json(card: IdCard) -> dict[str, Any]:
    """The card in full — for the local caller's response body and nothing else."""
    return {
        "name": card.name,
        "sex": card.sex,
        "nation": card.nation,
        "birth_date": card.birth_date.isoformat(),
        "address": card.address,
        "id_number": card.id_number,
        "issuer": card.issuer,
        "valid_from": card.valid_from.isoformat(),
        "valid_until": None if card.valid_until is None else card.valid_until.isoformat(),
        "photo_wlt": base64.b64encode(card.photo).decode("ascii"),
    }


def _status_json(status: DeviceStatus | None) -> dict[str, Any] | None:
    return None if status is None else status.model_dump(exclude_none=True)


def _device_error(slot: str, err: Exception) -> HttpError:
    """One place that turns a driver's error into what the application should do."""
    extra: dict[str, Any] = {"device": slot}
    if isinstance(err, UnknownDeviceError):
        return HttpError(503, f"no device is configured in slot {slot!r}", "not_configured", extra)
    if isinstance(err, InvalidReceiptError):
        return HttpError(422, str(err), "invalid_receipt", extra)
    if isinstance(err, PrinterNotReadyError):
        extra["status"] = _status_json(err.status)
        return HttpError(409, str(err), "device_not_ready", extra)
    if isinstance(err, DeviceOperationError):
        return HttpError(409, str(err), "device_refused", extra)
    if isinstance(err, DeviceUnavailableError):
        return HttpError(503, str(err), "device_unavailable", extra)
    return HttpError(503, str(err), "device_not_answering", extra)


def _id_reader_error(slot: str, err: Exception) -> HttpError:
    """As :func:`_device_error`, with fixed messages: nothing a card reply said goes out."""
    extra: dict[str, Any] = {"device": slot}
    if isinstance(err, UnknownDeviceError):
        return HttpError(503, f"no device is configured in slot {slot!r}", "not_configured", extra)
    if isinstance(err, DeviceOperationError):
        return HttpError(422, "the ID card could not be read", "card_unreadable", extra)
    if isinstance(err, DeviceUnavailableError):
        return HttpError(503, "the ID card reader is unavailable", "device_unavailable", extra)
    return HttpError(503, "the ID card reader does not answer", "device_not_answering", extra)


def _transaction_error(err: TransactionError, extra: dict[str, Any] | None = None) -> HttpError:
    status = 404 if isinstance(err, UnknownSessionError) else 409
    return HttpError(status, str(err), err.code, extra)


def _wrong_device(slot: str, what: str) -> HttpError:
    return HttpError(422, f"the device in slot {slot!r} is not {what}", "wrong_device")


def _printer(driver: Driver, slot: str) -> ReceiptPrinter:
    if not isinstance(driver, ReceiptPrinter):
        raise _wrong_device(slot, "a receipt printer")
    return driver


def _id_reader(driver: Driver, slot: str) -> IdCardReader:
    if not isinstance(driver, IdCardReader):
        raise _wrong_device(slot, "an ID card reader")
    return driver


def _motor_reader(driver: Driver, slot: str) -> MotorCardReader:
    if not isinstance(driver, MotorCardReader):
        raise _wrong_device(slot, "a motorized card reader")
    return driver


# -- the service ------------------------------------------------------------------------------
class LocalService:
    """The local device service.

    Args:
        hub: the station's devices (shared with the coordinator's :class:`HubSource`\\ s).
        host: a loopback address (see :func:`check_loopback`).
        port: TCP port; 0 picks a free one (tests).
        allowed_origins: browser origins (``http://localhost:3000``) allowed to call the
            service; any other request carrying an ``Origin`` header is refused, so a web page
            the kiosk browser happens to show cannot print, eject or read cards.
        on_event: called on the event loop with the transaction events to publish
            (the agent queues them on its ``events`` topic).
        clock: wall clock for the transaction state (Unix seconds).
        new_id: session-id source (tests).
        limits: request and session bounds.
    """

    def __init__(
        self,
        hub: DeviceHub,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        allowed_origins: Iterable[str] = (),
        on_event: Callable[[list[dict[str, Any]]], None] | None = None,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] | None = None,
        limits: ServiceLimits | None = None,
    ) -> None:
        self.hub = hub
        self.host = check_loopback(host)
        self.port = port
        self.allowed_origins = frozenset(allowed_origins)
        self.on_event = on_event
        self.limits = limits or ServiceLimits()
        self._clock = clock
        self.state = (
            TransactionState(clock) if new_id is None else TransactionState(clock, new_id=new_id)
        )
        #: the last transaction events published (also handed to ``on_event``)
        self.published: deque[dict[str, Any]] = deque(maxlen=256)
        self._state_lock = threading.Lock()
        self._cash_lock: asyncio.Lock | None = None
        self._pollers: dict[str, asyncio.Task[None]] = {}
        self._card_watchers: dict[str, asyncio.Task[None]] = {}
        self._poll_failing: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._connections = 0
        self._open_connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._unlisten: Callable[[], None] | None = None
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("GET", re.compile(r"/v1/status"), self._get_status),
            ("POST", re.compile(r"/v1/receipts"), self._print_receipt),
            ("POST", re.compile(r"/v1/id-card/read"), self._read_id_card),
            ("POST", re.compile(r"/v1/cash-in"), self._open_cash_in),
            ("GET", re.compile(rf"/v1/cash-in/{_SESSION_RE}"), self._get_cash_in),
            ("POST", re.compile(rf"/v1/cash-in/{_SESSION_RE}/escrow"), self._escrow),
            ("POST", re.compile(rf"/v1/cash-in/{_SESSION_RE}/end"), self._end_cash_in),
            ("GET", re.compile(r"/v1/bank-card"), self._get_bank_card),
            ("POST", re.compile(r"/v1/bank-card/(?P<action>accept|eject|retain)"), self._bank_card),
        ]

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> int:
        """Listen; returns the port (useful with ``port=0``).

        Raises:
            LocalServiceError: the port cannot be bound.
        """
        self._loop = asyncio.get_running_loop()
        self._cash_lock = asyncio.Lock()
        self._unlisten = self.hub.listen(self._on_device)
        try:
            self._server = await asyncio.start_server(
                self._connection, self.host, self.port, limit=self.limits.max_line
            )
        except OSError as err:
            self._unlisten()
            raise LocalServiceError(
                f"local device service cannot listen on {self.host}:{self.port}: {err}"
            ) from err
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("local device service on http://%s:%d/v1/", self.host, self.port)
        return self.port

    async def stop(self) -> None:
        """Stop listening and polling. Open sessions stay open in the state (the acceptors
        are disabled), so the update gate still sees them until the agent exits."""
        if self._server is not None:
            self._server.close()
            # close idle keep-alive connections so their handlers end by themselves
            for writer in self._open_connections.values():
                writer.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await asyncio.gather(*self._open_connections, return_exceptions=True)
                    await self._server.wait_closed()
        tasks = [*self._pollers.values(), *self._card_watchers.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for session in self._locked(lambda s: s.open_sessions()):
            for slot in session.devices:
                with contextlib.suppress(DriverError, UnknownDeviceError):
                    await self._on_device_thread(slot, _disable)
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None

    # -- state access (the hub's listeners run in worker threads) --------------------------
    def _locked(self, fn: Callable[[TransactionState], T]) -> T:
        with self._state_lock:
            result = fn(self.state)
            events = self.state.take_events()
        if events:
            self._publish(events)
        return result

    def _publish(self, events: list[dict[str, Any]]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            self.published.extend(events)
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._emit(events)
        else:
            loop.call_soon_threadsafe(self._emit, events)

    def _emit(self, events: list[dict[str, Any]]) -> None:
        self.published.extend(events)
        if self.on_event is not None:
            try:
                self.on_event(events)
            except Exception:  # why: publishing must not break the device service
                log.exception("could not hand transaction events to the agent")

    def _on_device(self, update: DeviceUpdate) -> None:
        """Listener: credits, escrow and card presence from any poll or read."""

        def apply(state: TransactionState) -> None:
            for event in update.events:
                kind = event.get("type")
                channel = int(event.get("channel", 0) or 0)
                if kind == "escrow":
                    known = update.channels.get(channel)
                    state.note_escrowed(update.slot, channel, known.value if known else None)
                elif kind == "credit":
                    value = max(0, int(event.get("value", 0)))
                    currency = str(event.get("currency", CURRENCY))
                    if state.credit(update.slot, channel, value, currency) is None:
                        log.warning(
                            "%s credited %d fen outside a cash-in session", update.slot, value
                        )
                elif kind in ("rejected", "device_reset"):
                    # given back, or forgotten by a reset validator (which returns it)
                    state.note_returned(update.slot)
                elif kind == "events_lost" and state.session_for_device(update.slot):
                    log.warning(
                        "%s lost %s events during a cash-in session: credits may be missing",
                        update.slot,
                        event.get("count"),
                    )
            status = update.status
            if update.kind == "card_reader" and status is not None:
                if status.media in ("present", "jammed"):
                    state.bank_card_seen(update.slot, True)
                elif status.media == "not_present":
                    state.bank_card_seen(update.slot, False)

        self._locked(apply)

    async def _on_device_thread(self, slot: str, operation: Callable[[Driver], T]) -> T:
        """Run ``operation`` on ``slot``'s driver in a worker thread, under its lock."""

        def run() -> T:
            with self.hub.use(slot) as driver:
                return operation(driver)

        return await asyncio.to_thread(run)

    # -- HTTP: connections -----------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections >= self.limits.max_connections:
            busy = HttpError(503, "too many connections to the device service", "overloaded")
            with contextlib.suppress(ConnectionError):
                await self._send(writer, Response(503, _error_body(busy)), close=True)
            writer.close()
            return
        self._connections += 1
        task = asyncio.current_task()
        if task is not None:
            self._open_connections[task] = writer
        try:
            first = True
            while True:
                try:
                    request = await self._read_request(reader, writer, first=first)
                except HttpError as err:
                    await self._send(writer, Response(err.status, _error_body(err)), close=True)
                    await _linger(reader, writer)
                    return
                if request is None:
                    return
                first = False
                response = await self._dispatch(request)
                origin = request.headers.get("origin")
                if origin is not None:  # _check_caller let only allowed origins through
                    cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
                    response = Response(
                        response.status, response.body, {**cors, **response.headers}
                    )
                await self._send(writer, response, close=not request.keep_alive)
                if not request.keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the caller went away
        except Exception:  # why: the service outlives any one broken connection
            log.exception("local device service: connection failed")
        finally:
            self._connections -= 1
            if task is not None:
                self._open_connections.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _read_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, first: bool
    ) -> Request | None:
        """Parse one request; ``None`` when the caller closed the connection between requests.

        Raises:
            HttpError: a malformed, oversized or refused request (the connection then closes).
        """
        limits = self.limits
        wait = limits.request_timeout if first else limits.keepalive_timeout
        try:
            async with asyncio.timeout(wait):
                line = await reader.readline()
        except TimeoutError:
            return None
        except ValueError:  # longer than the stream limit
            raise HttpError(414, "request line too long", "line_too_long") from None
        if not line:
            return None
        try:
            async with asyncio.timeout(limits.request_timeout):
                return await self._read_rest(reader, writer, line)
        except TimeoutError:
            raise HttpError(408, "request not received in time", "timeout") from None

    async def _read_rest(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes
    ) -> Request:
        limits = self.limits
        parts = line.rstrip(b"\r\n").split(b" ")
        if len(parts) != 3:
            raise HttpError(400, "malformed request line", "bad_request")
        try:
            method, target, version = (p.decode("ascii") for p in parts)
        except UnicodeDecodeError:
            raise HttpError(400, "request line is not ASCII", "bad_request") from None
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise HttpError(505, "only HTTP/1.1 and HTTP/1.0 are spoken here", "bad_version")
        if not method.isalpha() or not method.isupper() or not target.startswith("/"):
            raise HttpError(400, "malformed request line", "bad_request")
        headers: dict[str, str] = {}
        size = 0
        while True:
            try:
                raw = await reader.readline()
            except ValueError:
                raise HttpError(431, "header line too long", "headers_too_large") from None
            if not raw:
                raise asyncio.IncompleteReadError(b"", None)
            size += len(raw)
            if raw in (b"\r\n", b"\n"):
                break
            if size > limits.max_header_bytes or len(headers) >= limits.max_headers:
                raise HttpError(431, "too many or too large headers", "headers_too_large")
            if raw[:1] in (b" ", b"\t"):
                raise HttpError(400, "folded header lines are not accepted", "bad_request")
            name, sep, value = raw.decode("latin-1").partition(":")
            name = name.strip().lower()
            if not sep or not name or " " in name:
                raise HttpError(400, "malformed header line", "bad_request")
            value = value.strip()
            if name == "content-length" and name in headers and headers[name] != value:
                raise HttpError(400, "conflicting Content-Length headers", "bad_request")
            headers[name] = value
        self._check_caller(headers)
        if "transfer-encoding" in headers:
            raise HttpError(
                501, "chunked request bodies are not accepted: send Content-Length", "chunked"
            )
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit() or len(length_text) > 12:
            raise HttpError(400, "invalid Content-Length", "bad_request")
        length = int(length_text)
        if length > limits.max_body:
            raise HttpError(
                413, f"body of {length} bytes; at most {limits.max_body}", "body_too_large"
            )
        if length and headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        body = await reader.readexactly(length) if length else b""
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        path = target.split("?", 1)[0]
        return Request(method, path, headers, body, keep_alive)

    def _check_caller(self, headers: dict[str, str]) -> None:
        """Refuse requests a web page could have made (DNS rebinding, cross-site POSTs)."""
        host = headers.get("host")
        if host is None:
            raise HttpError(400, "a Host header is required", "bad_request")
        allowed_hosts = {
            f"{name}{suffix}"
            for name in ("127.0.0.1", "localhost", "[::1]", f"[{self.host}]", self.host)
            for suffix in ("", f":{self.port}")
        }
        if host.lower() not in allowed_hosts:
            raise HttpError(403, f"requests for host {host!r} are refused", "forbidden_host")
        origin = headers.get("origin")
        if origin is not None and origin not in self.allowed_origins:
            raise HttpError(403, "cross-origin requests are refused", "forbidden_origin")

    async def _send(self, writer: asyncio.StreamWriter, response: Response, *, close: bool) -> None:
        payload = json.dumps(response.body, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = "Status"
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Content-Length": str(len(payload)),
            # responses may hold a citizen's data: no cache may keep them
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Connection": "close" if close else "keep-alive",
            **response.headers,
        }
        head = f"HTTP/1.1 {response.status} {reason}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        writer.write(head.encode("latin-1") + b"\r\n" + payload)
        await writer.drain()

    async def _dispatch(self, request: Request) -> Response:
        allowed: list[str] = []
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            if method != request.method:
                allowed.append(method)
                continue
            try:
                response = await handler(request, match.groupdict())
            except HttpError as err:
                response = Response(err.status, _error_body(err))
            except Exception as err:  # why: a bug answers 500, the service lives on
                # no message, no traceback for the ID path: a message could hold card data
                private = request.path.startswith("/v1/id-card")
                log.error(
                    "local device service: %s %s failed: %s",
                    request.method,
                    request.path,
                    type(err).__name__,
                    exc_info=not private,
                )
                response = Response(500, {"error": "internal error", "code": "internal"})
            log.debug("%s %s -> %d", request.method, request.path, response.status)
            return response
        if allowed and request.method == "OPTIONS" and "origin" in request.headers:
            # a CORS preflight from an allowed origin (others were refused already)
            preflight = {
                "Access-Control-Allow-Methods": ", ".join(allowed),
                "Access-Control-Allow-Headers": "Content-Type",
                "Access-Control-Max-Age": "600",
            }
            return Response(200, {}, preflight)
        if allowed:
            error = HttpError(
                405, f"{request.method} is not allowed on {request.path}", "method_not_allowed"
            )
            return Response(405, _error_body(error), {"Allow": ", ".join(allowed)})
        error = HttpError(404, f"no such endpoint: {request.path}", "not_found")
        return Response(404, _error_body(error))

    # -- endpoints: status -----------------------------------------------------------------
    async def _get_status(self, request: Request, params: dict[str, str]) -> Response:
        _only(_json_object(request), ())
        statuses = await asyncio.gather(
            *(asyncio.to_thread(self.hub.read, slot) for slot in self.hub.slots)
        )
        devices = {
            slot: _status_json(status)
            for slot, status in zip(self.hub.slots, statuses, strict=True)
        }
        return Response(200, {"devices": devices, "transactions": self._snapshot()})

    def _snapshot(self) -> dict[str, Any]:
        return self._locked(lambda s: s.snapshot())

    # -- endpoints: receipts ---------------------------------------------------------------
    async def _print_receipt(self, request: Request, params: dict[str, str]) -> Response:
        body = _json_object(request)
        _only(body, ("lines", "qr", "cut", "device"))
        lines = body.get("lines", [])
        if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
            raise _bad("lines", "a list of strings")
        qr = _opt_str(body, "qr")
        receipt = Receipt(lines=lines, qr=qr, cut=_opt_bool(body, "cut", True))
        slot = _slot_field(body, "printer")
        try:
            receipt.validate()  # before touching the printer
        except InvalidReceiptError as err:
            raise _device_error(slot, err) from None
        self._locked(lambda s: s.printing_started())
        outcome: str = "failed"
        try:
            status = await self._on_device_thread(
                slot,
                lambda d: _printer(d, slot).print_receipt(receipt),
            )
            outcome = "ok"
        except (DriverError, UnknownDeviceError) as err:
            raise _device_error(slot, err) from None
        finally:
            self._locked(lambda s: s.printing_finished("ok" if outcome == "ok" else "failed"))
        return Response(200, {"printed": True, "device": slot, "status": _status_json(status)})

    # -- endpoints: ID card ----------------------------------------------------------------
    async def _read_id_card(self, request: Request, params: dict[str, str]) -> Response:
        body = _json_object(request)
        _only(body, ("device",))
        slot = _slot_field(body, "id_reader")
        self._locked(lambda s: s.id_read_started())
        outcome = "failed"
        try:
            card = await self._on_device_thread(slot, lambda d: _id_reader(d, slot).read_card())
            outcome = "ok" if card is not None else "no_card"
        except (DriverError, UnknownDeviceError) as err:
            raise _id_reader_error(slot, err) from None
        finally:
            final = outcome
            self._locked(
                lambda s: s.id_read_finished(
                    "ok" if final == "ok" else "no_card" if final == "no_card" else "failed"
                )
            )
        if card is None:
            raise HttpError(404, "no ID card on the reader", "no_card", {"device": slot})
        log.info("%s: ID card read for the local application", slot)  # never the holder
        return Response(200, {"device": slot, "card": _card_json(card)})

    # -- endpoints: cash-in ----------------------------------------------------------------
    @property
    def _cash(self) -> asyncio.Lock:
        assert self._cash_lock is not None, "start() the service first"
        return self._cash_lock

    async def _open_cash_in(self, request: Request, params: dict[str, str]) -> Response:
        body = _json_object(request)
        _only(body, ("channels", "escrow", "devices"))
        escrow = _opt_bool(body, "escrow", True)
        acceptors = self.hub.slots_of(CASH_KINDS)
        wanted = body.get("devices")
        if wanted is not None:
            if not isinstance(wanted, list) or not all(isinstance(x, str) for x in wanted):
                raise _bad("devices", "a list of acceptor slots or null")
            unknown = [slot for slot in wanted if slot not in acceptors]
            if unknown:
                raise _bad("devices", f"acceptor slots among {acceptors} (not {unknown})")
            acceptors = list(dict.fromkeys(wanted))
        channels = self._channels_field(body.get("channels"), acceptors)
        if not acceptors:
            raise HttpError(503, "no cash acceptor is configured", "not_configured")
        async with self._cash:
            if self._locked(lambda s: s.open_sessions()):
                raise HttpError(
                    409, "a cash-in session is already open: end it first", "session_open"
                )
            enabled: list[str] = []
            unavailable: dict[str, str] = {}
            for slot in acceptors:
                bill = self.hub.kind(slot) == "cash_acceptor"
                chosen = channels.get(slot)
                try:
                    await self._on_device_thread(
                        slot, functools.partial(_enable, channels=chosen, escrow=escrow and bill)
                    )
                    enabled.append(slot)
                except (DriverError, UnknownDeviceError) as err:
                    unavailable[slot] = str(err)
                    log.warning("%s: cannot take cash: %s", slot, err)
            if not enabled:
                raise HttpError(
                    503,
                    "no cash acceptor can take cash now",
                    "device_unavailable",
                    {"unavailable": unavailable},
                )
            session = self._locked(lambda s: s.open_cash_in(enabled))
            view = session.view()
            self._start_poller(session.id)
        log.info("cash-in session %s opened on %s", session.id, ", ".join(enabled))
        return Response(201, {"id": session.id, "session": view, "unavailable": unavailable})

    @staticmethod
    def _channels_field(value: Any, acceptors: list[str]) -> dict[str, list[int] | None]:
        if value is None:
            return {}
        if isinstance(value, list):
            chosen = _int_list(value, "channels")
            return dict.fromkeys(acceptors, chosen)
        if isinstance(value, dict):
            out: dict[str, list[int] | None] = {}
            for slot, entry in value.items():
                if slot not in acceptors:
                    raise _bad("channels", f"keyed by acceptor slots among {acceptors}")
                out[slot] = None if entry is None else _int_list(entry, f"channels.{slot}")
            return out
        raise _bad("channels", "null, a list of channels, or {slot: [channels] | null}")

    async def _get_cash_in(self, request: Request, params: dict[str, str]) -> Response:
        _only(_json_object(request), ())
        try:
            view = self._locked(lambda s: s.touch(params["id"]).view())
        except TransactionError as err:
            raise _transaction_error(err) from None
        return Response(200, view)

    async def _escrow(self, request: Request, params: dict[str, str]) -> Response:
        body = _json_object(request)
        _only(body, ("action",))
        action = body.get("action")
        if action not in ("accept", "return"):
            raise _bad("action", "'accept' or 'return'")
        session_id = params["id"]
        async with self._cash:
            session = self._open_session(session_id)
            escrow = session.escrow
            if escrow is None:
                raise HttpError(
                    409, "no note is in escrow", "no_escrow", {"session": session.view()}
                )
            slot = escrow.device
            accept = action == "accept"
            try:
                await self._on_device_thread(slot, lambda d: _route(d, accept=accept))
            except DeviceOperationError as err:
                # the device no longer holds it (returned on its own timeout, or reset): a
                # stacked note shows as a credit in this poll; otherwise it went back
                await self._poll_quietly(slot)
                self._locked(lambda s: s.note_returned(slot))
                view = self._locked(lambda s: s.session(session_id).view())
                raise HttpError(409, str(err), "no_escrow", {"session": view}) from None
            except (DriverError, UnknownDeviceError) as err:
                raise _device_error(slot, err) from None
            with contextlib.suppress(TransactionError):  # a poll may already have settled it
                self._locked(lambda s: s.escrow_resolved(session_id, accepted=accept))
            await self._poll_quietly(slot)  # an accepted note's credit comes with this poll
            view = self._locked(lambda s: s.session(session_id).view())
        return Response(200, {"action": action, "session": view})

    async def _end_cash_in(self, request: Request, params: dict[str, str]) -> Response:
        _only(_json_object(request), ())
        session_id = params["id"]
        async with self._cash:
            session = self._open_session(session_id)
            if session.escrow is not None:
                # the application decides about the note; nothing is disabled yet
                raise HttpError(
                    409,
                    "a note is in escrow: accept or return it first",
                    "escrow_pending",
                    {"session": session.view()},
                )
            await self._stop_poller(session_id)
            try:
                view = await self._close_session(session_id, "ended")
            except HttpError:
                self._start_poller(session_id)  # still open: keep its acceptors polled
                raise
        return Response(
            200,
            {
                "id": session_id,
                "total": view["total"],
                "currency": CURRENCY,
                "credits": view["credits"],
                "session": view,
            },
        )

    def _open_session(self, session_id: str) -> CashInSession:
        """The open session (touched), or the 404/409 the application should get."""
        try:
            session = self._locked(lambda s: s.touch(session_id))
        except TransactionError as err:
            raise _transaction_error(err) from None
        if not session.open:
            raise HttpError(
                409,
                f"cash-in session {session_id!r} has already ended",
                "session_ended",
                {"session": session.view()},
            )
        return session

    def _start_poller(self, session_id: str) -> None:
        self._pollers[session_id] = asyncio.create_task(self._poll_session(session_id))

    async def _stop_poller(self, session_id: str) -> None:
        task = self._pollers.pop(session_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _close_session(self, session_id: str, reason: EndReason) -> dict[str, Any]:
        """Disable the session's acceptors, collect what was still in flight, give back a
        note that reached escrow meanwhile, and end the session (caller holds the cash lock).

        Raises:
            HttpError: a note is in escrow and the device cannot give it back (the session
                stays open and polled; try again).
        """
        session = self._locked(lambda s: s.session(session_id))
        for slot in session.devices:
            try:
                await self._on_device_thread(slot, _disable)
            except (DriverError, UnknownDeviceError) as err:
                log.warning("%s: could not disable acceptance: %s", slot, err)
        for slot in session.devices:
            # coins already in the chute and the note being stacked arrive after disabling
            await self._poll_quietly(slot)
            await self._poll_quietly(slot)
        escrow = self._locked(lambda s: s.session(session_id).escrow)
        if escrow is not None:
            try:
                await self._on_device_thread(escrow.device, lambda d: _route(d, accept=False))
            except (DriverError, UnknownDeviceError) as err:
                if not isinstance(err, DeviceOperationError):  # not merely "already gone"
                    raise _device_error(escrow.device, err) from None
            with contextlib.suppress(TransactionError):
                self._locked(lambda s: s.escrow_resolved(session_id, accepted=False))
            await self._poll_quietly(escrow.device)
        ended = self._locked(lambda s: s.end_cash_in(session_id, reason))
        log.info(
            "cash-in session %s %s: %d fen credited, %d notes returned",
            session_id,
            reason,
            ended.total,
            ended.returned,
        )
        return ended.view()

    async def _poll_quietly(self, slot: str) -> None:
        """Poll one acceptor; failures are logged when they start and when they end."""
        try:
            await asyncio.to_thread(self.hub.poll, slot)
        except (DriverError, UnknownDeviceError) as err:
            if slot not in self._poll_failing:
                self._poll_failing.add(slot)
                log.warning("%s: polling failed during cash-in: %s", slot, err)
            return
        if slot in self._poll_failing:
            self._poll_failing.discard(slot)
            log.info("%s: polling recovered", slot)

    async def _poll_session(self, session_id: str) -> None:
        """Poll the session's acceptors at their own pace (an enabled acceptor stops taking
        cash after about a second without a poll) until the session ends or is abandoned."""
        while True:
            session = self._locked(lambda s: s.session(session_id))
            if not session.open:
                return
            await asyncio.gather(*(self._poll_quietly(slot) for slot in session.devices))
            idle = self._clock() - session.last_activity
            if idle > self.limits.session_idle_timeout:
                async with self._cash:
                    if not self._locked(lambda s: s.session(session_id).open):
                        return
                    log.warning(
                        "cash-in session %s abandoned after %.0f s without the application",
                        session_id,
                        idle,
                    )
                    try:
                        await self._close_session(session_id, "abandoned")
                    except HttpError:
                        pass  # a note stuck in escrow: keep polling, try again shortly
                    else:
                        self._pollers.pop(session_id, None)
                        return
            await asyncio.sleep(min(self.hub.poll_interval(slot) for slot in session.devices))

    # -- endpoints: bank card --------------------------------------------------------------
    async def _get_bank_card(self, request: Request, params: dict[str, str]) -> Response:
        _only(_json_object(request), ())
        slot = "card_reader"
        try:
            self.hub.kind(slot)
        except UnknownDeviceError as err:
            raise _device_error(slot, err) from None
        status = await asyncio.to_thread(self.hub.read, slot)
        card = self._snapshot()["bank_card"].get(slot, {"inside": False, "accepting": False})
        return Response(200, {"device": slot, "status": _status_json(status), **card})

    async def _bank_card(self, request: Request, params: dict[str, str]) -> Response:
        body = _json_object(request)
        _only(body, ("device",))
        slot = _slot_field(body, "card_reader")
        action = params["action"]
        try:
            self.hub.kind(slot)
        except UnknownDeviceError as err:
            raise _device_error(slot, err) from None
        if action != "accept":
            before = await asyncio.to_thread(self.hub.read, slot)
            if before.media == "not_present":
                raise HttpError(409, "no card is in the reader", "no_card", {"device": slot})

        def act(driver: Driver) -> str | None:
            reader = _motor_reader(driver, slot)
            if action == "accept":
                reader.accept()
                return None
            return reader.eject() if action == "eject" else reader.capture()

        try:
            media = await self._on_device_thread(slot, act)
        except (DriverError, UnknownDeviceError) as err:
            await asyncio.to_thread(self.hub.read, slot)  # a jam shows in the state at once
            raise _device_error(slot, err) from None
        if action == "accept":
            self._locked(lambda s: s.bank_card_accepting(slot, True))
        else:
            moved: Literal["ejected", "retained"] = "ejected" if action == "eject" else "retained"
            self._locked(lambda s: s.bank_card_moved(slot, moved))
        status = await asyncio.to_thread(self.hub.read, slot)
        self._watch_card(slot)
        card = self._snapshot()["bank_card"].get(slot, {"inside": False, "accepting": False})
        return Response(
            200,
            {
                "action": action,
                "device": slot,
                "media": media if media is not None else status.media,
                "status": _status_json(status),
                **card,
            },
        )

    def _watch_card(self, slot: str) -> None:
        task = self._card_watchers.get(slot)
        if task is None or task.done():
            self._card_watchers[slot] = asyncio.create_task(self._card_watch(slot))

    async def _card_watch(self, slot: str) -> None:
        """Read the reader while it waits for a card or holds one, so a card taken from the
        gate (or pushed in) shows in the state without the application asking."""
        while True:
            card = self._snapshot()["bank_card"].get(slot, {})
            if not card.get("inside") and not card.get("accepting"):
                return
            await asyncio.sleep(self.limits.card_watch_interval)
            await asyncio.to_thread(self.hub.read, slot)


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After an error answer, half-close and swallow what the caller still sends (briefly), so
    closing with unread input does not reset the connection before it read the answer."""
    with contextlib.suppress(OSError, RuntimeError, TimeoutError):
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(1.0):
            for _ in range(64):
                if not await reader.read(4096):
                    break


# -- driver operations (run in worker threads, under the device lock) ---------------------------
def _enable(driver: Driver, channels: list[int] | None, escrow: bool) -> None:
    acceptor = _cash(driver)
    acceptor.enable(channels, escrow=escrow)


def _disable(driver: Driver) -> None:
    _cash(driver).disable()


def _route(driver: Driver, *, accept: bool) -> None:
    acceptor = _cash(driver)
    if accept:
        acceptor.accept_escrow()
    else:
        acceptor.return_escrow()


def _cash(driver: Driver) -> CashAcceptor:
    if not isinstance(driver, CashAcceptor):
        raise HttpError(422, f"{driver.name} is not a cash acceptor", "wrong_device")
    return driver
