"""The kiosk's transaction state, kept whether or not the local device service runs.

:class:`TransactionTracker` is the thread-safe owner of the pure
:class:`~kioskfleet.agent.transactions.TransactionState`. It listens to the
:class:`~kioskfleet.agent.hub.DeviceHub` (credits, escrow and card presence from any poll or
read, the coordinator's included) and hands every transaction event, in order, to its
``on_event`` callback (the agent queues them on its ``events`` topic). The local device service
drives it from what the kiosk application asks; the update gate asks it one question —
:attr:`TransactionTracker.busy` — with the service switched off too.

Like the state it holds, it never sees a citizen's personal data.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from kioskfleet.agent.hub import DeviceHub, DeviceUpdate
from kioskfleet.agent.transactions import CURRENCY, TransactionState

log = logging.getLogger(__name__)

T = TypeVar("T")
EventSink = Callable[[list[dict[str, Any]]], None]


class TransactionTracker:
    """The station's :class:`TransactionState` behind a lock, fed by the hub.

    Args:
        hub: the station's devices; the tracker listens to it until :meth:`close`.
        on_event: receives the transaction events to publish, oldest first, exactly once each.
            With ``loop`` it is called on that loop (``call_soon_threadsafe``, so order is
            kept); without, in the thread that changed the state, under the state lock —
            then it must be quick and must not call back into the tracker.
        loop: the event loop ``on_event`` belongs to (the agent's).
        clock: wall clock for the state (Unix seconds).
        new_id: cash-in session-id source (tests).
    """

    def __init__(
        self,
        hub: DeviceHub,
        *,
        on_event: EventSink | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self.on_event = on_event
        #: the state's clock (session idle times are measured on it)
        self.clock = clock
        self._loop = loop
        self._state = (
            TransactionState(clock) if new_id is None else TransactionState(clock, new_id=new_id)
        )
        self._lock = threading.Lock()
        self._unlisten: Callable[[], None] | None = hub.listen(self._on_device)

    # -- the update gate's questions ---------------------------------------------------------
    @property
    def busy(self) -> bool:
        """True while a citizen is mid-transaction (see :attr:`TransactionState.busy`)."""
        return self.run(lambda s: s.busy)

    def idle_for(self) -> float:
        """Seconds the kiosk has been idle (0 while busy)."""
        return self.run(lambda s: s.idle_for())

    def snapshot(self) -> dict[str, Any]:
        """The whole state as JSON (``GET /v1/status``, the update gate's log line)."""
        return self.run(lambda s: s.snapshot())

    # -- access ------------------------------------------------------------------------------
    def run(self, fn: Callable[[TransactionState], T]) -> T:
        """Apply ``fn`` to the state under the lock, then hand its events to ``on_event``.

        Exceptions of ``fn`` (e.g. :class:`~kioskfleet.agent.transactions.TransactionError`)
        propagate; events it emitted before raising are still published.
        """
        with self._lock:
            try:
                return fn(self._state)
            finally:
                events = self._state.take_events()
                if events:
                    self._publish(events)

    def close(self) -> None:
        """Stop listening to the hub (the state stays readable)."""
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None

    # -- internals ---------------------------------------------------------------------------
    def _publish(self, events: list[dict[str, Any]]) -> None:
        sink = self.on_event
        if sink is None:
            return
        loop = self._loop
        if loop is None:
            self._deliver(sink, events)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._deliver, sink, events)

    @staticmethod
    def _deliver(sink: EventSink, events: list[dict[str, Any]]) -> None:
        try:
            sink(events)
        except Exception:  # why: publishing must not break the devices or the service
            log.exception("could not hand transaction events to the agent")

    def _on_device(self, update: DeviceUpdate) -> None:
        """Hub listener: credits, escrow and card presence from any poll or read."""

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

        self.run(apply)
