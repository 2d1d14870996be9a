"""The sender against a webhook receiver on loopback that fails for a while and recovers:
retried with back-off, nothing lost, nothing doubled, in order per alert; given up (and
counted) after the horizon; and all of it surviving a sender restart (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import Engine, select

from kioskfleet.controller.alerts import lifecycle
from kioskfleet.controller.alerts.config import Routing
from kioskfleet.controller.alerts.model import Alert
from kioskfleet.controller.db import make_engine, migrate
from kioskfleet.controller.models import Notification
from kioskfleet.controller.notify.config import ReceiversSettings
from kioskfleet.controller.notify.outbox import notifications_for
from kioskfleet.controller.notify.sender import Sender, counts, insert_rows
from kioskfleet.mqttclient import backoff_delay

T0 = 1_800_000_000.0
SECRET = "SECtest-secret"
_N = Notification.__table__  # type: ignore[attr-defined]
ROUTING = Routing(teams={"binhu": ["binhu-tech"]})


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: answers 503 while ``failing``, records what it took."""

    failing: bool = False
    #: (path, body) of every request it accepted, in order
    taken: list[tuple[str, Any]] = field(default_factory=list)
    refused: int = 0
    #: ``/ding`` requests whose signature did not verify
    bad_signatures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            parts = urlsplit(self.path)
            with state.lock:
                if state.failing:
                    state.refused += 1
                    self._answer(503, b"down for maintenance")
                    return
                if parts.path == "/ding" and not _signed(parse_qs(parts.query)):
                    state.bad_signatures += 1
                    self._answer(200, b'{"errcode": 310000, "errmsg": "sign not match"}')
                    return
                state.taken.append((parts.path, body))
            robot = parts.path in ("/ding", "/wecom")
            self._answer(200, b'{"errcode": 0, "errmsg": "ok"}' if robot else b"{}")

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    state.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=state.server.serve_forever, daemon=True)
    thread.start()
    yield state
    state.server.shutdown()
    state.server.server_close()


def _signed(query: dict[str, list[str]]) -> bool:
    """DingTalk's check, as its documentation describes it."""
    if "timestamp" not in query or "sign" not in query or query["access_token"] != ["tok"]:
        return False
    timestamp = query["timestamp"][0]
    digest = hmac.new(SECRET.encode(), f"{timestamp}\n{SECRET}".encode(), hashlib.sha256)
    return hmac.compare_digest(query["sign"][0], base64.b64encode(digest.digest()).decode())


