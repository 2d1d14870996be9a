"""The ingest writer: decodes raw messages, stores them, keeps the fleet's picture.

It is the single writer of fleet state, and it runs either in a thread of the controller or
in a child process of its own (``Settings.writer``). In a process, decoding and storing get
the second core while the controller's process does little more than paho's packet handling;
that is what lets the controller keep pace with the broker (docs/benchmarks.md).

Both ways run the same :func:`run_writer` loop over a pair of channels: requests in
(``("batch", id, [(topic, payload), …])`` or ``None`` to stop), reports out
(``("ready",)``, ``("batch", id, BatchReport)``, ``("sweep", SweepReport)``, ``("error", text)``,
``("stopped",)``). Batches are answered in the order they came, so the MQTT side acknowledges
the broker in arrival order.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol

from kioskfleet.controller.config import AlertsSection
from kioskfleet.controller.db import make_engine
from kioskfleet.controller.retention import apply_retention
from kioskfleet.controller.store import BatchOutcome, FleetStore, StoredMessage
from kioskfleet.protocol.errors import ProtocolError
from kioskfleet.protocol.messages import decode_agent_message, decode_telemetry_record
from kioskfleet.protocol.topics import CONTROLLER_STATE_TOPIC, parse_topic

log = logging.getLogger(__name__)

#: rows folded by one retention step; one step per sweep, so ingest goes on between steps
_RETENTION_CHUNK = 2000


@dataclass(frozen=True)
class WriterConfig:
    """What the writer needs; picklable, so it crosses into a child process."""

    db_url: str
    #: (days kept raw, seconds between retention runs), or None for no retention
    retention: tuple[float, float] | None = None
    sweep_interval: float = 1.0
    #: seconds a gap must be old before the MQTT side asks for it again
    gap_grace: float = 3.0
    tune_gc: bool = True
    #: the ``[alerts]`` section: rules, and the receivers notification rows are stored for
    alerts: AlertsSection = field(default_factory=AlertsSection)
    #: seconds a station stays offline or silent before its alert opens
    offline_alert_after: float = 120.0


@dataclass
class BatchReport:
    """What a committed batch asks the MQTT side to do."""

    outcome: BatchOutcome
    #: (topic, reason, explanation) of each message refused
    rejected: list[tuple[str, str, str]] = field(default_factory=list)
    #: commits that failed (and were retried) before this one succeeded
    db_errors: int = 0
    seconds: float = 0.0


@dataclass
class SweepReport:
    """What a periodic sweep found: status changes and missing seq ranges."""

    changes: list[tuple[str, str, str]] = field(default_factory=list)
    #: (station, session, missing ranges) of gaps older than the grace period
    gaps: list[tuple[str, int, list[tuple[int, int]]]] = field(default_factory=list)
    #: retention rows folded (for the log)
    folded: int = 0


@dataclass
class DecodedBatch:
    """A batch after decoding: the messages to store, in arrival order, and the refused."""

    messages: list[tuple[str, StoredMessage]] = field(default_factory=list)
    #: (topic, reason, explanation) of each message refused
    rejected: list[tuple[str, str, str]] = field(default_factory=list)
    #: seconds spent decoding it
    seconds: float = 0.0


def decode_batch(items: list[tuple[str, bytes]]) -> DecodedBatch:
    """Parse and validate raw ``(topic, payload)`` messages; needs no database."""
    started = time.perf_counter()
    batch = DecodedBatch()
    for topic, payload in items:
        if topic == CONTROLLER_STATE_TOPIC:
            continue  # our own presence, seen through fleet/v1/+/state
        try:
            parsed = parse_topic(topic)
            message: StoredMessage = (
                # telemetry into plain dicts: half the cost of models, stored as they are
                decode_telemetry_record(parsed.station, payload)
                if parsed.kind == "telemetry"
                else decode_agent_message(parsed.kind, parsed.station, payload)
            )
        except ProtocolError as err:
            batch.rejected.append((topic[:200], err.reason, str(err)[:500]))
            continue
        batch.messages.append((parsed.kind, message))
    batch.seconds = time.perf_counter() - started
    return batch


class Writer:
    """Store decoded batches; sweep for silent stations, gaps and old rows."""

    def __init__(self, config: WriterConfig) -> None:
        self.config = config
        self.engine = make_engine(config.db_url)
        self.store = FleetStore(
            self.engine,
            alerts=config.alerts,
            receivers=config.alerts.receivers,
            offline_alert_after=config.offline_alert_after,
        )
        self._next_retention = time.monotonic() + 60.0

    def close(self) -> None:
        self.engine.dispose()

    def store_batch(self, batch: DecodedBatch, stop: threading.Event) -> BatchReport | None:
        """Store a decoded batch in one transaction, retrying while the database is away;
        None when ``stop`` is set before it could be stored."""
        started = time.perf_counter()
        report = BatchReport(BatchOutcome(), rejected=batch.rejected)
        while True:
            try:
                report.outcome = self.store.apply(
                    batch.messages, time.time(), rejected=len(batch.rejected)
                )
                break
            except Exception as err:  # noqa: BLE001 - the database may be away; never drop
                report.db_errors += 1
                log.error("storing a batch failed, retrying in 1 s: %s", err)
                if stop.wait(1.0):
                    return None
        report.seconds = batch.seconds + time.perf_counter() - started
        return report

    def sweep(self) -> SweepReport:
        """Retention (one chunk), gaps due for a resend request, stations turned silent."""
        report = SweepReport()
        report.folded = self._retain()
        now = time.time()
        report.gaps = self.store.gaps(now, min_age=self.config.gap_grace)
        try:
            report.changes = self.store.sweep(now)
        except Exception as err:  # noqa: BLE001 - sweep again once the database is back
            log.error("sweeping for silent stations failed: %s", err)
        return report

    def _retain(self) -> int:
        if self.config.retention is None or time.monotonic() < self._next_retention:
            return 0
        days, every = self.config.retention
        try:
            folded = apply_retention(
                self.engine,
                cutoff=time.time() - days * 86400,
                chunk=_RETENTION_CHUNK,
                max_chunks=1,
            )
        except Exception as err:  # noqa: BLE001 - retention waits for its next turn
            log.error("retention failed: %s", err)
            folded = 0
        if folded < _RETENTION_CHUNK:
            self._next_retention = time.monotonic() + every
        return folded


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for an ingest process.

    Every message allocates a few hundred short-lived objects (decoded models, rows), which
    with CPython's default thresholds (700, 10, 10) starts a young collection every couple of
    messages, and older ones that walk everything the process holds (SQLAlchemy, FastAPI,
    the fleet picture). What is alive after start-up is frozen out of collections and the
    young generation is allowed to grow larger; memory is still reclaimed by reference
    counting, and cycles still get collected, just less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)


# -- channels ----------------------------------------------------------------------------------
class Channel(Protocol):
    """One direction of the writer's conversation."""

    def put(self, item: Any) -> None: ...

    def get(self, timeout: float | None) -> Any:
        """The next item; raises ``queue.Empty`` on timeout, ``EOFError`` when the other end is
        gone."""
        ...


