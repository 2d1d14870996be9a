"""The card-reader families: resident ID card readers and motorized bank-card readers.

Two small ABCs on top of :class:`~kioskfleet.drivers.base.Driver` so the agent, the probe and
the contract suite talk to every reader of a family the same way, plus :class:`IdCard`, the
only place a citizen's identity lives in memory. An :class:`IdCard` never prints its contents:
``repr``/``str`` and :meth:`IdCard.masked` show the masked form (CONTRACT §5); the full data is
reachable only through its attributes, for the local caller that needs it.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar

from kioskfleet.drivers.base import Driver, DriverOptions, Transport, open_transport
from kioskfleet.drivers.exceptions import (
    DeviceOperationError,
    DeviceTimeoutError,
    DeviceUnavailableError,
    DriverError,
    FrameError,
)
from kioskfleet.drivers.registry import ProbeOptions, ProbeResult
from kioskfleet.protocol.devices import (
    DeviceInfo,
    DeviceKind,
    DeviceState,
    DeviceStatus,
    DriverName,
    Media,
)

try:
    import termios

    _PORT_ERRORS: tuple[type[Exception], ...] = (OSError, termios.error)
except ImportError:  # pragma: no cover - not POSIX
    _PORT_ERRORS = (OSError,)

T = TypeVar("T")
Sex = Literal["male", "female", "unknown", "unspecified"]


class Split(NamedTuple):
    """What a protocol's pure frame finder says about a receive buffer."""

    #: the first complete frame, or ``None``
    frame: bytes | None
    #: bytes to drop from the front of the buffer (garbage, plus the frame if there is one)
    consumed: int
    #: after dropping, how many more bytes are needed at least before a frame can complete
    need: int


FrameSplitter = Callable[[bytes], Split]


def mask_id_number(number: str) -> str:
    """Keep the first and last four characters of an ID number: ``3202**********1234``.

    Numbers too short to keep eight characters and still hide something are hidden entirely.
    """
    if len(number) <= 8:
        return "*" * len(number)
    return number[:4] + "*" * (len(number) - 8) + number[-4:]


def mask_name(name: str) -> str:
    """Keep a name's first character: ``张**``."""
    return name[:1] + "*" * max(0, len(name) - 1)


@dataclass(frozen=True, repr=False)
class IdCard:
    """What a resident ID card holds (text part; the WLT photo is kept opaque and local).

    ``repr``/``str`` are masked: logging or raising with an ``IdCard`` cannot leak it.
    """

    name: str
    sex: Sex
    #: nationality code of GB 3304 (``"01"`` to ``"56"``, ``"97"`` other, ``"98"`` foreign origin)
    nation: str
    birth_date: dt.date
    address: str
    id_number: str
    issuer: str
    valid_from: dt.date
    #: ``None`` for a card valid for life (长期)
    valid_until: dt.date | None
    #: WLT-compressed photo as read; decoding it needs the licensed library
    photo: bytes = b""

    def masked(self) -> dict[str, str]:
        """The only form of the card that may leave the local caller (probe output)."""
        return {"name": mask_name(self.name), "id_number": mask_id_number(self.id_number)}

    def __repr__(self) -> str:
        masked = self.masked()
        return (
            f"IdCard(name={masked['name']!r}, id_number={masked['id_number']!r}, address=<hidden>)"
        )

    __str__ = __repr__


