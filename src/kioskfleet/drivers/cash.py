"""The cash family: what every banknote validator and coin acceptor driver offers.

A :class:`CashAcceptor` turns its protocol's events into the CONTRACT §5 vocabulary::

    {"type": "credit", "value": fen, "currency": "CNY", "channel": n}
    {"type": "escrow", "channel": n}
    {"type": "rejected", "reason": str}
    {"type": "jam", "safe": bool}
    {"type": "fraud_attempt"}
    {"type": "cashbox_removed"} / {"type": "cashbox_replaced"}
    {"type": "events_lost", "count": n}      # the device said it dropped events

Values are integers in fen (100 yuan = 10000). The pure helpers here (:class:`CashConditions`,
:func:`cash_state`, :func:`build_status`) decide faults and state from what a protocol
reported, so ccTalk and SSP agree on what "jammed" or "cashbox missing" means.
:meth:`CashAcceptor._probe` is the family's ``device probe`` behaviour, shared by both protocols.
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from kioskfleet.drivers.base import Driver, DriverOptions, ProbeResult, Transport
from kioskfleet.drivers.exceptions import (
    DeviceOperationError,
    DeviceUnavailableError,
    DriverError,
)
from kioskfleet.protocol.devices import DeviceInfo, DeviceKind, DeviceState, DeviceStatus

log = logging.getLogger(__name__)

CashEvent = dict[str, Any]


CURRENCY: Final = "CNY"
#: an enabled acceptor must be polled well inside a second (Azkoyen-style acceptors stop
#: accepting after ~1 s without a poll; SSP rejects an escrowed note after 10 s)
ENABLED_POLL_INTERVAL: Final = 0.2
#: an inhibited acceptor only needs polling to notice faults and cashbox changes
IDLE_POLL_INTERVAL: Final = 2.0
#: events kept for poll() when only status() is called; older ones are dropped and declared
MAX_PENDING_EVENTS: Final = 256
#: a fraud attempt is a one-off event on the wire; we keep the station flagged this long
FRAUD_HOLD_S: Final = 60.0

#: ISO 3166 two-letter country (as in ccTalk coin/bill ids) → ISO 4217 currency
COUNTRY_CURRENCY: Final[dict[str, str]] = {
    "CN": "CNY",
    "HK": "HKD",
    "MO": "MOP",
    "TW": "TWD",
    "EU": "EUR",
    "GB": "GBP",
    "US": "USD",
    "JP": "JPY",
}


@dataclass(frozen=True)
class CashChannel:
    """One denomination the acceptor knows: its 1-based channel, value in fen, currency."""

    channel: int
    value: int
    currency: str = CURRENCY


# -- events ---------------------------------------------------------------------------------
def credit_event(channel: CashChannel | None, number: int) -> CashEvent:
    """A credit for channel ``number``; value 0 when the channel table does not know it."""
    if channel is None:
        return {"type": "credit", "value": 0, "currency": CURRENCY, "channel": number}
    return {
        "type": "credit",
        "value": channel.value,
        "currency": channel.currency,
        "channel": number,
    }


def escrow_event(number: int) -> CashEvent:
    """A note held in escrow, waiting for :meth:`CashAcceptor.accept_escrow` or return."""
    return {"type": "escrow", "channel": number}


def rejected_event(reason: str) -> CashEvent:
    """The acceptor gave the note or coin back; ``reason`` is a stable snake_case word."""
    return {"type": "rejected", "reason": reason}


def jam_event(safe: bool) -> CashEvent:
    """A note jammed; ``safe`` when it cannot be reached from the bezel."""
    return {"type": "jam", "safe": safe}


def simple_event(kind: str) -> CashEvent:
    """An event without payload (``fraud_attempt``, ``cashbox_removed``, …)."""
    return {"type": kind}


def events_lost_event(count: int) -> CashEvent:
    """The device dropped ``count`` events before the host read them (credits may be lost)."""
    return {"type": "events_lost", "count": count}


# -- conditions → faults → state ------------------------------------------------------------
@dataclass
class CashConditions:
    """What is wrong with an acceptor right now, as far as its protocol told us.

    Protocols feed this from their status replies (ccTalk self-check) or from persistent
    poll events (SSP); :meth:`faults` and :func:`cash_state` turn it into the vocabulary.
    """

    jam: bool = False
    jam_safe: bool | None = None
    cashbox: str = "ok"
    note_path_open: bool = False
    hardware_fault: bool = False
    #: monotonic time until which a fraud attempt keeps the device flagged
    fraud_until: float = 0.0
    extra_faults: set[str] = field(default_factory=set)

    def fraud_active(self, now: float) -> bool:
        """True while a fraud attempt seen recently still flags the device."""
        return now < self.fraud_until

    def flag_fraud(self, now: float, hold: float = FRAUD_HOLD_S) -> None:
        """A fraud attempt was seen now."""
        self.fraud_until = now + hold

    def faults(self, now: float) -> list[str]:
        """Stable fault codes (CONTRACT §5), in a fixed order."""
        out: list[str] = []
        if self.jam:
            out.append("note_jam")
        if self.cashbox == "full":
            out.append("cashbox_full")
        if self.cashbox == "missing":
            out.append("cashbox_missing")
        if self.fraud_active(now):
            out.append("fraud_attempt")
        if self.note_path_open:
            out.append("note_path_open")
        if self.hardware_fault:
            out.append("hardware_fault")
        out.extend(sorted(self.extra_faults - set(out)))
        return out


#: faults a person clears (CONTRACT §5 ``user_error``)
USER_FAULTS: Final = frozenset({"note_jam", "cashbox_full", "cashbox_missing", "note_path_open"})


def cash_state(faults: Iterable[str], *, busy: bool = False) -> DeviceState:
    """The device state for a set of cash faults.

    Precedence: an active fraud attempt first (the device must not be trusted with money),
    then internal faults, then what a person must fix, then ``busy`` (a note in escrow).
    """
    found = set(faults)
    if "fraud_attempt" in found:
        return "fraud_attempt"
    if "hardware_fault" in found:
        return "hardware_error"
    if found & USER_FAULTS:
        return "user_error"
    if found:
        return "hardware_error"
    return "busy" if busy else "online"


def build_status(
    *,
    kind: DeviceKind,
    driver: str,
    info: DeviceInfo,
    conditions: CashConditions,
    now: float,
    busy: bool = False,
    cashbox_known: bool = True,
    events: list[CashEvent] | None = None,
) -> DeviceStatus:
    """A :class:`DeviceStatus` for a cash device from its conditions."""
    faults = conditions.faults(now)
    cashbox = conditions.cashbox if cashbox_known else "unknown"
    return DeviceStatus.model_validate(
        {
            "device": kind,
            "driver": driver,
            "state": cash_state(faults, busy=busy),
            "faults": faults,
            "info": info,
            "supplies": {"cashbox": cashbox},
            "events": list(events or []),
        },
        strict=False,
    )


# -- the family interface -------------------------------------------------------------------
class CashAcceptor(Driver):
    """A banknote validator or coin acceptor.

    Life cycle: :meth:`identify`, then :meth:`baseline` (forget what the device buffered
    before this host started), then :meth:`enable` and :meth:`poll` every
    :attr:`poll_interval_hint` seconds. :meth:`status` never consumes events; :meth:`poll`
    is the only place they come out, so no credit is lost to a status read.

    Args:
        transport: an open pyserial-like port.
        options: timeouts, retries and firmware quirks.
        clock: monotonic clock (injectable so fraud hold times can be tested without sleeping).
    """

    kind: ClassVar[DeviceKind] = "cash_acceptor"

    def __init__(
        self,
        transport: Transport,
        options: DriverOptions | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(transport, options)
        self.clock = clock
        self.conditions = CashConditions()
        self._enabled = False
        self._escrow_mode = False
        self._enabled_channels: list[int] = []
        self._escrow: int | None = None
        self._pending: list[CashEvent] = []
        self._info: DeviceInfo | None = None

    # -- what callers use ------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """True while the acceptor takes cash."""
        return self._enabled

    @property
    def escrow(self) -> int | None:
        """The channel of the note held in escrow, if any."""
        return self._escrow

    @property
    def poll_interval_hint(self) -> float:
        """How often to call :meth:`poll`: fast while enabled, slowly while inhibited."""
        quirk = self.options.quirks.get("poll_interval")
        if self._enabled:
            if isinstance(quirk, int | float) and 0 < quirk < 1:
                return float(quirk)
            return ENABLED_POLL_INTERVAL
        return IDLE_POLL_INTERVAL

    @property
    @abstractmethod
    def channels(self) -> dict[int, CashChannel]:
        """The channel table (channel → value in fen, currency); read during identify."""

    def enable(self, channels: Iterable[int] | None = None, *, escrow: bool = False) -> None:
        """Accept cash on ``channels`` (all known channels when None).

        With ``escrow`` notes stop in escrow (event ``escrow``) until :meth:`accept_escrow`
        or :meth:`return_escrow`; without it every valid note is credited at once.
        """
        wanted = sorted(self.channels) if channels is None else sorted(set(channels))
        self._with_retries("enable", lambda: self._enable(wanted, escrow))
        self._enabled = True
        self._enabled_channels = wanted
        self._escrow_mode = escrow

    def disable(self) -> None:
        """Stop accepting cash (inhibit every channel)."""
        self._with_retries("disable", self._disable)
        self._enabled = False

    def poll(self) -> list[CashEvent]:
        """Read what happened since the last poll, oldest first, in the contract vocabulary."""
        events = self._with_retries("poll", self._poll)
        out = self._pending + events
        self._pending = []
        return out

    def _stash(self, events: list[CashEvent]) -> None:
        """Keep events for the next :meth:`poll`, bounded: a caller that never polls must not
        make the driver grow without end; what is dropped is declared as ``events_lost``."""
        self._pending.extend(events)
        if len(self._pending) > MAX_PENDING_EVENTS:
            carried = 0
            if self._pending[0]["type"] == "events_lost":
                carried = int(self._pending.pop(0).get("count", 0))
            drop = len(self._pending) - (MAX_PENDING_EVENTS - 1)
            del self._pending[:drop]
            self._pending.insert(0, events_lost_event(carried + drop))

    def accept_escrow(self) -> None:
        """Stack the note held in escrow (its credit comes from the next :meth:`poll`).

        Raises:
            DeviceOperationError: no note is in escrow.
        """
        if self._escrow is None:
            raise DeviceOperationError(f"{self.name}: no note in escrow")
        self._route_escrow(accept=True)
        self._escrow = None

    def return_escrow(self) -> None:
        """Give the note held in escrow back to the citizen.

        Raises:
            DeviceOperationError: no note is in escrow.
        """
        if self._escrow is None:
            raise DeviceOperationError(f"{self.name}: no note in escrow")
        self._route_escrow(accept=False)
        self._escrow = None

    def baseline(self) -> None:
        """Forget events the device buffered before now (they predate this host)."""
        self._with_retries("baseline", self._baseline)
        self._pending = []

    def identify(self) -> DeviceInfo:
        """Read the identity (and, as a side effect, the channel table)."""
        self._info = super().identify()
        return self._info

    @property
    def info(self) -> DeviceInfo:
        """The identity read last, or an empty one before :meth:`identify`."""
        return self._info or DeviceInfo()

    # -- opening and probing ----------------------------------------------------------------
    def _on_open(self) -> None:
        # the agent needs the channel table before the first credit
        self.identify()

    @classmethod
    def offline_status(cls, error: DriverError, info: DeviceInfo | None = None) -> DeviceStatus:
        """``offline`` (no answer) or ``no_device`` (port cannot be opened), cashbox unknown."""
        state: DeviceState = "no_device" if isinstance(error, DeviceUnavailableError) else "offline"
        return DeviceStatus.model_validate(
            {
                "device": cls.kind,
                "driver": cls.name,
                "state": state,
                "faults": ["offline"],
                "info": info or DeviceInfo(),
                "supplies": {"cashbox": "unknown"},
            },
            strict=False,
        )

    def _probe(self, watch: float | None) -> ProbeResult:
        """CONTRACT §5 ``device probe`` for a cash device.

        Without ``watch``: identity, status, and nothing buffered before the probe. With
        ``watch`` = S: enable every channel, poll for S seconds, report the events, disable
        again. A device that answers but refuses is ``answered`` with ``hardware_fault``.
        """
        events: list[CashEvent] = []
        try:
            self.identify()
            self.baseline()
            if watch:
                events = self._watch(watch)
            status = self.status()
        except DeviceOperationError:
            # it answered, just not the way we wanted: the device is there but not serving
            status = build_status(
                kind=self.kind,
                driver=self.name,
                info=self.info,
                conditions=CashConditions(extra_faults={"hardware_fault"}),
                now=self.clock(),
                cashbox_known=False,
            )
            return ProbeResult(status.model_copy(update={"events": events}), answered=True)
        except DriverError as err:
            status = self.offline_status(err, self.info)
            return ProbeResult(status.model_copy(update={"events": events}), answered=False)
        return ProbeResult(status.model_copy(update={"events": events}), answered=True)

    def _watch(self, seconds: float) -> list[CashEvent]:
        """Accept cash for ``seconds`` and return what came; acceptance is off again after."""
        events: list[CashEvent] = []
        self.enable()
        try:
            deadline = self.clock() + seconds
            while True:
                events.extend(self.poll())
                remaining = deadline - self.clock()
                if remaining <= 0:
                    break
                time.sleep(min(self.poll_interval_hint, remaining))
        finally:
            # leave the device as we found it, even when polling failed half-way
            try:
                self.disable()
            except DriverError as err:
                log.warning("%s: could not disable acceptance again: %s", self.name, err)
        events.extend(self.poll())
        return events

    # -- what protocols write --------------------------------------------------------------
    @abstractmethod
    def _enable(self, channels: list[int], escrow: bool) -> None:
        """Protocol-specific enable (one attempt)."""

    @abstractmethod
    def _disable(self) -> None:
        """Protocol-specific disable (one attempt)."""

    @abstractmethod
    def _poll(self) -> list[CashEvent]:
        """Protocol-specific poll (one attempt); must be safe to repeat after a timeout."""

    @abstractmethod
    def _route_escrow(self, *, accept: bool) -> None:
        """Stack (``accept``) or return the escrowed note."""

    @abstractmethod
    def _baseline(self) -> None:
        """Read the device's event position without reporting what is buffered."""


def currency_of_iso(code: str) -> str:
    """A currency code as a device reports it (``"CNY"``), cleaned of padding."""
    cleaned = code.strip().strip("\x00").upper()
    # ISO 4217 "XXX" = no currency: better than pretending garbage is yuan
    return cleaned if cleaned.isascii() and cleaned.isalpha() else "XXX"
