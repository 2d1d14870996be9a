"""What every driver shares: an injected transport, timeouts, retries, error wrapping.

A protocol package subclasses :class:`Driver` and writes only framing and meaning
(``_identify``, ``_read_status``); the base owns retries, logging and turning foreign
exceptions into :mod:`kioskfleet.drivers.exceptions` (python-can ``recv``/``_recv_internal``).
"""

from __future__ import annotations

import logging
import termios
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

from kioskfleet.drivers.exceptions import (
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


class Driver(ABC):
    """A device driver over an injected transport.

    Args:
        transport: an open pyserial-like port.
        options: timeouts, retries and firmware quirks.
    """

    name: ClassVar[DriverName]
    kind: ClassVar[DeviceKind]

    def __init__(self, transport: Transport, options: DriverOptions | None = None) -> None:
        self.transport = transport
        self.options = options or DriverOptions()

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
        try:
            self.transport.close()
        except OSError as err:
            log.debug("%s: closing the port failed: %s", self.name, err)

    def offline_status(self, error: DriverError, info: DeviceInfo | None = None) -> DeviceStatus:
        """The status to report when the device cannot be read (``offline`` / ``no_device``)."""
        state: DeviceState = "no_device" if isinstance(error, DeviceUnavailableError) else "offline"
        return DeviceStatus(
            device=self.kind,
            driver=self.name,
            state=state,
            faults=["offline"],
            info=info or DeviceInfo(),
        )

    # -- template ----------------------------------------------------------------------------
    def _with_retries(self, what: str, operation: Callable[[], T]) -> T:
        attempts = max(1, self.options.retries + 1)
        last: DriverError | None = None
        for attempt in range(attempts):
            try:
                return operation()
            except (DeviceTimeoutError, FrameError) as err:
                last = err
                log.debug("%s %s: attempt %d failed: %s", self.name, what, attempt + 1, err)
                self._resync()
            except DriverError:
                raise
            except OSError as err:  # pyserial raises SerialException(OSError) on unplug
                raise DeviceUnavailableError(f"{self.name}: port failed: {err}") from err
        assert last is not None
        raise last

    def _resync(self) -> None:
        """Drop whatever is left in the input buffer before a retry."""
        try:
            self.transport.reset_input_buffer()
        except (OSError, termios.error) as err:  # a vanished pty raises termios.error
            raise DeviceUnavailableError(f"{self.name}: port failed: {err}") from err

    def _read_exact(self, size: int, deadline: float) -> bytes:
        """Read exactly ``size`` bytes before ``deadline`` (monotonic) or time out."""
        chunks = bytearray()
        while len(chunks) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeviceTimeoutError(
                    f"{self.name}: {len(chunks)} of {size} bytes before the timeout"
                )
            self.transport.timeout = remaining
            chunk = self.transport.read(size - len(chunks))
            if chunk:
                chunks += chunk
        return bytes(chunks)

    @abstractmethod
    def _identify(self) -> DeviceInfo:
        """Protocol-specific identification (one attempt)."""

    @abstractmethod
    def _read_status(self) -> DeviceStatus:
        """Protocol-specific status read (one attempt)."""
