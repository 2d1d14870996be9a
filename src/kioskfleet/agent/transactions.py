"""What a citizen is in the middle of at this kiosk: a pure state machine (no I/O).

Its owner, :class:`~kioskfleet.agent.tracker.TransactionTracker`, drives it from what the devices
report (through the hub, whether or not the local device service runs) and from what the kiosk
application asks (:mod:`kioskfleet.agent.localservice`); the update gate asks it one question —
:attr:`TransactionState.busy` (and since when it is idle, :attr:`TransactionState.idle_since`) —
so an update never restarts the agent while a session is open, a bank card is inside, a
note sits in escrow, an ID card is being read or a receipt is printing.

Like tuf's ``TrustedMetadataSet`` it does no I/O: the clock and the session-id source are
injected, and what the agent should publish comes out of :meth:`TransactionState.take_events`
as ``{"type": "transaction", ...}`` events for the ``events`` topic (CONTRACT §3). Nothing
here ever receives a citizen's personal data — no method takes a name, a number or a card —
so no event can carry one.

Amounts are integers in fen (100 yuan = 10000), currency ``CNY`` (CONTRACT §5).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

CURRENCY: Final = "CNY"
#: ended sessions kept so the application can still read a session's outcome
KEEP_ENDED: Final = 16

EndReason = Literal["ended", "abandoned", "failed"]
Outcome = Literal["ok", "no_card", "failed"]
Event = dict[str, Any]


class TransactionError(Exception):
    """A request that does not fit the current transaction state. ``code`` is a stable word."""

    code: str = "transaction_error"


class UnknownSessionError(TransactionError):
    """No cash-in session has that id (or it ended long ago and was forgotten)."""

    code = "unknown_session"


class SessionEndedError(TransactionError):
    """The session has already ended: it takes no more cash and cannot end twice."""

    code = "session_ended"


class SessionConflictError(TransactionError):
    """A device is already taking cash for another open session."""

    code = "session_open"


class EscrowPendingError(TransactionError):
    """A note waits in escrow: accept or return it first."""

    code = "escrow_pending"


class NoEscrowError(TransactionError):
    """There is no note in escrow to accept or return."""

    code = "no_escrow"


@dataclass(frozen=True)
class Credit:
    """Money the kiosk took: ``value`` fen in ``currency`` from ``device`` channel ``channel``."""

    device: str
    channel: int
    value: int
    currency: str
    at: float

    def view(self) -> dict[str, Any]:
        """JSON form for the local API."""
        return {
            "device": self.device,
            "channel": self.channel,
            "value": self.value,
            "currency": self.currency,
        }


@dataclass(frozen=True)
class Escrow:
    """A note held in escrow, waiting for the application's decision."""

    device: str
    channel: int
    #: fen, when the device's channel table knows the channel
    value: int | None
    since: float

    def view(self) -> dict[str, Any]:
        """JSON form for the local API."""
        return {
            "device": self.device,
            "channel": self.channel,
            "value": self.value,
            "currency": CURRENCY,
        }


@dataclass
class CashInSession:
    """One citizen's cash-in: which acceptors take cash for it, what it took so far."""

    id: str
    devices: tuple[str, ...]
    started_at: float
    last_activity: float
    credits: list[Credit] = field(default_factory=list)
    escrow: Escrow | None = None
    #: notes handed back from escrow
    returned: int = 0
    ended_at: float | None = None
    end_reason: EndReason | None = None

    @property
    def open(self) -> bool:
        """True until the session ends."""
        return self.ended_at is None

    @property
    def total(self) -> int:
        """Fen credited in ``CNY``: always the sum of the CNY credits."""
        return sum(c.value for c in self.credits if c.currency == CURRENCY)

    def view(self) -> dict[str, Any]:
        """JSON form for the local API (amounts only: nothing personal exists here)."""
        return {
            "id": self.id,
            "state": "open" if self.open else "ended",
            "devices": list(self.devices),
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "end_reason": self.end_reason,
            "escrow": None if self.escrow is None else self.escrow.view(),
            "credits": [c.view() for c in self.credits],
            "returned": self.returned,
            "total": self.total,
            "currency": CURRENCY,
        }


def _new_id() -> str:
    return secrets.token_hex(8)


