"""The transaction state machine: examples, and Hypothesis state-machine invariants."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from kioskfleet.agent.transactions import (
    CURRENCY,
    EscrowPendingError,
    NoEscrowError,
    SessionConflictError,
    SessionEndedError,
    TransactionState,
    UnknownSessionError,
)
from kioskfleet.protocol.messages import Event
from tests.hypothesis_profiles import examples


class Clock:
    """A hand-driven clock."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(clock: Clock | None = None) -> tuple[TransactionState, Clock]:
    clock = clock or Clock()
    counter = itertools.count(1)
    return TransactionState(clock, new_id=lambda: f"s{next(counter)}"), clock


def test_a_cash_in_session_from_start_to_end() -> None:
    state, clock = make()
    assert not state.busy and state.idle_since == clock.now
    session = state.open_cash_in(["cash_acceptor", "coin_acceptor"])
    assert state.busy and state.idle_since is None
    assert state.credit("coin_acceptor", 3, 100) is session
    state.note_escrowed("cash_acceptor", 6, 10000)
    assert session.escrow is not None and session.escrow.value == 10000
    with pytest.raises(EscrowPendingError):
        state.end_cash_in(session.id)
    state.escrow_resolved(session.id, accepted=True)
    state.credit("cash_acceptor", 6, 10000)
    state.note_escrowed("cash_acceptor", 2, 500)
    state.escrow_resolved(session.id, accepted=False)
    clock.advance(30)
    ended = state.end_cash_in(session.id)
    assert (ended.total, ended.returned, ended.end_reason) == (10100, 1, "ended")
    assert not state.busy and state.idle_since == clock.now
    with pytest.raises(SessionEndedError):
        state.end_cash_in(session.id)
    with pytest.raises(SessionEndedError):
        state.escrow_resolved(session.id, accepted=True)
    assert state.take_events() == [
        {
            "type": "transaction",
            "kind": "cash_in",
            "phase": "started",
            "session": "s1",
            "devices": ["cash_acceptor", "coin_acceptor"],
        },
        {
            "type": "transaction",
            "kind": "cash_in",
            "phase": "ended",
            "session": "s1",
            "total": 10100,
            "currency": "CNY",
            "credits": 2,
            "returned": 1,
            "reason": "ended",
        },
    ]
    assert state.take_events() == []


def test_credits_outside_a_session_are_not_attributed() -> None:
    state, _ = make()
    assert state.credit("coin_acceptor", 1, 10) is None
    assert state.note_escrowed("cash_acceptor", 1, 100) is None
    assert not state.busy


def test_devices_belong_to_one_open_session() -> None:
    state, _ = make()
    state.open_cash_in(["cash_acceptor"])
    with pytest.raises(SessionConflictError):
        state.open_cash_in(["coin_acceptor", "cash_acceptor"])
    second = state.open_cash_in(["coin_acceptor"])
    assert state.credit("coin_acceptor", 1, 10) is second
    with pytest.raises(ValueError, match="at least one"):
        state.open_cash_in([])
    with pytest.raises(UnknownSessionError):
        state.session("nope")
    with pytest.raises(ValueError, match="fen"):
        state.credit("coin_acceptor", 1, -5)


def test_a_note_the_device_gives_back_by_itself_is_counted_as_returned() -> None:
    state, _ = make()
    session = state.open_cash_in(["cash_acceptor"])
    state.note_escrowed("cash_acceptor", 4, 2000)
    assert state.note_returned("cash_acceptor") is session
    assert session.escrow is None and session.returned == 1
    assert state.note_returned("cash_acceptor") is None  # nothing held any more
    with pytest.raises(NoEscrowError):
        state.escrow_resolved(session.id, accepted=False)


def test_foreign_currency_is_recorded_but_not_totalled() -> None:
    state, _ = make()
    session = state.open_cash_in(["cash_acceptor"])
    state.credit("cash_acceptor", 1, 500, "HKD")
    state.credit("cash_acceptor", 2, 1000)
    state.end_cash_in(session.id)
    assert session.total == 1000
    assert state.take_events()[-1]["foreign_credits"] == 1


