"""The rollout runner: a thread of the controller process that judges every rollout that may
still change (:mod:`.rollouts`) and publishes the ``install`` commands it created.

The ingest writer writes the stations' progress in the transaction of the batch that carried
it (:mod:`.rollout_progress`) and its batch report names the rollouts concerned; the report
thread hands them to :meth:`RolloutRunner.progressed`, which wakes the runner: a failure is
judged as soon as it is stored, not at the next second. Everything else (start times,
deadlines, stations gone offline) is judged every ``rejudge`` seconds, which also covers a
report lost with a writer that died after its commit. The runner keeps no state of its own
that matters: the rollouts and their stations are in the database, so a restarted controller
goes on where it stopped."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from kioskfleet.controller import rollouts

log = logging.getLogger(__name__)


class RolloutRunner:
    """Runs :meth:`tick` every ``interval`` seconds on its own thread.

    Args:
        engine: the controller's database.
        send_due: publishes the stored commands of those stations that are not offline
            (:meth:`~kioskfleet.controller.service.Controller.send_due`).
        clock: wall-clock seconds.
    """

    def __init__(
        self,
        engine: Engine,
        send_due: Callable[[Collection[str]], int],
        *,
        interval: float = 1.0,
        min_gap: float = 0.25,
        rejudge: float = 10.0,
        sends_per_pass: int = rollouts.SENDS_PER_PASS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.send_due = send_due
        self.interval = interval
        self.min_gap = min_gap
        self.rejudge = rejudge
        self.sends_per_pass = sends_per_pass
        #: when each active rollout was last judged
        self._judged: dict[str, float] = {}
        self.clock = clock
        self._stop = threading.Event()
        #: set when stations reported progress (or to stop): the thread passes at once
        self._wake = threading.Event()
        #: rollouts whose stations' progress the writer wrote since the last pass
        self._reported: set[str] = set()
        self._reported_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.last_error: str | None = None

    def start(self) -> None:
        """Start the thread."""
        self._thread = threading.Thread(target=self._run, name="rollouts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the pass under way."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    def tick(self) -> int:
        """One pass: rollouts judged, commands published; how many stations got an
        ``install``. One pass at a time (the API's actions call it too).

        A rollout is judged when its stations reported (:meth:`progressed`), when it was
        judged more than ``rejudge`` seconds ago (stations going offline, the clock reaching
        its start or deadline), or when it is new to this runner: a rollout of ten thousand
        stations costs its judgement (~0.1 s on SQLite) only then, not every second.
        """
        with self._lock:
            with self._reported_lock:
                touched, self._reported = self._reported, set()
            try:
                sent = self._judge(touched)
            except BaseException:
                self.progressed(touched)  # judged at the next pass, not 10 s later
                raise
        if sent:
            self.send_due(sorted(set(sent)))
        return len(sent)

    def _judge(self, touched: set[str]) -> list[str]:
        """Judge what is due; the stations whose ``install`` to publish."""
        with self.engine.connect() as conn:
            active = rollouts.active_rollouts(conn=conn)
        sent: list[str] = []
        now = self.clock()
        for rollout_id in active:
            last = self._judged.get(rollout_id)
            if rollout_id not in touched and last is not None and now - last < self.rejudge:
                continue
            self._judged[rollout_id] = now
            with self.engine.begin() as conn:
                started = rollouts.step_rollout(
                    conn=conn,
                    rollout_id=rollout_id,
                    now=now,
                    sends_per_pass=self.sends_per_pass,
                )
            if len(started) >= self.sends_per_pass:
                del self._judged[rollout_id]  # more of its wave to start: next pass
            sent += started
        for gone in set(self._judged) - set(active):
            del self._judged[gone]
        return sent

    def progressed(self, rollout_ids: Collection[str]) -> None:
        """The writer committed progress of these rollouts' stations: judge them now. Called
        from ingest's report thread, so it only notes them and wakes the runner's thread."""
        with self._reported_lock:
            self._reported.update(rollout_ids)
        self._wake.set()

    def judge_soon(self, rollout_id: str) -> None:
        """Judge ``rollout_id`` at the next pass (a person acted on it)."""
        with self._lock:
            self._judged.pop(rollout_id, None)

    def _run(self) -> None:
        last = 0.0
        while True:
            self._wake.wait(self.interval)
            # reports come with every batch: at most one pass per ``min_gap`` (a pass over a
            # rollout of ten thousand stations costs ~0.1 s of this process)
            self._stop.wait(max(0.0, last + self.min_gap - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            last = time.monotonic()
            try:
                self.tick()
            except SQLAlchemyError as err:
                if str(err) != self.last_error:
                    log.error("rollouts: a pass failed: %s", err)
                self.last_error = str(err)
                continue
            if self.last_error is not None:
                log.info("rollouts: passes work again")
                self.last_error = None