class TransactionState:
    """The kiosk's transaction state (not thread-safe: its owner serialises access).

    Args:
        clock: seconds (the service passes ``time.time`` so ``started_at`` is a Unix time).
        new_id: source of cash-in session ids (random by default).
        keep_ended: how many ended sessions stay readable.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        new_id: Callable[[], str] = _new_id,
        keep_ended: int = KEEP_ENDED,
    ) -> None:
        self._clock = clock
        self._new_id = new_id
        self._keep_ended = keep_ended
        self._sessions: OrderedDict[str, CashInSession] = OrderedDict()
        self._events: list[Event] = []
        #: bank-card reader slot → a card is inside (or in the gate, still ours)
        self._cards: dict[str, bool] = {}
        #: bank-card reader slot → entry enabled, waiting for a card
        self._accepting: dict[str, bool] = {}
        self._id_reads = 0
        self._printing = 0
        self._idle_since: float | None = clock()

    # -- the update gate's question --------------------------------------------------------
    @property
    def busy(self) -> bool:
        """True while a citizen is mid-transaction: a cash-in session open (escrow included),
        a bank card inside, an ID card being read or a receipt printing."""
        return bool(
            self.open_sessions() or any(self._cards.values()) or self._id_reads or self._printing
        )

    @property
    def idle_since(self) -> float | None:
        """When the kiosk last became idle (clock seconds); ``None`` while :attr:`busy`."""
        return self._idle_since

    def idle_for(self) -> float:
        """Seconds idle so far (0 while busy)."""
        return 0.0 if self._idle_since is None else max(0.0, self._clock() - self._idle_since)

    def _after_change(self) -> None:
        if self.busy:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = self._clock()

    # -- events ------------------------------------------------------------------------------
    def take_events(self) -> list[Event]:
        """What happened since the last call, oldest first, for the ``events`` topic."""
        out, self._events = self._events, []
        return out

    def _emit(self, kind: str, phase: str, **extra: Any) -> None:
        self._events.append({"type": "transaction", "kind": kind, "phase": phase, **extra})

    # -- cash-in -----------------------------------------------------------------------------
    def open_sessions(self) -> list[CashInSession]:
        """Sessions that have not ended, oldest first."""
        return [s for s in self._sessions.values() if s.open]

    def session(self, session_id: str) -> CashInSession:
        """The session with that id, open or recently ended.

        Raises:
            UnknownSessionError: no such session.
        """
        found = self._sessions.get(session_id)
        if found is None:
            raise UnknownSessionError(f"no cash-in session {session_id!r}")
        return found

    def session_for_device(self, device: str) -> CashInSession | None:
        """The open session ``device`` takes cash for, if any."""
        for session in self._sessions.values():
            if session.open and device in session.devices:
                return session
        return None

    def open_cash_in(self, devices: Iterable[str]) -> CashInSession:
        """Start a session taking cash from ``devices`` (acceptor slots).

        Raises:
            ValueError: no device given.
            SessionConflictError: one of them already takes cash for an open session.
        """
        slots = tuple(dict.fromkeys(devices))
        if not slots:
            raise ValueError("a cash-in session needs at least one acceptor")
        for slot in slots:
            other = self.session_for_device(slot)
            if other is not None:
                raise SessionConflictError(
                    f"{slot} already takes cash for open session {other.id!r}"
                )
        now = self._clock()
        session_id = self._new_id()
        while session_id in self._sessions:
            session_id = self._new_id()
        session = CashInSession(id=session_id, devices=slots, started_at=now, last_activity=now)
        self._sessions[session_id] = session
        self._emit("cash_in", "started", session=session_id, devices=list(slots))
        self._after_change()
        return session

    def touch(self, session_id: str) -> CashInSession:
        """The application looked at the session: it is still attended."""
        session = self.session(session_id)
        if session.open:
            session.last_activity = self._clock()
        return session

    def note_escrowed(self, device: str, channel: int, value: int | None) -> CashInSession | None:
        """``device`` holds a note of ``channel`` in escrow; returns the session it belongs to
        (``None``: no open session uses that device, the note is not ours to decide)."""
        session = self.session_for_device(device)
        if session is None:
            return None
        if session.escrow is not None and session.escrow.device != device:
            # two validators in one session both holding a note: keep the first, the second
            # waits on its own device; the application sees them one after the other
            return session
        session.escrow = Escrow(device, channel, value, self._clock())
        session.last_activity = self._clock()
        return session

    def escrow_resolved(self, session_id: str, *, accepted: bool) -> Escrow:
        """The application's decision on the escrowed note was carried out by the device.

        An accepted note is credited when the device reports the credit (:meth:`credit`);
        a returned one is counted in ``returned``.

        Raises:
            UnknownSessionError, SessionEndedError, NoEscrowError.
        """
        session = self._open_session(session_id)
        escrow = session.escrow
        if escrow is None:
            raise NoEscrowError("no note is in escrow")
        session.escrow = None
        session.last_activity = self._clock()
        if not accepted:
            session.returned += 1
        return escrow

    def note_returned(self, device: str) -> CashInSession | None:
        """``device`` gave a note back on its own (escrow timeout, a reject while held)."""
        session = self.session_for_device(device)
        if session is None or session.escrow is None or session.escrow.device != device:
            return None
        session.escrow = None
        session.returned += 1
        return session

    def credit(
        self, device: str, channel: int, value: int, currency: str = CURRENCY
    ) -> CashInSession | None:
        """``device`` credited ``value`` fen; returns the session credited (``None``: no open
        session uses that device, e.g. the acceptor was enabled by someone else).

        Raises:
            ValueError: a negative value.
        """
        if value < 0:
            raise ValueError(f"a credit of {value} fen")
        session = self.session_for_device(device)
        if session is None:
            return None
        session.credits.append(Credit(device, channel, value, currency, self._clock()))
        if session.escrow is not None and session.escrow.device == device:
            session.escrow = None  # stacked: the device credits what it held
        session.last_activity = self._clock()
        return session

    def end_cash_in(self, session_id: str, reason: EndReason = "ended") -> CashInSession:
        """End the session; its ``total`` is final.

        Raises:
            UnknownSessionError, SessionEndedError (it cannot end twice),
            EscrowPendingError: a note still waits in escrow (resolve it first).
        """
        session = self._open_session(session_id)
        if session.escrow is not None:
            raise EscrowPendingError(
                f"a note (channel {session.escrow.channel} on {session.escrow.device}) "
                "is in escrow: accept or return it first"
            )
        session.ended_at = self._clock()
        session.end_reason = reason
        foreign = sum(1 for c in session.credits if c.currency != CURRENCY)
        extra: dict[str, Any] = {"foreign_credits": foreign} if foreign else {}
        self._emit(
            "cash_in",
            "ended",
            session=session.id,
            total=session.total,
            currency=CURRENCY,
            credits=len(session.credits),
            returned=session.returned,
            reason=reason,
            **extra,
        )
        self._forget_old()
        self._after_change()
        return session

    def _open_session(self, session_id: str) -> CashInSession:
        session = self.session(session_id)
        if not session.open:
            raise SessionEndedError(f"cash-in session {session_id!r} has already ended")
        return session

    def _forget_old(self) -> None:
        ended = [s.id for s in self._sessions.values() if not s.open]
        for session_id in ended[: max(0, len(ended) - self._keep_ended)]:
            del self._sessions[session_id]

    # -- bank cards --------------------------------------------------------------------------
    def bank_card_accepting(self, reader: str, accepting: bool) -> None:
        """Card entry was enabled (waiting for a card) or is no longer."""
        self._accepting[reader] = accepting

    def bank_card_seen(self, reader: str, present: bool) -> None:
        """The reader reports a card inside (or in its gate) or none."""
        before = self._cards.get(reader, False)
        self._cards[reader] = present
        if present and not before:
            self._accepting[reader] = False
            self._emit("bank_card", "inserted", device=reader)
        elif before and not present:
            self._emit("bank_card", "removed", device=reader)
        self._after_change()

    def bank_card_moved(self, reader: str, action: Literal["ejected", "retained"]) -> None:
        """The service moved the card: to the gate (``ejected``) or into the bin."""
        self._emit("bank_card", action, device=reader)
        if action == "retained":
            self.bank_card_seen(reader, False)

    # -- ID card reads and receipts --------------------------------------------------------------
    def id_read_started(self) -> None:
        """An ID card read began (a citizen's card is on the reader)."""
        self._id_reads += 1
        self._after_change()

    def id_read_finished(self, outcome: Outcome) -> None:
        """The read ended; only the outcome is recorded, never the card."""
        self._id_reads = max(0, self._id_reads - 1)
        self._emit("id_card", "read", outcome=outcome)
        self._after_change()

    def printing_started(self) -> None:
        """A receipt started printing."""
        self._printing += 1
        self._after_change()

    def printing_finished(self, outcome: Literal["ok", "failed"]) -> None:
        """The receipt printed (or failed)."""
        self._printing = max(0, self._printing - 1)
        self._emit("receipt", "printed" if outcome == "ok" else "failed")
        self._after_change()

    # -- views -------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The whole state as JSON, for ``GET /v1/status`` and the update gate's log line."""
        return {
            "busy": self.busy,
            "idle_since": self._idle_since,
            "cash_in": [s.view() for s in self.open_sessions()],
            "bank_card": {
                reader: {"inside": self._cards.get(reader, False), "accepting": accepting}
                for reader, accepting in _merged(self._cards, self._accepting).items()
            },
            "id_card_reading": self._id_reads > 0,
            "receipt_printing": self._printing > 0,
        }


def _merged(cards: Mapping[str, bool], accepting: Mapping[str, bool]) -> dict[str, bool]:
    return {reader: accepting.get(reader, False) for reader in {**cards, **accepting}}