class QueueChannel:
    """A channel inside one process."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Any] = queue.Queue()

    def put(self, item: Any) -> None:
        self._queue.put(item)

    def get(self, timeout: float | None) -> Any:
        return self._queue.get(timeout=timeout)


class PipeChannel:
    """A channel to or from a child process (one end of a pipe)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    def put(self, item: Any) -> None:
        with self._lock:
            self.conn.send(item)

    def get(self, timeout: float | None) -> Any:
        if not self.conn.poll(timeout):
            raise queue.Empty
        return self.conn.recv()


def run_writer(config: WriterConfig, inbox: Channel, outbox: Channel) -> None:
    """The writer's loop: batches in, reports out, a sweep every ``sweep_interval``.

    Two stages: a thread receives and decodes the next batches (pure CPU, no database) while
    this one stores the current batch and waits on its commit, during which the GIL is free —
    the fsync on SQLite, PostgreSQL's own work on the other side of the socket.
    """
    stop = threading.Event()
    try:
        writer = Writer(config)
    except Exception as err:  # noqa: BLE001 - reported to the controller, which exits
        outbox.put(("failed", f"{err.__class__.__name__}: {err}"))
        return
    if config.tune_gc:
        tune_gc()
    #: decoded batches waiting to be stored: (batch id, DecodedBatch), None at the end, or the
    #: exception that ended the decoding stage
    ready: queue.Queue[tuple[int, DecodedBatch] | BaseException | None] = queue.Queue(2)
    decoder = threading.Thread(
        target=_decode_stage, args=(inbox, ready, stop), name="writer-decode", daemon=True
    )
    decoder.start()
    outbox.put(("ready",))
    next_sweep = time.monotonic() + config.sweep_interval
    try:
        while True:
            try:
                item = ready.get(timeout=max(0.0, next_sweep - time.monotonic()))
            except queue.Empty:
                if stop.is_set():
                    return  # asked to stop (or the controller is gone), and all is stored
            else:
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                batch_id, batch = item
                report = writer.store_batch(batch, stop)
                if report is None:
                    return
                outbox.put(("batch", batch_id, report))
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + config.sweep_interval
                outbox.put(("sweep", writer.sweep()))
    finally:
        stop.set()
        decoder.join(5)
        writer.close()
        outbox.put(("stopped",))