def test_cards_reads_and_receipts_make_the_kiosk_busy() -> None:
    state, clock = make()
    start = state.idle_since
    state.bank_card_accepting("card_reader", True)
    assert not state.busy  # waiting for a card: nothing of the citizen's is inside yet
    state.bank_card_seen("card_reader", True)
    assert state.busy
    state.bank_card_moved("card_reader", "ejected")
    assert state.busy  # in the gate: still ours until taken
    clock.advance(5)
    state.bank_card_seen("card_reader", False)
    assert not state.busy and state.idle_since == clock.now != start
    state.id_read_started()
    state.printing_started()
    state.id_read_finished("ok")
    assert state.busy
    state.printing_finished("ok")
    assert not state.busy
    phases = [(e["kind"], e["phase"]) for e in state.take_events()]
    assert phases == [
        ("bank_card", "inserted"),
        ("bank_card", "ejected"),
        ("bank_card", "removed"),
        ("id_card", "read"),
        ("receipt", "printed"),
    ]
    snapshot = state.snapshot()
    assert snapshot["bank_card"] == {"card_reader": {"inside": False, "accepting": False}}
    assert snapshot["busy"] is False


def test_retaining_a_card_empties_the_reader() -> None:
    state, _ = make()
    state.bank_card_seen("card_reader", True)
    state.bank_card_moved("card_reader", "retained")
    assert not state.busy
    assert [e["phase"] for e in state.take_events()] == ["inserted", "retained", "removed"]


def test_ended_sessions_are_forgotten_beyond_a_bound() -> None:
    counter = itertools.count()
    state = TransactionState(Clock(), new_id=lambda: f"s{next(counter)}", keep_ended=2)
    ids = []
    for _ in range(4):
        session = state.open_cash_in(["coin_acceptor"])
        state.end_cash_in(session.id)
        ids.append(session.id)
    with pytest.raises(UnknownSessionError):
        state.session(ids[0])
    assert state.session(ids[-1]).total == 0


def test_session_ids_never_repeat() -> None:
    ids = iter(["a", "a", "b"])
    state = TransactionState(Clock(), new_id=lambda: next(ids))
    assert state.open_cash_in(["x_acceptor"]).id == "a"
    assert state.open_cash_in(["y_acceptor"]).id == "b"


DEVICES = ("cash_acceptor", "coin_acceptor", "cash_acceptor_2")
PERSONAL = ("测试公民", "320200190001011234", "江苏省无锡市")


