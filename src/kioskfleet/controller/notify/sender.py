"""The sender: delivers the outbox (``notification`` rows) to webhooks and Alertmanagers.

It runs in the controller process on a thread of its own, never in the writer: the writer only
inserts rows, so it never waits for a receiver. All its state that matters is the table, so a
restart loses nothing: a row is sent (``sent_at``), still to send (``next_attempt_at``), or
given up (``given_up_at``, counted in the ``counter`` table).

- **At least once, in order**: a row is marked sent after its receiver took it, so a crash in
  between sends it again. One alert's rows to one receiver go in the order they were stored
  (a row waits while an older one for the same alert and receiver is pending), so a receiver
  never hears "resolved" before "opened", and Alertmanager never gets a stale "firing" after
  the end.
- **Back-off per receiver**: a failure delays that receiver's next attempt (doubling from
  ``retry.first_delay`` up to ``retry.max_delay``, full jitter, :func:`~kioskfleet.mqttclient.
  backoff_delay`); the other receivers go on. A row still undelivered ``retry.give_up_after``
  (at least 24 h) after it was stored is given up.
- **Alertmanager**: every alert whose last posted state is firing is posted again every
  ``repost_interval`` (within its ``resolve_timeout``); the repost is an outbox row too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Final
from urllib.parse import quote_plus

import httpx
from sqlalchemy import Connection, Engine, and_, delete, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from kioskfleet.controller.models import Counter, Notification
from kioskfleet.controller.notify.config import Alertmanager, ReceiversSettings, Webhook
from kioskfleet.controller.notify.formats import firing
from kioskfleet.controller.notify.outbox import NotificationRow
from kioskfleet.mqttclient import backoff_delay

log = logging.getLogger(__name__)

_N = Notification.__table__  # type: ignore[attr-defined]
_C = Counter.__table__  # type: ignore[attr-defined]
#: counter row of a receiver's given-up notifications: ``notify_given_up:<receiver>``
GIVEN_UP_PREFIX: Final = "notify_given_up:"
#: kinds after which Alertmanager holds nothing for the alert
_ENDED: Final = ("resolved", "suppressed")
_PRUNE_EVERY: Final = 3600.0


class DeliveryError(Exception):
    """A receiver did not take a notification (to retry)."""


def dingtalk_signed(url: str, secret: str, now: float) -> str:
    """``url`` with DingTalk's ``timestamp`` (ms) and ``sign``: base64 of HMAC-SHA256 over
    ``"{timestamp}\\n{secret}"`` keyed with the secret, URL-encoded (DingTalk's 加签)."""
    timestamp = str(round(now * 1000))
    digest = hmac.new(
        secret.encode(), f"{timestamp}\n{secret}".encode(), digestmod=hashlib.sha256
    ).digest()
    sign = quote_plus(base64.b64encode(digest).decode())
    return f"{url}{'&' if '?' in url else '?'}timestamp={timestamp}&sign={sign}"


def _pending(conn: Connection) -> Any:
    """(receiver, count) of notifications still to send."""
    return conn.execute(
        select(_N.c.receiver, func.count())
        .where(_N.c.sent_at.is_(None), _N.c.given_up_at.is_(None))
        .group_by(_N.c.receiver)
    ).all()


def counts(engine: Engine) -> dict[str, dict[str, int]]:
    """Per receiver: ``pending`` (still to send) and ``given_up`` (ever, across restarts and
    pruning) — for ``/metrics`` (a gauge and a counter)."""
    out: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        for receiver, n in _pending(conn):
            out.setdefault(receiver, {"pending": 0, "given_up": 0})["pending"] = int(n)
        rows = conn.execute(
            select(_C.c.name, _C.c.value).where(_C.c.name.startswith(GIVEN_UP_PREFIX))
        ).all()
        for name, value in rows:
            receiver = name.removeprefix(GIVEN_UP_PREFIX)
            out.setdefault(receiver, {"pending": 0, "given_up": 0})["given_up"] = int(value)
    return out


class Sender:
    """Delivers the outbox. :meth:`start` runs it on a thread; :meth:`run_once` is one pass
    (what the thread repeats), for tests with an injected ``clock``.

    Args:
        clock: Unix seconds now (time.time); decides what is due, the back-off and giving up.
        rng: the back-off's jitter.
        client: the HTTP client (one is made, and closed by :meth:`stop`, when None).
        poll_interval: seconds between passes when nothing was sent.
        batch: rows tried per pass at most.
    """

    def __init__(
        self,
        engine: Engine,
        receivers: ReceiversSettings,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        client: httpx.Client | None = None,
        poll_interval: float = 1.0,
        batch: int = 50,
    ) -> None:
        self.engine = engine
        self.receivers = receivers
        self.clock = clock
        self.rng = rng or random.Random()
        self._own_client = client is None
        self.client = client or httpx.Client(headers={"User-Agent": "kioskfleet-controller"})
        self.poll_interval = poll_interval
        self.batch = batch
        #: receiver → failures in a row, and until when it is left alone (in memory: after a
        #: restart each receiver is tried at once, then backs off again)
        self._failures: dict[str, int] = {}
        self._blocked_until: dict[str, float] = {}
        self._last_repost_scan: dict[str, float] = {}
        self._last_prune = float("-inf")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the thread -------------------------------------------------------------------------

    def start(self) -> None:
        """Run passes on a daemon thread until :meth:`stop`."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="notify-sender", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Start the next pass now (new rows were stored)."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the POST in hand, stop the thread, close the client we made."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._own_client:
            self.client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                delay = self.run_once()
            except SQLAlchemyError as err:
                # the database is away: nothing can be sent or recorded; try again shortly
                log.warning("notification sender: database error: %s", err)
                delay = 5.0
            self._wake.wait(delay)
            self._wake.clear()

    # --- one pass ---------------------------------------------------------------------------

    def run_once(self) -> float:
        """Give up what is too old, queue Alertmanager reposts, send what is due. Returns
        the seconds to wait before the next pass (0: more may be due now)."""
        now = self.clock()
        self._give_up(now)
        self._queue_reposts(now)
        if now - self._last_prune >= _PRUNE_EVERY:
            self._prune(now)
            self._last_prune = now
        tried = 0
        for row in self._due(now):
            if self._stop.is_set():
                break
            if self._blocked_until.get(row.receiver, float("-inf")) > self.clock():
                continue
            tried += 1
            self._attempt(row)
        return 0.0 if tried else self.poll_interval

    def _configured(self) -> list[str]:
        return [*self.receivers.webhooks, *self.receivers.alertmanagers]

    def _due(self, now: float) -> list[Any]:
        ready = [
            name
            for name in self._configured()
            if self._blocked_until.get(name, float("-inf")) <= now
        ]
        if not ready:
            return []
        older_t = _N.alias("older")
        ahead = (
            select(older_t.c.id)
            .where(
                older_t.c.receiver == _N.c.receiver,
                older_t.c.alert_id == _N.c.alert_id,
                older_t.c.id < _N.c.id,
                older_t.c.sent_at.is_(None),
                older_t.c.given_up_at.is_(None),
            )
            .exists()
        )
        query = (
            select(_N.c.id, _N.c.receiver, _N.c.kind, _N.c.payload, _N.c.attempts)
            .where(
                _N.c.sent_at.is_(None),
                _N.c.given_up_at.is_(None),
                _N.c.next_attempt_at <= now,
                _N.c.receiver.in_(ready),
                ~ahead,
            )
            .order_by(_N.c.next_attempt_at, _N.c.id)
            .limit(self.batch)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(query).all())

    def _attempt(self, row: Any) -> None:
        try:
            self._post(row.receiver, row.payload)
        except DeliveryError as err:
            failures = self._failures.get(row.receiver, 0)
            self._failures[row.receiver] = failures + 1
            now = self.clock()
            retry_at = now + backoff_delay(self.receivers.retry.policy, failures, self.rng)
            self._blocked_until[row.receiver] = retry_at
            log.info(
                "notification %s to %s failed (attempt %d): %s",
                row.id,
                row.receiver,
                row.attempts + 1,
                err,
            )
            with self.engine.begin() as conn:
                conn.execute(
                    update(_N)
                    .where(_N.c.id == row.id, _N.c.sent_at.is_(None))
                    .values(
                        attempts=_N.c.attempts + 1,
                        last_error=str(err)[:500],
                        next_attempt_at=retry_at,
                    )
                )
            return
        self._failures.pop(row.receiver, None)
        self._blocked_until.pop(row.receiver, None)
        with self.engine.begin() as conn:
            conn.execute(
                update(_N)
                .where(_N.c.id == row.id, _N.c.sent_at.is_(None))
                .values(attempts=_N.c.attempts + 1, sent_at=self.clock())
            )

    def _post(self, receiver: str, payload: Any) -> None:
        """POST ``payload`` to ``receiver``.

        Raises:
            DeliveryError: no answer, not 2xx, or a robot's ``errcode`` other than 0.
        """
        webhook = self.receivers.webhooks.get(receiver)
        target: Webhook | Alertmanager
        if webhook is not None:
            target = webhook
            url = webhook.url
            if webhook.format == "dingtalk" and webhook.secret is not None:
                url = dingtalk_signed(url, webhook.secret.get_secret_value(), self.clock())
        else:
            target = self.receivers.alertmanagers[receiver]
            url = target.alerts_url
        try:
            response = self.client.post(url, json=payload, timeout=target.timeout)
        except httpx.HTTPError as err:
            raise DeliveryError(f"{type(err).__name__}: {err}") from err
        if not response.is_success:
            raise DeliveryError(f"HTTP {response.status_code}: {response.text[:200]}")
        if webhook is not None and webhook.format in ("wecom", "dingtalk"):
            # the robots answer 200 with an error code in the body (bad key, rate limit, …)
            try:
                answer = response.json()
            except ValueError as err:
                raise DeliveryError(f"not JSON: {response.text[:200]}") from err
            if not isinstance(answer, dict) or answer.get("errcode") != 0:
                raise DeliveryError(f"robot refused: {response.text[:200]}")

    def _give_up(self, now: float) -> None:
        cutoff = now - self.receivers.retry.give_up_after
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(_N.c.id, _N.c.receiver).where(
                    _N.c.sent_at.is_(None),
                    _N.c.given_up_at.is_(None),
                    _N.c.created_at <= cutoff,
                )
            ).all()
            if not rows:
                return
            conn.execute(
                update(_N).where(_N.c.id.in_([r.id for r in rows])).values(given_up_at=now)
            )
            per: dict[str, int] = {}
            for row in rows:
                per[row.receiver] = per.get(row.receiver, 0) + 1
            for receiver, n in per.items():
                _add(conn, GIVEN_UP_PREFIX + receiver, n)
        log.warning("notifications given up after %.0f s: %s", now - cutoff, per)

    def _queue_reposts(self, now: float) -> None:
        for name, am in self.receivers.alertmanagers.items():
            # scanning is cheap but not free: a few times per interval keeps every repost
            # within 1.25 intervals of the last post, well inside the resolve timeout
            if now - self._last_repost_scan.get(name, float("-inf")) < am.repost_interval / 4:
                continue
            self._last_repost_scan[name] = now
            self._repost(name, now - am.repost_interval, now)

    def _repost(self, receiver: str, cutoff: float, now: float) -> None:
        latest = select(func.max(_N.c.id)).where(_N.c.receiver == receiver).group_by(_N.c.alert_id)
        last_done = func.coalesce(_N.c.sent_at, _N.c.given_up_at)
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(_N.c.alert_id, _N.c.payload).where(
                    _N.c.id.in_(latest),
                    _N.c.kind.not_in(_ENDED),
                    last_done.is_not(None),
                    last_done <= cutoff,
                )
            ).all()
            values = [
                {
                    "alert_id": row.alert_id,
                    "kind": "reposted",
                    "receiver": receiver,
                    "payload": firing(row.payload),
                    "created_at": now,
                    "next_attempt_at": now,
                    "attempts": 0,
                }
                for row in rows
                if firing(row.payload)
            ]
            if values:
                conn.execute(insert(_N), values)

    def _prune(self, now: float) -> None:
        cutoff = now - self.receivers.keep_days * 86400.0
        with self.engine.begin() as conn:
            conn.execute(
                delete(_N).where(
                    _N.c.created_at < cutoff,
                    ~and_(_N.c.sent_at.is_(None), _N.c.given_up_at.is_(None)),
                )
            )


def _add(conn: Connection, name: str, n: int) -> None:
    """counter[name] += n (only the sender writes these names)."""
    done = conn.execute(update(_C).where(_C.c.name == name).values(value=_C.c.value + n))
    if done.rowcount == 0:
        conn.execute(insert(_C).values(name=name, value=n))


def insert_rows(conn: Connection, rows: Iterable[NotificationRow]) -> None:
    """Insert outbox rows in the caller's transaction (the writer's, with the alert
    change)."""
    values = [row.values() for row in rows]
    if values:
        conn.execute(insert(_N), values)
