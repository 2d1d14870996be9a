"""Which queued message the agent publishes next, and when: a pure object (no I/O).

Every telemetry, events and reply message lives in the durable outbox until the controller
confirms it (CONTRACT §3 ``ack``). The send window decides what happens to it meanwhile:

- **order**: messages go out in the order they were queued (a backlog from before a restart
  first); what is sent again goes to the front.
- **window**: at most ``window`` messages published and not yet acknowledged by the broker.
- **rate**: a token bucket of ``window`` tokens refilled at ``max_rate`` per second, so a
  backlog drains at most that fast.
- **states**: ``unsent`` → ``inflight`` (published, mid known) → ``sent`` (broker PUBACK) →
  forgotten when the controller confirms it; a lost connection turns ``inflight`` back into
  ``unsent``, in queue order.
- **counting**: each message counts once, per kind, when the broker first takes it (or, if its
  PUBACK was lost, when the controller confirms it): :attr:`SendWindow.counts`.
- **resend**: ``sent`` messages the controller has not confirmed after a while are sent again
  (a broker that crashed before persisting, a lost ack); the wait doubles after every such
  resend, up to ``max_backoff``, and starts again at ``ack_timeout`` when anything is confirmed.

Like :mod:`kioskfleet.agent.transactions` it holds no socket and reads no clock of its own: the
clock is injected, and the agent's I/O glue asks :meth:`SendWindow.due` what to publish, then
reports the mid (:meth:`~SendWindow.published`), the broker's PUBACK
(:meth:`~SendWindow.acknowledged`), the controller's ack (:meth:`~SendWindow.confirm`) and a lost
connection (:meth:`~SendWindow.disconnected`). The fleet simulator runs thousands of windows on
one loop, so every operation on the hot path is O(1) per message.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal, NamedTuple

from kioskfleet.agent.outbox import Entry, Kind

State = Literal["unsent", "inflight", "sent"]
#: (session, seq): what identifies a queued message
Key = tuple[int, int]

#: the longest wait between two resends of unconfirmed messages, in seconds
MAX_BACKOFF = 600.0
#: seqs at most that one ``resend`` command may declare lost (a wild range costs no memory)
MAX_RESEND_RANGE = 100_000


@dataclass(slots=True)
class _Pending:
    entry: Entry
    state: State = "unsent"
    #: clock time of the last publication
    sent_at: float = 0.0
    #: the link's message id while ``inflight``
    mid: int = -1
    counted: bool = False


@dataclass
class SendCounts:
    """Distinct messages the broker acknowledged, per kind (CONTRACT §2 ``simulate`` ``sent``)."""

    telemetry: int = 0
    events: int = 0
    reply: int = 0

    def add(self, kind: Kind) -> None:
        """Count one message of ``kind``."""
        setattr(self, kind, getattr(self, kind) + 1)


class Resent(NamedTuple):
    """What a ``resend`` command achieved."""

    #: messages of the range put back in the queue
    resent: int
    #: seqs of the range this window does not hold (confirmed, dropped, or local state lost)
    missing: list[int]


class SendWindow:
    """The send window of one station (see the module docstring).

    Args:
        window: messages published and not yet acknowledged by the broker, at most.
        max_rate: messages per second a backlog drains at, at most.
        ack_timeout: seconds without the controller's ack before a message is sent again
            (the first back-off step).
        max_backoff: the longest back-off step.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        *,
        window: int,
        max_rate: float,
        ack_timeout: float,
        max_backoff: float = MAX_BACKOFF,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.max_rate = max_rate
        self.ack_timeout = ack_timeout
        self.max_backoff = max_backoff
        self.clock = clock
        #: distinct messages the broker took, per kind
        self.counts = SendCounts()
        # in queue order, which is (session, seq) order: sessions only grow
        self._pending: dict[Key, _Pending] = {}
        # what to publish next; may hold keys that were confirmed or re-sent meanwhile
        self._unsent: deque[Key] = deque()
        self._by_mid: dict[int, Key] = {}
        self._inflight = 0
        self._tokens = float(window)
        self._last_refill = clock()
        self._resend_after = ack_timeout

    def __len__(self) -> int:
        """Messages tracked: queued and not yet confirmed by the controller."""
        return len(self._pending)

    @property
    def inflight(self) -> int:
        """Messages published and not yet acknowledged by the broker."""
        return self._inflight

    @property
    def resend_after(self) -> float:
        """Seconds a ``sent`` message waits for its confirmation before :meth:`resend_overdue`
        sends it again (the current back-off step)."""
        return self._resend_after

    def state(self, session: int, seq: int) -> State | None:
        """Where that message stands; None when it is not tracked (confirmed or never queued)."""
        pending = self._pending.get((session, seq))
        return None if pending is None else pending.state

    # -- queueing ------------------------------------------------------------------------------
    def track(self, entry: Entry) -> None:
        """A message was queued (or found in the outbox at start): send it after the others."""
        key = (entry.session, entry.seq)
        self._pending[key] = _Pending(entry)
        self._unsent.append(key)

    def keep_only(self, alive: Collection[Key]) -> None:
        """Forget every message not in ``alive`` (the outbox bound dropped them)."""
        for key in [k for k in self._pending if k not in alive]:
            del self._pending[key]
        self._unsent = deque(k for k in self._unsent if k in self._pending)

    # -- publishing ----------------------------------------------------------------------------
    def due(self) -> Entry | float | None:
        """What to publish now: the next message; or seconds to wait before asking again (the
        rate limit); or None — nothing to send, or the window is full (a PUBACK reopens it).

        The caller publishes the message and reports :meth:`published`, or :meth:`gone` when
        the outbox no longer holds it, before asking again.
        """
        now = self.clock()
        self._tokens = min(
            float(self.window), self._tokens + (now - self._last_refill) * self.max_rate
        )
        self._last_refill = now
        unsent, pending = self._unsent, self._pending
        while unsent and self._inflight < self.window:
            found = pending.get(unsent[0])
            if found is None or found.state != "unsent":
                unsent.popleft()  # confirmed, or already sent again from elsewhere in the queue
                continue
            if self._tokens < 1:
                return 1 / self.max_rate
            return found.entry
        return None

    def published(self, entry: Entry, mid: int) -> None:
        """The link published ``entry`` (the last :meth:`due`) as message ``mid``."""
        key = (entry.session, entry.seq)
        if self._unsent and self._unsent[0] == key:
            self._unsent.popleft()
        pending = self._pending[key]
        pending.state, pending.sent_at, pending.mid = "inflight", self.clock(), mid
        self._by_mid[mid] = key
        self._inflight += 1
        self._tokens -= 1

    def gone(self, entry: Entry) -> None:
        """The outbox no longer holds ``entry`` (confirmed or dropped meanwhile): forget it."""
        key = (entry.session, entry.seq)
        if self._unsent and self._unsent[0] == key:
            self._unsent.popleft()
        self._pending.pop(key, None)

    def acknowledged(self, mid: int) -> bool:
        """The broker acknowledged message ``mid``. False when it is none of ours (a birth, a
        goodbye, or one published before the last disconnect); True means the window has
        room again."""
        key = self._by_mid.pop(mid, None)
        if key is None:
            return False
        self._inflight -= 1
        pending = self._pending.get(key)
        if pending is not None and pending.state == "inflight":
            pending.state = "sent"
            if not pending.counted:
                pending.counted = True
                self.counts.add(pending.entry.kind)
        return True

    def disconnected(self) -> None:
        """The connection is lost and with it every mid: whatever was in flight goes out again,
        in queue order."""
        self._by_mid.clear()
        self._inflight = 0
        for pending in self._pending.values():
            if pending.state == "inflight":
                pending.state = "unsent"
        self._unsent = deque(k for k, p in self._pending.items() if p.state == "unsent")

    def counted_unconfirmed(self) -> SendCounts:
        """Messages counted (the broker took them) that the controller has not confirmed yet:
        an agent that replaces this one (a restart) sends and counts them again."""
        counts = SendCounts()
        for pending in self._pending.values():
            if pending.counted:
                counts.add(pending.entry.kind)
        return counts

    # -- confirmation and resending ------------------------------------------------------------
    def confirm(self, session: int, seq: int) -> int:
        """The controller stored every message of ``session`` up to ``seq``: forget them (older
        sessions' messages stay until their own ack). Returns how many went."""
        self._resend_after = self.ack_timeout
        done: list[Key] = []
        for key in self._pending:
            if key[0] > session or (key[0] == session and key[1] > seq):
                break
            if key[0] == session:
                done.append(key)
        for key in done:
            pending = self._pending.pop(key)
            if not pending.counted:  # stored by the controller, so the broker took it
                self.counts.add(pending.entry.kind)
            if pending.state == "inflight":
                self._inflight -= 1
                if self._by_mid.get(pending.mid) == key:
                    del self._by_mid[pending.mid]
        return len(done)

    def resend_stale(self, min_age: float) -> int:
        """Queue again, at the front and in order, every message the broker acknowledged more
        than ``min_age`` seconds ago that the controller has not confirmed; returns how many."""
        now = self.clock()
        stale = [
            key
            for key, p in self._pending.items()
            if p.state == "sent" and now - p.sent_at > min_age
        ]
        self._requeue(stale)
        return len(stale)

    def resend_overdue(self) -> int:
        """:meth:`resend_stale` with the current back-off step; after a resend the step doubles
        (up to ``max_backoff``), so a controller that stays away is not flooded."""
        count = self.resend_stale(self._resend_after)
        if count:
            self._resend_after = min(self._resend_after * 2, self.max_backoff)
        return count

    def reset_backoff(self) -> None:
        """Start the back-off again at ``ack_timeout`` (a reconnect, the controller's return)."""
        self._resend_after = self.ack_timeout

    def resend(self, session: int, first: int, last: int) -> Resent:
        """The controller asks for seqs ``first``..``last`` of ``session`` again: queue those
        the broker took, at the front; tell which of them this window no longer holds."""
        keys = [
            k
            for k, p in self._pending.items()
            if k[0] == session and first <= k[1] <= last and p.state == "sent"
        ]
        self._requeue(keys)
        held = {k[1] for k in self._pending if k[0] == session}
        end = min(last, first + MAX_RESEND_RANGE)
        return Resent(len(keys), [seq for seq in range(first, end + 1) if seq not in held])

    def _requeue(self, keys: list[Key]) -> None:
        for key in keys:
            self._pending[key].state = "unsent"
        self._unsent.extendleft(reversed(keys))
