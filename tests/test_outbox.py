"""The agent's durable outbox: sessions, seq stamping, confirmation, the bound."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from kioskfleet.agent.outbox import DroppedRange, OutboxStore


def _build(session: int, seq: int, dropped: list[DroppedRange]) -> bytes:
    return json.dumps(
        {"session": session, "seq": seq, "dropped": [dataclasses.asdict(d) for d in dropped]}
    ).encode()


def test_session_grows_and_never_repeats_even_when_state_is_lost(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "a.db")
    box = store.outbox("wx-binhu-sub-03")
    first = box.new_session(now_ms=1_000)
    second = box.new_session(now_ms=1_000)  # same millisecond: still grows
    assert second == first + 1
    store.close()
    box = OutboxStore(tmp_path / "a.db").outbox("wx-binhu-sub-03")
    assert box.session == second
    assert box.new_session(now_ms=500) == second + 1
    # local state lost: the clock keeps the session ahead of every earlier one
    fresh = OutboxStore(tmp_path / "b.db").outbox("wx-binhu-sub-03")
    assert fresh.new_session() > 1_700_000_000_000


def test_seq_is_stamped_at_queueing_and_survives_restart(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "o.db")
    box = store.outbox("s-001")
    session = box.new_session(now_ms=10)
    entries = [box.enqueue(kind, _build) for kind in ("telemetry", "events", "reply")]
    assert [(e.session, e.seq) for e in entries] == [(session, 1), (session, 2), (session, 3)]
    store.close()
    store = OutboxStore(tmp_path / "o.db")
    box = store.outbox("s-001")
    assert [(e.seq, e.kind) for e in box.entries()] == [
        (1, "telemetry"),
        (2, "events"),
        (3, "reply"),
    ]
    assert json.loads(box.payload(entries[1]) or b"")["seq"] == 2
    # a new session restarts seq at 1; the backlog keeps its old session and seq
    new = box.new_session(now_ms=20)
    assert box.enqueue("telemetry", _build).seq == 1
    assert box.confirm(session, 2) == 2
    assert [(e.session, e.seq) for e in box.entries()] == [(session, 3), (new, 1)]


def test_many_stations_share_one_file(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "fleet.db", synchronous="NORMAL")
    boxes = [store.outbox(f"sim-{n:04d}") for n in range(50)]
    for box in boxes:
        box.new_session(now_ms=5)
        box.enqueue("telemetry", _build)
    assert all(len(box) == 1 for box in boxes)
    assert len(list(tmp_path.iterdir())) <= 3  # the file, its WAL and shared memory


def test_bound_thins_telemetry_first_and_declares_what_it_dropped(tmp_path: Path) -> None:
    box = OutboxStore(tmp_path / "o.db").outbox("s-001", max_messages=10)
    session = box.new_session(now_ms=1)
    box.enqueue("events", _build)  # seq 1: an event is kept
    for _ in range(12):
        box.enqueue("telemetry", _build)
    assert len(box) <= 10
    kinds = {e.seq: e.kind for e in box.entries()}
    assert kinds[1] == "events"
    dropped = sorted(set(range(1, 14)) - set(kinds))
    assert dropped and all(seq > 1 for seq in dropped)
    # the messages queued after each thinning declare exactly what went
    payloads = [json.loads(box.payload(e) or b"") for e in box.entries()]
    declared = {
        s for p in payloads for d in p["dropped"] for s in range(d["from_seq"], d["to_seq"] + 1)
    }
    assert declared == set(dropped)
    assert all(d["session"] == session for p in payloads for d in p["dropped"])
    carriers = [e.seq for e, p in zip(box.entries(), payloads, strict=True) if p["dropped"]]
    # and a message carrying a declaration is never thinned away
    for _ in range(30):
        box.enqueue("telemetry", _build)
    assert set(carriers) <= {e.seq for e in box.entries()}