def _decode_stage(
    inbox: Channel,
    ready: queue.Queue[tuple[int, DecodedBatch] | BaseException | None],
    stop: threading.Event,
) -> None:
    """Receive and decode batches until asked to stop; a stop request also ends the storing
    stage's retries (what was not committed is not acked, so the broker keeps it)."""

    def offer(item: tuple[int, DecodedBatch] | BaseException | None) -> bool:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                ready.put(item, timeout=0.5)
                return True
        return False

    try:
        while not stop.is_set():
            try:
                request = inbox.get(0.5)
            except queue.Empty:
                continue
            except EOFError:
                request = None  # the controller is gone
            if request is None:
                stop.set()
                # the storing stage may be waiting for a batch: wake it
                with contextlib.suppress(queue.Full):
                    ready.put_nowait(None)
                return
            _, batch_id, items = request
            if not offer((batch_id, decode_batch(items))):
                return
    except BaseException as err:  # noqa: BLE001 - handed to the storing stage, which ends
        offer(err)


def _child_main(
    config: WriterConfig, inbox: Connection, outbox: Connection, parent: int, level: int
) -> None:
    logging.basicConfig(level=level, format="%(asctime)s writer %(levelname)s %(message)s")
    channel = PipeChannel(inbox)

    class _Inbox:
        # the controller may die without a word (kill -9): stop with it
        def get(self, timeout: float | None) -> Any:
            deadline = time.monotonic() + (timeout or 0.0)
            while True:
                if os.getppid() != parent:
                    raise EOFError
                step = min(1.0, max(0.0, deadline - time.monotonic()))
                try:
                    return channel.get(step)
                except queue.Empty:
                    if time.monotonic() >= deadline:
                        raise

        def put(self, item: Any) -> None:  # pragma: no cover - never written to
            raise NotImplementedError

    with contextlib.suppress(EOFError, OSError):  # the controller went away
        run_writer(config, _Inbox(), PipeChannel(outbox))


class WriterHandle:
    """The controller's end of a running writer (thread or child process)."""

    def __init__(self, config: WriterConfig, mode: str = "process") -> None:
        if mode not in ("process", "thread"):
            raise ValueError(f"writer mode must be 'process' or 'thread', not {mode!r}")
        self.mode = mode
        self._process: multiprocessing.process.BaseProcess | None = None
        self._thread: threading.Thread | None = None
        self.inbox: Channel
        self.outbox: Channel
        if mode == "thread":
            self.inbox, self.outbox = QueueChannel(), QueueChannel()
            self._thread = threading.Thread(
                target=run_writer,
                args=(config, self.inbox, self.outbox),
                name="ingest-writer",
                daemon=True,
            )
            self._thread.start()
        else:
            context = multiprocessing.get_context("spawn")
            their_in, our_out = context.Pipe(duplex=False)
            our_in, their_out = context.Pipe(duplex=False)
            self._process = context.Process(
                target=_child_main,
                args=(
                    config,
                    their_in,
                    their_out,
                    os.getpid(),
                    logging.getLogger().getEffectiveLevel(),
                ),
                name="kioskfleet-writer",
                daemon=True,
            )
            self._process.start()
            their_in.close()
            their_out.close()
            self.inbox, self.outbox = PipeChannel(our_out), PipeChannel(our_in)

    def alive(self) -> bool:
        """Whether the writer still runs."""
        if self._process is not None:
            return self._process.is_alive()
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float) -> None:
        """Wait for the writer to end (after it was asked to stop); a child that does not
        end in time is terminated."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self._process is not None:
            self._process.join(timeout)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(5)
