"""What every driver shares: an injected transport, the receive loop, retries, error wrapping,
and the one way a driver package is opened and probed.

A protocol package subclasses :class:`Driver` (usually through its family: cash, cards,
printer) and writes only framing and meaning: a pure *split* function that finds a frame in a
receive buffer (``frames.py``), and ``_identify``/``_read_status`` and the family's verbs. The
base owns the rest, as python-can's ``recv``/``_recv_internal`` does:

- :meth:`Driver._receive_frame` reads until a deadline, hands the buffer to the split
  function, drops garbage, notices frames that stall, and says which error it was;
- every call on the transport goes through :meth:`Driver._write`, :meth:`Driver._fill` or
  :meth:`Driver._resync`, the only places a port's exceptions are turned into
  :mod:`kioskfleet.drivers.exceptions` (``raise … from err``, once);
- :meth:`Driver._with_retries` repeats an operation after a timeout or a garbled reply;
- the class methods :meth:`Driver.open` (the agent) and :meth:`Driver.probe`
  (``kioskfleet device probe``) open the port with the protocol's line settings, attach the
  driver and hand over to the family.
"""

from __future__ import annotations

import logging
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Generic, NamedTuple, Protocol, Self, TypeVar

from kioskfleet.drivers.exceptions import (
    ConfigurationError,
    DeviceTimeoutError,
    DeviceUnavailableError,
    DriverError,
    FrameError,
)
from kioskfleet.protocol.devices import (
    DeviceInfo,
    DeviceKind,
    DeviceState,
    DeviceStatus,
    DriverName,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
F = TypeVar("F")


def _port_errors() -> tuple[type[BaseException], ...]:
    try:
        import termios
    except ImportError:  # pragma: no cover - not POSIX: pyserial raises SerialException only
        return (OSError,)
    # pyserial lets termios.error (not an OSError) escape from tcflush and from the timeout
    # setter (tcsetattr) on a vanished pty
    return (OSError, termios.error)


#: what a port raises (``serial.SerialException`` is an ``OSError``); turned into a driver
#: error by :func:`port_error` and nowhere else
PORT_ERRORS: Final = _port_errors()


def port_error(name: str, err: BaseException) -> DriverError:
    """The driver error for an exception a port raised: a write or read that timed out is a
    :class:`DeviceTimeoutError` (retry), anything else :class:`DeviceUnavailableError`."""
    # pyserial is imported only where real ports are opened; if it is not loaded, the error
    # cannot be one of its classes
    serial = sys.modules.get("serial")
    timed_out = isinstance(err, TimeoutError) or (
        serial is not None and isinstance(err, serial.SerialTimeoutException)
    )
    if timed_out:
        return DeviceTimeoutError(f"{name}: port timed out: {err}")
    return DeviceUnavailableError(f"{name}: port failed: {err}")


def _close(transport: Transport, name: str) -> None:
    # a port that is already gone cannot fail to close in a way anyone could act on
    try:
        transport.close()
    except PORT_ERRORS as err:
        log.debug("%s: closing the port failed: %s", name, err)


class Transport(Protocol):
    """The part of ``serial.Serial`` a driver uses; a pty, ``socket://`` or a simulator fits."""

    timeout: float | None

    def read(self, size: int = 1) -> bytes: ...
    def write(self, data: bytes, /) -> int | None: ...
    def reset_input_buffer(self) -> None: ...
    def close(self) -> None: ...


def open_transport(url: str, *, baudrate: int, timeout: float, **kwargs: Any) -> Transport:
    """Open any pyserial URL (a device path, ``socket://``, ``loop://``, a pty).

    Raises:
        DeviceUnavailableError: the port cannot be opened.
    """
    import serial  # local: pyserial is only needed where real ports are opened

    try:
        port: Transport = serial.serial_for_url(
            url, baudrate=baudrate, timeout=timeout, exclusive=None, **kwargs
        )
    except (serial.SerialException, OSError, ValueError) as err:
        raise DeviceUnavailableError(f"cannot open {url}: {err}") from err
    return port


@dataclass(frozen=True)
class DriverOptions:
    """Timeouts and retries from configuration (firmware profile or agent config)."""

    timeout: float = 0.5
    retries: int = 2
    #: quirks from a firmware profile, interpreted by the protocol package
    quirks: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProbeOptions:
    """What ``kioskfleet device probe`` and the agent pass to open a device."""

    baudrate: int | None = None
    address: int | None = None
    #: the firmware profile's settings and quirks (already loaded and validated)
    profile: dict[str, Any] = field(default_factory=dict)
    watch: float | None = None
    timeout: float = 0.5
    retries: int = 2


@dataclass(frozen=True)
class ProbeResult:
    """A probe's outcome: the status object to print and whether the device answered."""

    status: DeviceStatus
    answered: bool


class Split(NamedTuple, Generic[F]):
    """What a protocol's pure split function says about a receive buffer.

    ``split(buffer)`` looks at the front of the buffer and returns one of:

    - ``Split(frame, consumed)``: a complete frame; drop ``consumed`` bytes (any garbage
      before it, and the frame itself) and hand ``frame`` to the driver;
    - ``Split(None, consumed, need)`` with ``consumed > 0``: garbage no frame can start
      with; drop it and look again;
    - ``Split(None, 0, need)``: a frame may be starting but is incomplete; at least ``need``
      more bytes are missing (a lower bound: the loop never asks the port for more).

    A split function never raises for what it is fed: corrupt bytes are garbage it skips.
    """

    #: the first complete frame, or ``None``
    frame: F | None
    #: bytes to drop from the front of the buffer (garbage, plus the frame if there is one)
    consumed: int
    #: after dropping, how many more bytes are needed at least before a frame can complete
    need: int = 1


#: a protocol's split function (``frames.next_frame`` and friends)
Splitter = Callable[[bytes], Split[F]]


class Driver(ABC):
    """A device driver over an injected transport.

    Args:
        transport: an open pyserial-like port.
        options: timeouts, retries and firmware quirks (``inter_byte_timeout``, seconds: the
            longest silence tolerated inside a frame).
    """

    name: ClassVar[DriverName]
    kind: ClassVar[DeviceKind]
    #: the line settings :meth:`open` and :meth:`probe` use unless told otherwise
    DEFAULT_BAUDRATE: ClassVar[int] = 9600
    STOPBITS: ClassVar[int] = 1
    #: the longest silence inside a frame before it counts as stalled (quirk
    #: ``inter_byte_timeout`` overrides it)
    INTER_BYTE_TIMEOUT: ClassVar[float] = 0.2
    #: most bytes asked of the port at once: small enough that a chunk arrives within the
    #: inter-byte timeout even at 9600 baud
    CHUNK: ClassVar[int] = 64
    #: whether the public operations (identify, status, …) are attempted again after a
    #: timeout or a garbled reply; a protocol that retries lower down says False
    RETRY_OPERATIONS: ClassVar[bool] = True

    def __init__(self, transport: Transport, options: DriverOptions | None = None) -> None:
        self.transport = transport
        self.options = options or DriverOptions()
        #: bytes received and not yet part of a frame handed out
        self._rx = bytearray()
        #: when the newest byte in ``_rx`` arrived (monotonic)
        self._rx_at = 0.0

    # -- opening and probing: the one way every driver package does it ----------------------
    @classmethod
    def driver_options(cls, options: ProbeOptions) -> DriverOptions:
        """Timeouts, retries and quirks for the driver from what the CLI or the agent passed.

        Quirks come from the firmware profile's ``quirks`` table, then its table named after
        the driver (``[cctalk]``), then ``--address`` (as quirk ``address``).
        """
        quirks: dict[str, Any] = {}
        for key in ("quirks", cls.name):
            table = options.profile.get(key)
            if isinstance(table, dict):
                quirks.update(table)
        if options.address is not None:
            quirks["address"] = options.address
        return DriverOptions(timeout=options.timeout, retries=options.retries, quirks=quirks)

    @classmethod
    def baudrate(cls, options: ProbeOptions) -> int:
        """``--baudrate`` wins, then the firmware profile's ``baudrate``, then the default."""
        if options.baudrate:
            return options.baudrate
        value = options.profile.get("baudrate")
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        return value if isinstance(value, int) and value > 0 else cls.DEFAULT_BAUDRATE

    @classmethod
    def open_port(cls, port: str, options: ProbeOptions) -> Transport:
        """Open ``port`` with the protocol's line settings.

        Raises:
            DeviceUnavailableError: the port cannot be opened.
        """
        return open_transport(
            port,
            baudrate=cls.baudrate(options),
            timeout=cls.driver_options(options).timeout,
            stopbits=cls.STOPBITS,
        )

    @classmethod
    def attach(cls, transport: Transport, options: ProbeOptions) -> Self:
        """The driver for a port that is already open (ccTalk first finds its device).

        Raises:
            ConfigurationError: the options make no sense for this driver.
            DriverError: the device cannot be found on the port.
        """
        return cls(transport, cls.driver_options(options))

    @classmethod
    def open(cls, port: str, options: ProbeOptions) -> Self:
        """Open ``port`` and return the driver, ready for the agent (see :meth:`_on_open`).

        The transport is closed again when anything fails.

        Raises:
            DeviceUnavailableError: the port cannot be opened.
            DriverError: the device does not answer as it must.
        """
        transport = cls.open_port(port, options)
        try:
            driver = cls.attach(transport, options)
            driver._on_open()
        except BaseException:
            _close(transport, cls.name)
            raise
        return driver

    @classmethod
    def probe(cls, port: str, options: ProbeOptions) -> ProbeResult:
        """``kioskfleet device probe``: open, identify, read the status (CONTRACT §5), close.

        What the device does or fails to do is in the result, never raised.

        Raises:
            ConfigurationError: the options make no sense for this driver.
        """
        try:
            transport = cls.open_port(port, options)
        except DeviceUnavailableError as err:
            return ProbeResult(cls.unreachable_status(options, err), answered=False)
        try:
            try:
                driver = cls.attach(transport, options)
            except ConfigurationError:
                raise  # our configuration is wrong, not the device: the caller must see it
            except DriverError as err:
                return ProbeResult(cls.unreachable_status(options, err), answered=False)
            return driver._probe(options.watch)
        finally:
            _close(transport, cls.name)

    @classmethod
    def unreachable_status(cls, options: ProbeOptions, error: DriverError) -> DeviceStatus:
        """The probe's status when there is no driver instance to ask (port or device absent)."""
        return cls.offline_status(error)

    @classmethod
    def offline_status(cls, error: DriverError, info: DeviceInfo | None = None) -> DeviceStatus:
        """The status to report when the device cannot be read (``offline`` / ``no_device``)."""
        state: DeviceState = "no_device" if isinstance(error, DeviceUnavailableError) else "offline"
        return DeviceStatus(
            device=cls.kind,
            driver=cls.name,
            state=state,
            faults=["offline"],
            info=info or DeviceInfo(),
        )

    # -- the public template -----------------------------------------------------------------
    def identify(self) -> DeviceInfo:
        """Read model, serial number and firmware from the device.

        Raises:
            DriverError: the device did not answer or answered garbage.
        """
        return self._with_retries("identify", self._identify)

    def status(self) -> DeviceStatus:
        """Read the device's current status in the contract vocabulary.

        Raises:
            DriverError: the device did not answer or answered garbage.
        """
        return self._with_retries("status", self._read_status)

    def close(self) -> None:
        """Release the transport."""
        _close(self.transport, self.name)

    def _with_retries(
        self, what: str, operation: Callable[[], T], *, retries: int | None = None
    ) -> T:
        """Run ``operation`` (one attempt, no retries of its own), again after a timeout or a
        garbled reply, up to ``retries`` times (default: the options', if
        :attr:`RETRY_OPERATIONS`); the input is resynchronised after each failure."""
        if retries is None:
            retries = self.options.retries if self.RETRY_OPERATIONS else 0
        last: DriverError | None = None
        for attempt in range(1, max(1, retries + 1) + 1):
            try:
                return operation()
            except (DeviceTimeoutError, FrameError) as err:
                last = err
                log.debug("%s %s: attempt %d failed: %s", self.name, what, attempt, err)
                self._resync()
        assert last is not None
        raise last

    # -- the transport: every call on it goes through here ---------------------------------
    @contextmanager
    def _port(self) -> Iterator[None]:
        """Turn what the port raises into driver errors (the one place that happens)."""
        try:
            yield
        except PORT_ERRORS as err:
            raise port_error(self.name, err) from err

    def _write(self, data: bytes) -> None:
        """Send ``data``.

        Raises:
            DeviceUnavailableError: the port failed.
        """
        with self._port():
            self.transport.write(data)

    def _fill(self, size: int, timeout: float) -> bool:
        """Read up to ``size`` bytes into the receive buffer, waiting at most ``timeout``
        seconds (0: only what has already arrived); False when nothing came.

        Raises:
            DeviceUnavailableError: the port failed.
        """
        with self._port():
            # pyserial's read(n) waits for all n bytes or the timeout, whichever comes first
            self.transport.timeout = max(0.0, timeout)
            chunk = self.transport.read(size)
        if chunk:
            self._rx += chunk
            self._rx_at = time.monotonic()
        return bool(chunk)

    def _resync(self) -> None:
        """Forget everything received so far (late replies, garbage) before a new exchange.

        Raises:
            DeviceUnavailableError: the port failed.
        """
        self._rx.clear()
        with self._port():
            self.transport.reset_input_buffer()

    @property
    def inter_byte_timeout(self) -> float:
        """The longest silence tolerated inside a frame (seconds)."""
        return float(self.options.quirks.get("inter_byte_timeout", self.INTER_BYTE_TIMEOUT))

    # -- the receive loop -------------------------------------------------------------------
    def _receive_frame(self, split: Splitter[F], deadline: float) -> F:
        """Return the next complete frame, reading until ``deadline`` (monotonic).

        ``split`` finds frames and garbage in the buffer (see :class:`Split`); bytes after the
        frame stay buffered for the next call. Once a frame has started, its next bytes must
        come within :attr:`inter_byte_timeout`, or it stalled. A frame that stalls in this call
        was a reply cut short: that raises at once, so the caller can ask again (or NAK)
        instead of waiting out the deadline. Stalled bytes left from before the call are
        dropped and the wait goes on. Either way a complete frame hidden behind the stalled
        one's first byte (a corrupt length field) is still found. After the deadline the bytes
        that have already arrived are looked at once more (a deadline already past: only
        those).

        Raises:
            DeviceTimeoutError: no frame before the deadline (nothing, or a frame still
                incomplete).
            FrameError: a frame stalled, or only garbage came before the deadline.
            DeviceUnavailableError: the port failed.
        """
        started = time.monotonic()
        garbage = 0
        looked_late = False
        while True:
            found = split(bytes(self._rx))
            if found.consumed:
                del self._rx[: found.consumed]
            if found.frame is not None:
                return found.frame
            if found.consumed:
                garbage += found.consumed
                continue
            now = time.monotonic()
            gap_ends = self._rx_at + self.inter_byte_timeout
            if self._rx and now >= gap_ends:
                stalled_here = self._rx_at >= started
                stalled = len(self._rx)
                frame = self._salvage(split)
                if frame is not None:
                    return frame
                if stalled_here:
                    # the byte count only: a partial frame may hold a citizen's card data
                    raise FrameError(f"{self.name}: a frame stalled; {stalled} bytes dropped")
                continue
            if now >= deadline:
                if looked_late:
                    if self._rx:
                        raise DeviceTimeoutError(f"{self.name}: reply incomplete at the timeout")
                    if garbage:
                        raise FrameError(
                            f"{self.name}: no valid reply before the timeout, "
                            f"{garbage} bytes of garbage"
                        )
                    raise DeviceTimeoutError(f"{self.name}: no reply before the timeout")
                looked_late = True
            if looked_late:
                # only what has already arrived: a read that does not wait can ask for more
                self._fill(max(found.need, self.CHUNK), 0.0)
            elif self._rx:
                # pyserial's read(n) waits for all n bytes: ask for no more than the frame
                # still needs, within the gap
                self._fill(max(1, min(found.need, self.CHUNK)), min(deadline, gap_ends) - now)
            else:
                # the first byte may take until the deadline; the gap clock starts with it
                self._fill(1, deadline - now)

    def _salvage(self, split: Splitter[F]) -> F | None:
        """The buffer's first frame stalled and will never complete: drop bytes from the front
        until a complete frame shows (returned; the rest stays) or nothing is left."""
        while self._rx:
            del self._rx[:1]
            found = split(bytes(self._rx))
            if found.consumed:
                del self._rx[: found.consumed]
            if found.frame is not None:
                return found.frame
        return None

    # -- what protocol packages and families write -------------------------------------------
    def _on_open(self) -> None:  # noqa: B027 - an optional hook, empty on purpose
        """Get a freshly attached driver ready for the agent (:meth:`open`); nothing by default.

        Raises:
            DriverError: the device did not answer as it must.
        """

    @abstractmethod
    def _probe(self, watch: float | None) -> ProbeResult:
        """The family's ``device probe`` on an attached driver (``watch``: seconds to watch)."""

    @abstractmethod
    def _identify(self) -> DeviceInfo:
        """Protocol-specific identification (one attempt)."""

    @abstractmethod
    def _read_status(self) -> DeviceStatus:
        """Protocol-specific status read (one attempt)."""