class CardReader(Driver):
    """What both card-reader families share: ``media`` in their status, and a frame receiver.

    Replies are read by a length-driven state machine over a receive buffer: ``split`` (the
    protocol's pure frame finder) says what is garbage and when a frame is complete; once a
    frame has started, every chunk must arrive within the inter-byte timeout or the partial
    frame is dropped (quirk ``inter_byte_timeout``, seconds).
    """

    kind: ClassVar[DeviceKind]
    #: most bytes asked of the port at once: small enough that a chunk arrives within the
    #: inter-byte timeout even at 9600 baud
    CHUNK: ClassVar[int] = 64

    def __init__(self, transport: Transport, options: DriverOptions | None = None) -> None:
        super().__init__(transport, options)
        self._rx = bytearray()

    @property
    def inter_byte_timeout(self) -> float:
        """Longest silence tolerated inside a frame."""
        return float(self.options.quirks.get("inter_byte_timeout", 0.2))

    def _discard_input(self) -> None:
        """Forget stale bytes (a late reply to an exchange that already timed out)."""
        self._rx.clear()
        self._resync()

    def _resync(self) -> None:
        self._rx.clear()
        try:
            super()._resync()
        except _PORT_ERRORS as err:
            # pyserial lets termios.error (not an OSError) out of tcflush on a vanished pty
            raise DeviceUnavailableError(f"{self.name}: port failed: {err}") from err

    def _once(self, operation: Callable[[], T]) -> T:
        """Run an operation that must not be retried (motion), wrapping port failures."""
        try:
            return operation()
        except DriverError:
            raise  # our own, including DeviceTimeoutError (which is also an OSError)
        except _PORT_ERRORS as err:
            raise DeviceUnavailableError(f"{self.name}: port failed: {err}") from err

    def _receive(self, want: int, timeout: float) -> bool:
        """Read up to ``want`` bytes into the buffer; False when nothing came in ``timeout``."""
        if timeout <= 0:
            return False
        self.transport.timeout = timeout
        chunk = self.transport.read(want)
        self._rx += chunk
        return bool(chunk)

    def _receive_frame(self, split: FrameSplitter, deadline: float) -> bytes:
        """Return the next complete frame, skipping garbage.

        Raises:
            DeviceTimeoutError: no frame started before ``deadline`` (monotonic).
            FrameError: a frame started but stalled (dropped), or only garbage arrived.
        """
        while True:
            frame, consumed, need = split(bytes(self._rx))
            if consumed:
                del self._rx[:consumed]
            if frame is not None:
                return frame
            if consumed:
                continue  # garbage dropped: look again before reading more
            # ask for no more than the frame needs: pyserial's read(n) waits for all n bytes
            want = max(1, min(need, self.CHUNK))
            remaining = deadline - time.monotonic()
            if not self._rx:
                if not self._receive(want, remaining):
                    raise DeviceTimeoutError(f"{self.name}: no reply before the timeout")
            elif not self._receive(want, min(self.inter_byte_timeout, max(remaining, 0.0))):
                dropped = len(self._rx)
                self._rx.clear()
                if remaining <= 0:
                    raise DeviceTimeoutError(f"{self.name}: reply incomplete at the timeout")
                # the byte count only: a partial frame may hold card data
                raise FrameError(f"{self.name}: partial frame of {dropped} bytes dropped")

    def status_object(
        self,
        *,
        state: DeviceState,
        media: Media,
        faults: list[str] | None = None,
        info: DeviceInfo | None = None,
        supplies: dict[str, str] | None = None,
        events: list[dict[str, Any]] | None = None,
    ) -> DeviceStatus:
        """Build this reader's status in the contract vocabulary (CONTRACT §5)."""
        return DeviceStatus(
            device=self.kind,
            driver=self.name,
            state=state,
            faults=faults or [],
            info=info or DeviceInfo(),
            supplies=supplies or {},
            media=media,
            events=events or [],
        )

    def offline_status(self, error: DriverError, info: DeviceInfo | None = None) -> DeviceStatus:
        """As :meth:`Driver.offline_status`, with ``media`` unknown (card readers have it)."""
        return super().offline_status(error, info).model_copy(update={"media": "unknown"})


class IdCardReader(CardReader):
    """A resident ID card reader (contactless, no motor): find, select, read."""

    kind: ClassVar[DeviceKind] = "id_reader"

    @abstractmethod
    def read_card(self) -> IdCard | None:
        """Find a card on the reader, select it and read it.

        Returns:
            The card, or ``None`` when no card is on the reader.

        Raises:
            DeviceOperationError: a card is there but could not be read (the next
                :meth:`status` reports ``read_error`` until a card is read or removed).
            DriverError: the reader did not answer or answered garbage.
        """


class MotorCardReader(CardReader):
    """A motorized card reader: takes a card in, gives it back at the gate, or retains it."""

    kind: ClassVar[DeviceKind] = "card_reader"

    @abstractmethod
    def accept(self) -> None:
        """Let a card be inserted at the gate.

        Raises:
            DriverError: the reader refused or did not answer.
        """

    @abstractmethod
    def eject(self) -> Media:
        """Move the card to the gate, where the customer can take it; returns the media then.

        Raises:
            DriverError: the card could not be moved (a jam shows in the next :meth:`status`).
        """

    @abstractmethod
    def capture(self) -> Media:
        """Retain the card in the bin; returns the media afterwards.

        Raises:
            DriverError: the card could not be moved or the bin is full.
        """


