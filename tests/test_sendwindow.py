"""The agent's send window: order, window, rate, counting, confirmation, resend, disconnect.

Pure: a hand-driven clock, no broker, no event loop.
"""

from __future__ import annotations

import itertools

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kioskfleet.agent.outbox import Entry, Kind
from kioskfleet.agent.sendwindow import MAX_BACKOFF, SendWindow
from tests.hypothesis_profiles import examples


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(
    *, window: int = 20, max_rate: float = 50.0, ack_timeout: float = 20.0
) -> tuple[SendWindow, Clock]:
    clock = Clock()
    return SendWindow(window=window, max_rate=max_rate, ack_timeout=ack_timeout, clock=clock), clock


def queue(sw: SendWindow, session: int, seqs: range, kind: Kind = "telemetry") -> list[Entry]:
    entries = [Entry(session, seq, kind) for seq in seqs]
    for entry in entries:
        sw.track(entry)
    return entries


class Link:
    """Publishes what the window says is due, like the agent's pump, and remembers mids."""

    def __init__(self, sw: SendWindow) -> None:
        self.sw = sw
        self.mids = itertools.count(1)
        self.mid_of: dict[tuple[int, int], int] = {}
        self.log: list[tuple[int, int]] = []

    def pump(self, limit: int = 1_000_000) -> float | None:
        """Publish until the window says stop; returns its last answer (a delay or None)."""
        for _ in range(limit):
            due = self.sw.due()
            if due is None or isinstance(due, float):
                return due
            mid = next(self.mids)
            self.sw.published(due, mid)
            self.mid_of[(due.session, due.seq)] = mid
            self.log.append((due.session, due.seq))
        return None

    def puback(self, session: int, seq: int) -> bool:
        return self.sw.acknowledged(self.mid_of[(session, seq)])


def test_messages_go_out_in_queue_order() -> None:
    sw, _ = make()
    queue(sw, 7, range(1, 6))
    link = Link(sw)
    assert link.pump() is None
    assert link.log == [(7, 1), (7, 2), (7, 3), (7, 4), (7, 5)]
    assert sw.inflight == 5
    assert [sw.state(7, n) for n in range(1, 6)] == ["inflight"] * 5


def test_the_window_bounds_what_is_in_flight_and_a_puback_reopens_it() -> None:
    sw, clock = make(window=3)
    queue(sw, 1, range(1, 11))
    link = Link(sw)
    assert link.pump() is None
    assert link.log == [(1, 1), (1, 2), (1, 3)]
    assert sw.inflight == 3
    clock.advance(10)  # the bucket is full again: only the window holds them back
    assert link.pump() is None
    assert len(link.log) == 3
    assert link.puback(1, 2)
    assert sw.state(1, 2) == "sent"
    link.pump()
    assert link.log[3:] == [(1, 4)]
    assert sw.inflight == 3


def test_the_rate_limit_paces_a_backlog() -> None:
    sw, clock = make(window=20, max_rate=50.0)
    queue(sw, 1, range(1, 1001))
    link = Link(sw)
    # the broker acknowledges at once, so only the rate limits
    start = clock.now
    while len(link.log) < 1000:
        before = len(link.log)
        due = link.pump()
        for session, seq in link.log[before:]:
            link.puback(session, seq)
        if isinstance(due, float):
            assert due == 1 / 50.0
            clock.advance(due)
    elapsed = clock.now - start
    # a full bucket of 20 goes at once, then 50 per second
    assert 980 / 50 - 0.05 <= elapsed <= 980 / 50 + 0.05


def test_the_bucket_refills_with_time_but_never_beyond_the_window() -> None:
    sw, clock = make(window=5, max_rate=10.0)
    queue(sw, 1, range(1, 101))
    link = Link(sw)

    def burst() -> int:
        before = len(link.log)
        link.pump()
        for session, seq in link.log[before:]:
            link.puback(session, seq)
        return len(link.log) - before

    assert burst() == 5
    assert burst() == 0
    clock.advance(0.1)
    assert burst() == 1
    clock.advance(3600)  # an idle hour saves no more than a window's worth
    assert burst() == 5


def test_a_puback_counts_a_message_once_however_often_it_is_sent() -> None:
    sw, clock = make()
    queue(sw, 1, range(1, 3), kind="events")
    queue(sw, 1, range(3, 4), kind="reply")
    link = Link(sw)
    link.pump()
    for seq in (1, 2, 3):
        assert link.puback(1, seq)
    assert (sw.counts.telemetry, sw.counts.events, sw.counts.reply) == (0, 2, 1)
    clock.advance(30)
    assert sw.resend_stale(20) == 3
    link.pump()
    for seq in (1, 2, 3):
        assert link.puback(1, seq)
    assert (sw.counts.events, sw.counts.reply) == (2, 1)
    sw.confirm(1, 3)
    assert (sw.counts.events, sw.counts.reply) == (2, 1)