class CashInMachine(RuleBasedStateMachine):
    """Random sequences of what devices report and what the application asks."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.state, _ = make(self.clock)
        self.events: list[dict[str, Any]] = []
        #: our own model: session id → credited CNY fen
        self.expected: dict[str, int] = {}
        self.ended: set[str] = set()
        self.busy_work = 0

    def _flush(self) -> None:
        self.events += self.state.take_events()

    @rule(devices=st.lists(st.sampled_from(DEVICES), min_size=1, max_size=3))
    def open_session(self, devices: list[str]) -> None:
        taken = {d for s in self.state.open_sessions() for d in s.devices}
        if taken & set(devices):
            with pytest.raises(SessionConflictError):
                self.state.open_cash_in(devices)
        else:
            session = self.state.open_cash_in(devices)
            self.expected[session.id] = 0
        self._flush()

    @rule(
        device=st.sampled_from(DEVICES),
        channel=st.integers(1, 16),
        value=st.integers(0, 10000),
        currency=st.sampled_from([CURRENCY, CURRENCY, "HKD"]),
    )
    def credit(self, device: str, channel: int, value: int, currency: str) -> None:
        owner = self.state.session_for_device(device)
        got = self.state.credit(device, channel, value, currency)
        assert got is owner
        if owner is not None and currency == CURRENCY:
            self.expected[owner.id] += value

    @rule(device=st.sampled_from(DEVICES), channel=st.integers(1, 16))
    def escrow(self, device: str, channel: int) -> None:
        self.state.note_escrowed(device, channel, channel * 100)

    @rule(device=st.sampled_from(DEVICES))
    def device_returns(self, device: str) -> None:
        self.state.note_returned(device)

    @rule(data=st.data(), accepted=st.booleans())
    def resolve(self, data: st.DataObject, accepted: bool) -> None:
        if not self.expected:
            return
        sid = data.draw(st.sampled_from(sorted(self.expected)))
        session = self.state.session(sid)
        if not session.open:
            with pytest.raises(SessionEndedError):
                self.state.escrow_resolved(sid, accepted=accepted)
        elif session.escrow is None:
            with pytest.raises(NoEscrowError):
                self.state.escrow_resolved(sid, accepted=accepted)
        else:
            returned = session.returned
            self.state.escrow_resolved(sid, accepted=accepted)
            assert session.escrow is None
            assert session.returned == returned + (0 if accepted else 1)

    @rule(data=st.data())
    def end(self, data: st.DataObject) -> None:
        if not self.expected:
            return
        sid = data.draw(st.sampled_from(sorted(self.expected)))
        session = self.state.session(sid)
        if not session.open:
            with pytest.raises(SessionEndedError):  # never twice
                self.state.end_cash_in(sid)
        elif session.escrow is not None:
            with pytest.raises(EscrowPendingError):  # escrow first
                self.state.end_cash_in(sid)
            assert session.open
        else:
            ended = self.state.end_cash_in(sid)
            self.ended.add(sid)
            assert ended.total == self.expected[sid]
        self._flush()

    @rule(seconds=st.floats(0, 100))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def read_starts(self) -> None:
        self.state.id_read_started()
        self.busy_work += 1

    @precondition(lambda self: self.busy_work > 0)
    @rule()
    def read_ends(self) -> None:
        self.state.id_read_finished("ok")
        self.busy_work -= 1

    @rule(present=st.booleans())
    def card(self, present: bool) -> None:
        self.state.bank_card_seen("card_reader", present)

    @invariant()
    def totals_are_the_sum_of_credits(self) -> None:
        for session in self.state.open_sessions():
            cny = sum(c.value for c in session.credits if c.currency == CURRENCY)
            assert session.total == cny == self.expected[session.id]

    @invariant()
    def a_device_serves_at_most_one_open_session(self) -> None:
        owners = [d for s in self.state.open_sessions() for d in s.devices]
        assert len(owners) == len(set(owners))

    @invariant()
    def escrow_belongs_to_a_session_device(self) -> None:
        for session in self.state.open_sessions():
            if session.escrow is not None:
                assert session.escrow.device in session.devices

    @invariant()
    def busy_and_idle_since_agree(self) -> None:
        busy = bool(
            self.state.open_sessions()
            or self.busy_work
            or self.state.snapshot()["bank_card"].get("card_reader", {}).get("inside")
        )
        assert self.state.busy == busy
        assert (self.state.idle_since is None) == busy
        if not busy:
            assert self.state.idle_since is not None
            assert self.state.idle_since <= self.clock.now

    @invariant()
    def ended_sessions_are_announced_once_with_their_total(self) -> None:
        self._flush()
        ended = [e for e in self.events if e["kind"] == "cash_in" and e["phase"] == "ended"]
        assert len(ended) == len({e["session"] for e in ended}) == len(self.ended)
        for event in ended:
            assert event["total"] == self.expected[event["session"]]
            assert event["currency"] == CURRENCY

    @invariant()
    def events_carry_nothing_personal(self) -> None:
        text = json.dumps(self.events, ensure_ascii=False)
        assert not any(p in text for p in PERSONAL)
        allowed = {
            "type",
            "kind",
            "phase",
            "session",
            "devices",
            "device",
            "total",
            "currency",
            "credits",
            "returned",
            "reason",
            "outcome",
            "foreign_credits",
        }
        for event in self.events:
            assert set(event) <= allowed
            Event.model_validate(event)  # valid in an ``events`` message (CONTRACT §3)


CashInMachine.TestCase.settings = settings(
    max_examples=examples(150), stateful_step_count=40, deadline=None
)
TestCashIn = CashInMachine.TestCase