class Clock:
    """The sender's injected time."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    migrate(engine)
    yield engine
    engine.dispose()


def _settings(url: str, fmt: str = "json") -> ReceiversSettings:
    hooks: dict[str, Any] = {"hook": {"url": f"{url}/hook", "format": fmt, "timeout": 5}}
    if fmt == "dingtalk":
        hooks = {"hook": {"url": f"{url}/ding?access_token=tok", "format": fmt, "secret": SECRET}}
    return ReceiversSettings.model_validate({"webhooks": hooks, "teams": {"binhu-tech": ["hook"]}})


def _alert(n: int, t0: float = T0) -> Alert:
    return Alert(
        id=f"a-{n}",
        district="binhu",
        site="市民中心",
        station=f"kiosk-{n:03d}",
        device="printer",
        condition="paper_out",
        severity="critical",
        state="open",
        opened_at=t0,
    )


def _store_lifecycles(
    engine: Engine, settings: ReceiversSettings, alerts: int, t0: float = T0
) -> int:
    """Each alert opened, acknowledged and resolved, stored the way the writer will: the
    rows inserted in the transaction of the change. Returns the number of rows."""
    stored = 0
    with engine.begin() as conn:
        for n in range(alerts):
            opened = lifecycle.opening(_alert(n, t0))
            acked = lifecycle.acknowledge(opened.alert, by="李工", now=t0 + 1)
            resolved = lifecycle.resolve(acked.alert, by="李工", now=t0 + 2)
            for change in (opened, acked, resolved):
                rows = notifications_for(change, settings, ROUTING)
                insert_rows(conn, rows)
                stored += len(rows)
    return stored


def _rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(_N).order_by(_N.c.id)).all())


def _drain(sender: Sender, clock: Clock, *, until: float, step: float = 1.0) -> None:
    """Run passes, moving the clock on by ``step`` whenever a pass had nothing to send."""
    while clock.now < until:
        if sender.run_once() > 0:
            clock.now += step


def _events(receiver: Receiver) -> list[tuple[str, str]]:
    return [(body["id"], body["event"]) for _, body in receiver.taken]


def test_a_receiver_that_fails_then_recovers_gets_everything_once_in_order(
    engine: Engine, receiver: Receiver
) -> None:
    settings = _settings(receiver.url)
    stored = _store_lifecycles(engine, settings, alerts=4)
    assert stored == 12
    clock = Clock()
    sender = Sender(engine, settings, clock=clock, rng=random.Random(7))
    receiver.failing = True
    try:
        _drain(sender, clock, until=T0 + 1800)
        # down for half an hour: the receiver was tried with growing gaps, nothing was taken
        assert receiver.taken == []
        assert 5 <= receiver.refused <= 30
        pending = [r for r in _rows(engine) if r.sent_at is None]
        assert len(pending) == stored
        assert any(r.last_error and "HTTP 503" in r.last_error for r in pending)
        assert max(r.next_attempt_at for r in pending) <= clock.now + 600
        receiver.failing = False
        _drain(sender, clock, until=clock.now + 900)
    finally:
        sender.stop()
    events = _events(receiver)
    assert sorted(events) == sorted(
        (f"a-{n}", kind) for n in range(4) for kind in ("opened", "acknowledged", "resolved")
    )
    for n in range(4):
        assert [k for a, k in events if a == f"a-{n}"] == ["opened", "acknowledged", "resolved"]
    rows = _rows(engine)
    assert all(r.sent_at is not None and r.given_up_at is None for r in rows)
    assert counts(engine) == {}


def test_back_off_doubles_up_to_its_cap_with_jitter() -> None:
    settings = ReceiversSettings()
    policy = settings.retry.policy
    rng = random.Random(1)
    for failures in range(40):
        ceiling = min(600.0, 5.0 * 2**failures)
        delays = [backoff_delay(policy, failures, rng) for _ in range(200)]
        assert all(2.5 <= d <= min(600.0, 2.5 + ceiling) for d in delays)
        if ceiling >= 600.0:
            assert max(delays) > 500  # the cap is reached, not just approached


def test_given_up_after_the_horizon_and_counted(engine: Engine, receiver: Receiver) -> None:
    settings = _settings(receiver.url)
    stored = _store_lifecycles(engine, settings, alerts=2)
    clock = Clock()
    sender = Sender(engine, settings, clock=clock, rng=random.Random(3))
    receiver.failing = True
    attempts_at: list[float] = []
    try:
        while clock.now < T0 + 86400 + 700:
            refused = receiver.refused
            sender.run_once()
            if receiver.refused > refused:
                attempts_at.append(clock.now)
            clock.now += 60
    finally:
        sender.stop()
    rows = _rows(engine)
    assert all(r.given_up_at is not None and r.sent_at is None for r in rows)
    assert all(r.given_up_at >= r.created_at + 86400 for r in rows)
    assert counts(engine) == {"hook": {"pending": 0, "given_up": stored}}
    # tried all day long, never more than the cap (+ one pass) apart
    assert attempts_at[0] == T0
    assert attempts_at[-1] >= T0 + 86400 - 700
    gaps = [b - a for a, b in itertools.pairwise(attempts_at)]
    assert max(gaps) <= 600 + 60
    # a receiver back later gets nothing given up
    receiver.failing = False
    Sender(engine, settings, clock=clock).run_once()
    assert receiver.taken == []


def test_the_outbox_survives_a_sender_restart(engine: Engine, receiver: Receiver) -> None:
    settings = _settings(receiver.url)
    _store_lifecycles(engine, settings, alerts=3)
    clock = Clock()
    first = Sender(engine, settings, clock=clock, rng=random.Random(5), batch=2)
    first.run_once()  # two rows delivered, the rest still waiting
    first.stop()
    assert len(receiver.taken) == 2
    receiver.failing = True
    second = Sender(engine, settings, clock=clock, rng=random.Random(5))
    second.run_once()
    second.stop()
    # another controller process: a fresh engine on the same database
    again = make_engine(str(engine.url.render_as_string(hide_password=False)))
    try:
        receiver.failing = False
        clock.now += 600
        third = Sender(again, settings, clock=clock, rng=random.Random(5))
        _drain(third, clock, until=clock.now + 60)
        third.stop()
    finally:
        again.dispose()
    events = _events(receiver)
    assert len(events) == len(set(events)) == 9
    assert all(r.sent_at is not None for r in _rows(engine))


def test_the_sender_thread_delivers_what_the_writer_stores(
    engine: Engine, receiver: Receiver
) -> None:
    settings = _settings(receiver.url, "dingtalk")
    sender = Sender(engine, settings, poll_interval=0.05)
    sender.start()
    try:
        stored = _store_lifecycles(engine, settings, alerts=2, t0=time.time() - 5)
        sender.wake()
        deadline = time.monotonic() + 20
        while len(receiver.taken) < stored and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        sender.stop()
    assert receiver.bad_signatures == 0
    assert len(receiver.taken) == stored
    assert {path for path, _ in receiver.taken} == {"/ding"}
    assert receiver.taken[0][1]["msgtype"] == "markdown"


def test_a_robot_refusal_in_a_200_is_retried(engine: Engine, receiver: Receiver) -> None:
    settings = _settings(receiver.url, "dingtalk")
    section = settings.model_dump(mode="json")
    section["webhooks"]["hook"]["secret"] = "SECwrong"
    wrong = ReceiversSettings.model_validate(section)
    _store_lifecycles(engine, settings, alerts=1)
    clock = Clock()
    bad = Sender(engine, wrong, clock=clock)
    bad.run_once()
    bad.stop()
    assert receiver.bad_signatures == 1
    [row, *_] = _rows(engine)
    assert row.sent_at is None
    assert "310000" in row.last_error
    # the secret fixed in the configuration: the stored rows go out
    fixed = Sender(engine, settings, clock=clock)
    _drain(fixed, clock, until=clock.now + 120)
    fixed.stop()
    assert len(receiver.taken) == 3


def test_alertmanager_reposts_active_alerts_and_stops_after_the_end(
    engine: Engine, receiver: Receiver
) -> None:
    settings = ReceiversSettings.model_validate(
        {"alertmanagers": {"am": {"url": receiver.url, "repost_interval": 60}}}
    )
    opened = lifecycle.opening(_alert(1))
    with engine.begin() as conn:
        insert_rows(conn, notifications_for(opened, settings, ROUTING))
    clock = Clock()
    sender = Sender(engine, settings, clock=clock)
    try:
        _drain(sender, clock, until=T0 + 300, step=5)
        posts = [body for path, body in receiver.taken if path == "/api/v2/alerts"]
        # the first post, then about one a minute
        assert 4 <= len(posts) <= 6
        assert all(
            "endsAt" not in b[0] and b[0]["startsAt"] == posts[0][0]["startsAt"] for b in posts
        )
        resolved = lifecycle.resolve(opened.alert, by="李工", now=clock.now)
        with engine.begin() as conn:
            insert_rows(conn, notifications_for(resolved, settings, ROUTING))
        _drain(sender, clock, until=clock.now + 600, step=5)
    finally:
        sender.stop()
    after = [body for path, body in receiver.taken][len(posts) :]
    assert len(after) == 1
    assert "endsAt" in after[0][0]


def test_alertmanager_down_during_open_and_resolve_ends_up_ended(
    engine: Engine, receiver: Receiver
) -> None:
    settings = ReceiversSettings.model_validate(
        {"alertmanagers": {"am": {"url": receiver.url, "repost_interval": 60}}}
    )
    opened = lifecycle.opening(_alert(1))
    resolved = lifecycle.resolve(opened.alert, by="李工", now=T0 + 30)
    clock = Clock()
    sender = Sender(engine, settings, clock=clock, rng=random.Random(2))
    receiver.failing = True
    try:
        with engine.begin() as conn:
            insert_rows(conn, notifications_for(opened, settings, ROUTING))
        _drain(sender, clock, until=T0 + 30, step=5)
        with engine.begin() as conn:
            insert_rows(conn, notifications_for(resolved, settings, ROUTING))
        _drain(sender, clock, until=T0 + 900, step=5)
        assert receiver.taken == []
        receiver.failing = False
        _drain(sender, clock, until=T0 + 2400, step=5)
    finally:
        sender.stop()
    # firing, then ended, and nothing after: never a stale "firing" after the end
    bodies = [body for _, body in receiver.taken]
    assert ["endsAt" in b[0] for b in bodies] == [False, True]


def test_old_delivered_rows_are_pruned_pending_ones_kept(
    engine: Engine, receiver: Receiver
) -> None:
    settings = _settings(receiver.url)
    _store_lifecycles(engine, settings, alerts=1)
    clock = Clock()
    sender = Sender(engine, settings, clock=clock)
    _drain(sender, clock, until=T0 + 10)
    assert len(receiver.taken) == 3
    receiver.failing = True
    _store_lifecycles(engine, settings, alerts=1, t0=T0 + 29 * 86400)
    clock.now = T0 + 29 * 86400 + 100
    sender.run_once()
    assert len(_rows(engine)) == 6
    clock.now = T0 + 30 * 86400 + 10
    fresh = Sender(engine, settings, clock=clock)  # prunes at its first pass
    fresh.run_once()
    sender.stop()
    fresh.stop()
    rows = _rows(engine)
    assert len(rows) == 3
    assert all(r.created_at >= T0 + 29 * 86400 and r.sent_at is None for r in rows)
