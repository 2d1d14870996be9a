"""The card-reader families: resident ID card readers and motorized bank-card readers.

Two small ABCs on top of :class:`~kioskfleet.drivers.base.Driver` so the agent, the probe and
the contract suite talk to every reader of a family the same way, plus :class:`IdCard`, the
only place a citizen's identity lives in memory. An :class:`IdCard` never prints its contents:
``repr``/``str`` and :meth:`IdCard.masked` show the masked form (CONTRACT §5); the full data is
reachable only through its attributes, for the local caller that needs it.
"""

from __future__ import annotations

import datetime as dt
import time
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from kioskfleet.drivers.base import Driver, ProbeResult
from kioskfleet.drivers.exceptions import DeviceOperationError, DriverError
from kioskfleet.protocol.devices import DeviceInfo, DeviceKind, DeviceState, DeviceStatus, Media

Sex = Literal["male", "female", "unknown", "unspecified"]


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
    """What both card-reader families share: ``media`` in their status, and the probe.

    Replies come through the base class's receive loop with the protocol's split function
    (``frames.next_frame``); quirk ``inter_byte_timeout`` (seconds, default 0.2).
    """

    kind: ClassVar[DeviceKind]

    def _probe(self, watch: float | None) -> ProbeResult:
        """``kioskfleet device probe`` for a card reader: identify, read the status once (or
        watch it), report a card on the reader with :meth:`_card_events` (masked)."""
        info: DeviceInfo | None = None
        try:
            info = self.identify()
            if watch:
                status, events = watch_media(self.status, watch, self._card_events)
            else:
                status, events = self.status(), []
                if status.media == "present":
                    status, events = read_present_card(self.status, status, self._card_events)
            status = status.model_copy(update={"info": info, "events": events})
            return ProbeResult(status=status, answered=True)
        except DeviceOperationError:
            # it answered, but refused something identity or status needs
            status = self.status_object(state="hardware_error", media="unknown", info=info)
            return ProbeResult(status=status, answered=True)
        except DriverError as err:
            return ProbeResult(status=self.offline_status(err, info), answered=False)

    def _card_events(self) -> list[dict[str, Any]]:
        """What a probe reports about a card on the reader; only masked data, ever.

        Raises:
            DeviceOperationError: the card is unreadable (the status is read again).
        """
        return []

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

    @classmethod
    def offline_status(cls, error: DriverError, info: DeviceInfo | None = None) -> DeviceStatus:
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