def test_a_message_whose_puback_was_lost_counts_when_the_controller_confirms_it() -> None:
    sw, _ = make()
    queue(sw, 1, range(1, 3))
    link = Link(sw)
    link.pump()
    sw.disconnected()  # no PUBACK ever came
    assert sw.counts.telemetry == 0
    assert sw.confirm(1, 2) == 2
    assert sw.counts.telemetry == 2


def test_birth_and_stale_mids_are_not_ours() -> None:
    sw, _ = make()
    queue(sw, 1, range(1, 2))
    link = Link(sw)
    link.pump()
    assert not sw.acknowledged(999)  # a birth's mid
    mid = link.mid_of[(1, 1)]
    sw.disconnected()
    assert not sw.acknowledged(mid)  # from the connection before
    assert sw.counts.telemetry == 0


def test_confirm_forgets_its_own_session_up_to_seq_only() -> None:
    sw, _ = make()
    queue(sw, 1, range(1, 4))  # a backlog of an older session
    queue(sw, 2, range(1, 4))
    link = Link(sw)
    link.pump()
    for key in list(link.mid_of):
        link.puback(*key)
    assert sw.confirm(2, 2) == 2
    assert [sw.state(1, n) for n in (1, 2, 3)] == ["sent"] * 3
    assert [sw.state(2, n) for n in (1, 2, 3)] == [None, None, "sent"]
    assert len(sw) == 4
    assert sw.confirm(1, 5) == 3  # beyond what was queued: everything of that session
    assert sw.confirm(1, 5) == 0
    assert len(sw) == 1


def test_confirming_a_message_in_flight_frees_its_slot_and_ignores_its_late_puback() -> None:
    sw, clock = make(window=2)
    queue(sw, 1, range(1, 5))
    link = Link(sw)
    link.pump()
    assert sw.inflight == 2
    assert sw.confirm(1, 1) == 1
    assert sw.inflight == 1
    assert not link.puback(1, 1)  # already gone
    assert sw.counts.telemetry == 1  # counted by the confirmation, once
    clock.advance(1)
    link.pump()
    assert link.log == [(1, 1), (1, 2), (1, 3)]


def test_stale_messages_are_sent_again_first_and_in_order() -> None:
    sw, clock = make(window=10)
    queue(sw, 1, range(1, 4))
    link = Link(sw)
    link.pump()
    for seq in (1, 2, 3):
        link.puback(1, seq)
    queue(sw, 1, range(4, 6))  # newer, not sent yet
    # the window is open again but the newer ones have not been pumped yet
    clock.advance(10)
    assert sw.resend_stale(20) == 0
    clock.advance(11)
    assert sw.resend_stale(20) == 3
    link.log.clear()
    link.pump()
    assert link.log == [(1, 1), (1, 2), (1, 3), (1, 4), (1, 5)]


def test_only_messages_the_broker_took_are_stale() -> None:
    sw, clock = make()
    queue(sw, 1, range(1, 3))
    link = Link(sw)
    link.pump()
    link.puback(1, 1)  # (1, 2) stays in flight: the window waits for its PUBACK, not a resend
    clock.advance(100)
    assert sw.resend_stale(20) == 1
    assert sw.state(1, 2) == "inflight"


def test_resend_backs_off_doubling_and_starts_again_on_confirmation() -> None:
    sw, clock = make(ack_timeout=20.0)
    queue(sw, 1, range(1, 3))
    link = Link(sw)

    def send_and_wait(seconds: float) -> int:
        link.pump()
        for seq in (1, 2):
            if sw.state(1, seq) == "inflight":
                link.puback(1, seq)
        clock.advance(seconds)
        return sw.resend_overdue()

    assert sw.resend_after == 20.0
    assert send_and_wait(19) == 0
    assert send_and_wait(2) == 2  # 21 s old
    assert sw.resend_after == 40.0
    assert send_and_wait(39) == 0
    assert send_and_wait(2) == 2
    assert sw.resend_after == 80.0
    for _ in range(10):
        send_and_wait(sw.resend_after + 1)
    assert sw.resend_after == MAX_BACKOFF
    sw.confirm(1, 1)  # anything confirmed: the controller is there again
    assert sw.resend_after == 20.0
    send_and_wait(21)
    assert sw.resend_after == 40.0
    sw.reset_backoff()
    assert sw.resend_after == 20.0