def read_present_card(
    read_status: Callable[[], DeviceStatus],
    status: DeviceStatus,
    on_present: Callable[[], list[dict[str, Any]]] | None,
) -> tuple[DeviceStatus, list[dict[str, Any]]]:
    """Run ``on_present`` for a card that just showed up.

    When it fails with :class:`DeviceOperationError` (an unreadable card) it reports nothing
    and the status is read again, so that it shows the fault the failure left.
    """
    if on_present is None:
        return status, []
    try:
        return status, on_present()
    except DeviceOperationError:
        return read_status(), []


def watch_media(
    read_status: Callable[[], DeviceStatus],
    seconds: float,
    on_present: Callable[[], list[dict[str, Any]]] | None = None,
    *,
    interval: float = 0.2,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[DeviceStatus, list[dict[str, Any]]]:
    """``device probe --watch S`` for a card reader: poll status, report card movements.

    Emits ``card_inserted`` / ``card_removed`` when ``media`` changes, and whatever
    ``on_present`` returns when a card arrives (e.g. an ``id_card_read`` event, masked; see
    :func:`read_present_card` for a failing one).

    Returns:
        The last status read and the events, in order.
    """
    events: list[dict[str, Any]] = []
    status = read_status()
    previous = status.media
    if previous == "present":
        status, found = read_present_card(read_status, status, on_present)
        events += found
    deadline = clock() + seconds
    while clock() < deadline:
        sleep(interval)
        status = read_status()
        if status.media == previous:
            continue
        if status.media == "present":
            events.append({"type": "card_inserted"})
            status, found = read_present_card(read_status, status, on_present)
            events += found
        elif previous == "present":
            events.append({"type": "card_removed"})
        previous = status.media
    return status, events


def driver_options(options: ProbeOptions) -> DriverOptions:
    """Driver timeouts, retries and quirks for a probe (quirks come from the firmware profile)."""
    quirks = options.profile.get("quirks", {})
    merged = dict(quirks) if isinstance(quirks, dict) else {}
    if options.address is not None:
        merged["address"] = options.address  # --address wins over the profile
    return DriverOptions(timeout=options.timeout, retries=options.retries, quirks=merged)


def profile_baudrate(options: ProbeOptions, default: int) -> int:
    """``--baudrate`` wins, then the firmware profile's ``baudrate``, then the protocol default."""
    if options.baudrate:
        return options.baudrate
    value = options.profile.get("baudrate", default)
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else default


def probe_card_reader(
    open_reader: Callable[[Transport, DriverOptions], CardReader],
    port: str,
    options: ProbeOptions,
    *,
    kind: DeviceKind,
    driver: DriverName,
    default_baudrate: int,
    on_present: Callable[[CardReader], list[dict[str, Any]]] | None = None,
) -> ProbeResult:
    """``kioskfleet device probe`` for a card reader: identify, read status once (or watch).

    ``on_present`` runs when a card is on the reader and returns the events to report; it may
    raise :class:`DeviceOperationError` (e.g. an unreadable card), in which case the status is
    read again so it shows the fault. Nothing but ``on_present``'s (masked) events reaches the
    result.
    """
    try:
        transport = open_transport(
            port, baudrate=profile_baudrate(options, default_baudrate), timeout=options.timeout
        )
    except DeviceUnavailableError:
        status = DeviceStatus(
            device=kind, driver=driver, state="no_device", faults=["offline"], media="unknown"
        )
        return ProbeResult(status=status, answered=False)
    reader = open_reader(transport, driver_options(options))
    info: DeviceInfo | None = None
    try:
        info = reader.identify()
        present = None if on_present is None else functools.partial(on_present, reader)
        if options.watch:
            status, events = watch_media(reader.status, options.watch, present)
        else:
            status, events = reader.status(), []
            if status.media == "present":
                status, events = read_present_card(reader.status, status, present)
        status = status.model_copy(update={"info": info, "events": events})
        return ProbeResult(status=status, answered=True)
    except DeviceOperationError:
        # it answered, but refused something identity or status needs
        status = reader.status_object(state="hardware_error", media="unknown", info=info)
        return ProbeResult(status=status, answered=True)
    except DriverError as err:
        return ProbeResult(status=reader.offline_status(err, info), answered=False)
    finally:
        reader.close()