def test_disconnect_returns_what_was_in_flight_in_queue_order() -> None:
    sw, clock = make(window=4)
    queue(sw, 1, range(1, 7))
    link = Link(sw)
    link.pump()
    link.puback(1, 2)  # sent: stays sent, waits for the controller
    sw.disconnected()
    assert sw.inflight == 0
    assert [sw.state(1, n) for n in range(1, 7)] == ["unsent", "sent"] + ["unsent"] * 4
    clock.advance(1)
    link.log.clear()
    link.pump()
    assert link.log == [(1, 1), (1, 3), (1, 4), (1, 5)]


def test_forgets_messages_the_outbox_dropped_or_no_longer_holds() -> None:
    sw, _ = make(window=2)
    entries = queue(sw, 1, range(1, 7))
    sw.keep_only({(1, 1), (1, 4), (1, 6)})
    assert len(sw) == 3
    link = Link(sw)
    due = sw.due()
    assert due == entries[0]
    sw.gone(entries[0])  # confirmed meanwhile: the outbox has no payload for it
    link.pump()
    assert link.log == [(1, 4), (1, 6)]
    assert len(sw) == 2


def test_a_resend_command_requeues_what_the_broker_took_and_names_what_is_missing() -> None:
    sw, _ = make()
    queue(sw, 5, range(3, 8))
    link = Link(sw)
    link.pump(limit=4)  # 3..6 in flight
    for seq in (3, 4, 5):
        link.puback(5, seq)
    outcome = sw.resend(5, 1, 6)
    assert outcome.resent == 3  # 6 is in flight, 7 unsent: neither needs resending
    assert outcome.missing == [1, 2]
    link.log.clear()
    link.pump()
    assert link.log == [(5, 3), (5, 4), (5, 5), (5, 7)]
    huge = sw.resend(5, 10, 10**12)  # a wild range costs no memory
    assert huge.resent == 0 and len(huge.missing) == 100_001


class SendWindowMachine(RuleBasedStateMachine):
    """Random queueing, pumping, PUBACKs, acks, resends and disconnects keep the invariants."""

    def __init__(self) -> None:
        super().__init__()
        self.sw, self.clock = make(window=4, max_rate=100.0, ack_timeout=5.0)
        self.link = Link(self.sw)
        self.session, self.next_seq = 1, 1
        self.inflight_mids: dict[int, tuple[int, int]] = {}
        self.acked: set[tuple[int, int]] = set()  # PUBACKed or confirmed, each counts once
        self.confirmed: set[tuple[int, int]] = set()
        self.queued: list[tuple[int, int]] = []

    @rule(n=st.integers(1, 5))
    def enqueue(self, n: int) -> None:
        for _ in range(n):
            self.sw.track(Entry(self.session, self.next_seq, "telemetry"))
            self.queued.append((self.session, self.next_seq))
            self.next_seq += 1

    @rule()
    def new_session(self) -> None:
        self.session += 1
        self.next_seq = 1

    @rule()
    def pump(self) -> None:
        before = len(self.link.log)
        self.link.pump()
        for key in self.link.log[before:]:
            self.inflight_mids[self.link.mid_of[key]] = key

    @precondition(lambda self: self.inflight_mids)
    @rule(data=st.data())
    def puback(self, data: st.DataObject) -> None:
        mid = data.draw(st.sampled_from(sorted(self.inflight_mids)))
        key = self.inflight_mids.pop(mid)
        if self.sw.acknowledged(mid) and key not in self.confirmed:
            self.acked.add(key)

    @precondition(lambda self: self.queued)
    @rule(data=st.data())
    def confirm(self, data: st.DataObject) -> None:
        session, seq = data.draw(st.sampled_from(self.queued))
        self.sw.confirm(session, seq)
        done = {k for k in self.queued if k[0] == session and k[1] <= seq}
        self.acked |= done - self.confirmed
        self.confirmed |= done

    @rule(seconds=st.floats(0, 30))
    def wait_and_resend(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.sw.resend_overdue()

    @rule()
    def disconnect(self) -> None:
        self.sw.disconnected()
        self.inflight_mids.clear()

    @invariant()
    def window_is_bounded(self) -> None:
        assert 0 <= self.sw.inflight <= 4

    @invariant()
    def each_message_counts_once(self) -> None:
        assert self.sw.counts.telemetry == len(self.acked)

    @invariant()
    def only_unconfirmed_messages_are_held(self) -> None:
        assert len(self.sw) == len(set(self.queued) - self.confirmed)

    @invariant()
    def first_publications_follow_queue_order(self) -> None:
        first: list[tuple[int, int]] = list(dict.fromkeys(self.link.log))
        assert first == sorted(first)


TestSendWindowMachine = SendWindowMachine.TestCase
TestSendWindowMachine.settings = settings(
    max_examples=examples(60), stateful_step_count=40, deadline=None
)
