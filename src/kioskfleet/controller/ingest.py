"""MQTT ingest: receive, hand to the writer in batches, confirm after the commit.

paho runs its own network thread; ``on_message`` only queues. A forwarder thread cuts the
queue into batches and hands them, raw, to the writer (:mod:`kioskfleet.controller.writer`,
a child process by default), which decodes, validates and stores each batch in one
transaction. Only when the writer reports a batch committed does the MQTT side send the
broker its PUBACKs (paho manual ack, in arrival order) and the stations their ``ack`` (at
most once a second per station session). The broker keeps our persistent session, so
whatever was not acked when we died is delivered again — and stored once, thanks to the seq
ledgers.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from kioskfleet.controller.metrics import Metrics
from kioskfleet.controller.store import BatchOutcome
from kioskfleet.controller.writer import (
    BatchReport,
    SweepReport,
    WriterConfig,
    WriterHandle,
    tune_gc,
)
from kioskfleet.mqttclient import (
    MqttClientFactory,
    ReconnectPolicy,
    SessionPolicy,
    TlsFiles,
    puback_all,
    share_property_tables,
)
from kioskfleet.protocol.broker_url import BrokerUrl
from kioskfleet.protocol.topics import (
    CONTROLLER_STATE_TOPIC,
    ack_topic,
    cmd_topic,
    subscriptions_for_controller,
)

log = logging.getLogger(__name__)

_REBIRTH_EVERY = 30.0  # seconds between birth requests to the same station
_RESEND_EVERY = 15.0  # seconds between resend requests for the same station session
_RANGES_PER_REQUEST = 8
#: batches handed to the writer and not yet committed; beyond this the forwarder waits, the
#: queue fills, paho stops reading and the broker holds the rest (backpressure)
_BATCHES_IN_FLIGHT = 6


#: messages received and not yet handed to the writer before paho's thread waits: the
#: broker's flow control (Receive Maximum, or its max_inflight_messages for MQTT 3.1.1) keeps
#: QoS 1 below this anyway; it bounds what QoS 0 deliveries could pile up
_MAX_WAITING = 20_000


class _Incoming:
    """Received messages waiting to be handed to the writer, in arrival order.

    paho's thread appends one tuple per message (no lock, no wake-up: ``deque.append`` is
    atomic), the forwarder is woken once per batch at most: a ``queue.Queue`` cost a lock
    and a condition per message on both sides, in the process that must keep pace with
    the broker."""

    def __init__(self) -> None:
        #: (topic, payload, mid, qos, generation: which connection delivered it)
        self.items: deque[tuple[str, bytes, int, int, int]] = deque()
        self._wake = threading.Condition()
        #: how many waiting items are worth waking the forwarder for (or holding paho back)
        self.wanted = _MAX_WAITING

    def put(self, item: tuple[str, bytes, int, int, int], stop: threading.Event) -> None:
        items = self.items
        items.append(item)
        if len(items) >= self.wanted:
            with self._wake:
                self._wake.notify_all()
                # the writer falls behind: paho stops reading, the broker holds the rest
                while len(items) >= _MAX_WAITING and not stop.is_set():
                    self._wake.wait(0.5)

    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def wait_for(self, count: int, timeout: float) -> None:
        """Wait until ``count`` items are waiting, or ``timeout``."""
        if len(self.items) >= count:
            return
        deadline = time.monotonic() + timeout
        with self._wake:
            # set before the length is read: an append after that reading sees it and
            # notifies (once this wait released the lock)
            self.wanted = count
            try:
                while len(self.items) < count:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self._wake.wait(left)
            finally:
                self.wanted = _MAX_WAITING

    def take(self, count: int) -> list[tuple[str, bytes, int, int, int]]:
        items, popleft = self.items, self.items.popleft
        taken = [popleft() for _ in range(min(count, len(items)))]
        if len(items) < _MAX_WAITING // 2:
            self.wake()  # a paho thread held back may go on
        return taken


class Ingest:
    """The controller's MQTT side.

    Args:
        writer: where and how batches are stored (database, retention, sweeps).
        broker: broker URL.
        client_id: stable id (the broker keeps this session's queue while we restart).
        metrics: Prometheus instruments.
        writer_mode: ``process`` (the writer gets a process, and a core, of its own) or
            ``thread``.
        tls: certificate files for an ``mqtts://`` broker (system CAs, no client certificate
            when None).

    Raises:
        MqttConfigError: unusable TLS files.
    """

    def __init__(
        self,
        writer: WriterConfig,
        *,
        broker: BrokerUrl,
        client_id: str,
        metrics: Metrics,
        session_expiry: int = 7 * 24 * 3600,
        batch_size: int = 1000,
        ack_interval: float = 1.0,
        batch_linger: float = 0.05,
        writer_mode: str = "process",
        on_changes: Callable[[list[tuple[str, str, str]]], None] | None = None,
        on_rollouts: Callable[[frozenset[str]], None] | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.writer_config = writer
        self.writer_mode = writer_mode
        self.broker = broker
        self.client_id = client_id
        self.metrics = metrics
        self.session_expiry = session_expiry
        self.batch_size = batch_size
        self.ack_interval = ack_interval
        #: seconds a batch waits for more messages after its first one
        self.batch_linger = batch_linger
        self._on_changes = on_changes
        #: told which rollouts' stations a committed batch moved (the rollout runner)
        self._on_rollouts = on_rollouts
        self._incoming = _Incoming()
        # a persistent session: the broker queues for the one consumer that must not miss
        # anything (docs/decisions.md 5); at most Receive Maximum unacked messages in flight to
        # us, the broker keeps the rest: the batches in the writer plus the one filling
        # (Mosquitto honours this for MQTT 5 clients in place of its max_inflight_messages,
        # docs/decisions.md 18). paho's network thread reconnects by itself.
        self._factory = MqttClientFactory(
            broker,
            client_id=client_id,
            keepalive=30,
            session=SessionPolicy(
                clean=False,
                expiry=session_expiry,
                receive_maximum=min(65535, max(2000, (_BATCHES_IN_FLIGHT + 1) * batch_size)),
            ),
            tls=tls,
            manual_ack=True,
            max_inflight=1000,
            paho_reconnects=ReconnectPolicy(1, 30),
            read_ahead=True,
        )
        self._client = self._build()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acks: dict[tuple[str, int], int] = {}
        self._acks_lock = threading.Lock()
        self._rebirth_at: dict[str, float] = {}
        self._resend_at: dict[tuple[str, int], float] = {}
        self._logged: set[tuple[str, str]] = set()
        self.connected = threading.Event()
        #: set once the writer has loaded the fleet and takes batches
        self.writer_ready = threading.Event()
        self.last_error: str | None = None
        self.writer_error: str | None = None
        self._connack = False
        self._warned: str | None = None
        self._falling_back = False
        self._generation = 0
        self._writer: WriterHandle | None = None
        self._mqtt_started = False
        self._suback_pending: set[int] = set()
        #: batch id → (raw items, (mid, qos, generation) of each), in the order handed over
        self._inflight: OrderedDict[int, tuple[list[tuple[str, bytes]], list[tuple[int, int, int]]]]
        self._inflight = OrderedDict()
        self._inflight_lock = threading.Lock()
        #: orders hand-overs to the writer (and a restarted writer's catching up)
        self._send_lock = threading.Lock()
        self._slots = threading.Semaphore(_BATCHES_IN_FLIGHT)
        self._ids = itertools.count(1)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the writer; once it is ready, connect (retrying in the background)."""
        self._writer = WriterHandle(self.writer_config, self.writer_mode)
        # paho builds its MQTT 5 property tables anew for every PUBLISH: half of what bare
        # paho spends per telemetry message (docs/benchmarks.md); built once here
        share_property_tables()
        if self.writer_mode == "process" and self.writer_config.tune_gc:
            # paho allocates a handful of objects per message here too: the controller's
            # process (FastAPI, SQLAlchemy, the API's models) is as costly to walk as the
            # writer's (a thread writer tunes this process itself)
            tune_gc()
        # the MQTT session starts once the writer is ready (see _reports): nothing piles up
        for name, target in (
            ("ingest-forward", self._forward),
            ("ingest-reports", self._reports),
            ("ingest-acks", self._ack_loop),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Store what is queued, say offline, disconnect, stop the writer."""
        self._stop.set()
        self._incoming.wake()
        for thread in self._threads:
            thread.join(timeout=15)
        self._flush_acks()
        if self.connected.is_set():
            info = self._client.publish(
                CONTROLLER_STATE_TOPIC, self._presence(False), qos=1, retain=True
            )
            info.wait_for_publish(timeout=2)
        if self._mqtt_started:
            self._client.disconnect()
            self._client.loop_stop()
        if self._writer is not None:
            self._writer.join(10)

    @property
    def writer_ok(self) -> bool:
        """The writer runs and has loaded the fleet."""
        return self.writer_ready.is_set() and self._writer is not None and self._writer.alive()

    # -- paho ----------------------------------------------------------------------------------
    def _build(self) -> mqtt.Client:
        client = self._factory.build(will=(CONTROLLER_STATE_TOPIC, self._presence(False)))
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _connect_async(self) -> None:
        self._factory.connect(self._client, background=True)

    @staticmethod
    def _presence(online: bool) -> bytes:
        return json.dumps({"online": online, "ts": time.time()}).encode()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._connack = True
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            if not self._falling_back and self._factory.fall_back(reason):
                self._falling_back = True
                log.info("broker does not speak MQTT 5; falling back to 3.1.1")
                threading.Thread(target=self._fall_back, daemon=True).start()
            else:
                log.warning(self.last_error)
            return
        self.last_error = None
        self._warned = None
        self._generation += 1
        log.info("connected to %s (session present: %s)", self.broker, flags.session_present)
        # connected (and healthy) once the broker confirmed every subscription
        # (SUBACKs come on this same paho thread, after this callback returns)
        mids = [client.subscribe(topic, qos=1)[1] for topic in subscriptions_for_controller()]
        self._suback_pending = {mid for mid in mids if mid is not None}
        client.publish(CONTROLLER_STATE_TOPIC, self._presence(True), qos=1, retain=True)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        self._suback_pending.discard(mid)
        if not self._suback_pending:
            self.connected.set()

    def _fall_back(self) -> None:
        old = self._client
        old.on_disconnect = None
        old.on_connect = None
        old.disconnect()
        old.loop_stop()
        self._client = self._build()  # the factory switched to 3.1.1
        self._connect_async()
        self._client.loop_start()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if (
            not self._connack
            and not self._stop.is_set()
            and not self._falling_back
            and self._factory.fall_back(None)
        ):
            # a 3.1.1-only broker may close the socket on an MQTT 5 CONNECT without a CONNACK
            log.info("broker closed an MQTT 5 connect; falling back to 3.1.1")
            self._falling_back = True
            threading.Thread(target=self._fall_back, daemon=True).start()
            return
        why = self._factory.explain(reason, connack=self._connack)
        self._connack = False
        if self.connected.is_set() and not self._stop.is_set():
            log.warning("lost the broker: %s", why)
        elif self._factory.tls_error is not None and not self._stop.is_set():
            self._warn_once(why)
        self.connected.clear()
        self.last_error = f"disconnected from the broker: {why}"

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho's thread tries again by itself; what it swallowed, TLS knows
        if self._factory.tls_error is not None:
            why = self._factory.explain(None, connack=False)
            self._warn_once(why)
            self.last_error = f"cannot connect to the broker: {why}"
        else:
            self.last_error = f"cannot reach the broker at {self.broker}"

    def _warn_once(self, why: str) -> None:
        # a misconfigured certificate is said once, not at every reconnect
        if why != self._warned:
            self._warned = why
            log.warning("cannot connect to the broker: %s", why)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)  # paho's is bytes already: no copy
        self._incoming.put((msg.topic, payload, msg.mid, msg.qos, self._generation), self._stop)

    # -- to and from the writer ----------------------------------------------------------------
    def _forward(self) -> None:
        """Cut the queue into batches and hand them to the writer, a few at a time."""
        while True:
            batch = self._take_batch()
            if batch is None:
                break
            if not batch:
                continue
            self._slots.acquire()
            items = [(topic, payload) for topic, payload, _, _, _ in batch]
            acks = [(mid, qos, generation) for _, _, mid, qos, generation in batch]
            # the send may wait for the writer to read (a batch is larger than a pipe's
            # buffer): under the send lock only, so a commit's PUBACKs (which need the
            # in-flight lock) never wait behind it; a restarted writer is handed every batch
            # in flight under both, so none is handed to it twice
            with self._send_lock:
                with self._inflight_lock:
                    batch_id = next(self._ids)
                    self._inflight[batch_id] = (items, acks)
                self._hand_over(batch_id, items)
        # stopping: let the writer finish what it has, then tell it to end
        deadline = time.monotonic() + 10.0
        while self._inflight and time.monotonic() < deadline and self._writer_alive():
            time.sleep(0.02)
        with self._send_lock, contextlib.suppress(OSError):  # OSError: already gone
            if self._writer is not None:
                self._writer.inbox.put(None)

    def _hand_over(self, batch_id: int, items: list[tuple[str, bytes]]) -> None:
        assert self._writer is not None
        # OSError: the writer died; its replacement gets every batch still in flight
        with contextlib.suppress(OSError):
            self._writer.inbox.put(("batch", batch_id, items))

    def _writer_alive(self) -> bool:
        return self._writer is not None and self._writer.alive()

    def _take_batch(self) -> list[tuple[str, bytes, int, int, int]] | None:
        incoming = self._incoming
        incoming.wait_for(1, 0.5)
        if not incoming.items:
            return None if self._stop.is_set() else []
        # a fleet's messages arrive one by one: wait a moment for more, so a commit (an
        # fsync) is shared by many messages; under load the batch fills at once
        if not self._stop.is_set():
            incoming.wait_for(self.batch_size, self.batch_linger)
        return incoming.take(self.batch_size)

    def _reports(self) -> None:
        """Act on what the writer reports: commits, sweeps, failures."""
        while True:
            assert self._writer is not None
            try:
                report = self._writer.outbox.get(1.0)
            except queue.Empty:
                if not self._writer.alive():
                    if self._stop.is_set() and not self._forwarding():
                        return
                    self._restart_writer("the writer ended without a word")
                continue
            except (EOFError, OSError):
                if self._stop.is_set() and not self._forwarding():
                    return
                self._restart_writer("lost the writer")
                continue
            kind = report[0]
            if kind == "batch":
                self._committed(report[1], report[2])
            elif kind == "sweep":
                self._swept(report[1])
            elif kind == "ready":
                self.writer_error = None
                self.writer_ready.set()
                if not self._mqtt_started:
                    self._mqtt_started = True
                    self._connect_async()
                    self._client.loop_start()
            elif kind == "failed":
                self.writer_error = f"the writer could not start: {report[1]}"
                log.error(self.writer_error)
                if self._stop.wait(5.0):
                    return
                self._restart_writer(None)
            elif kind == "stopped":
                return

    def _forwarding(self) -> bool:
        return any(t.name == "ingest-forward" and t.is_alive() for t in self._threads)

    def _restart_writer(self, why: str | None) -> None:
        """Start a new writer and hand it every batch not yet committed, in order (nothing
        of them was acked, and what the old one did commit is recognised by the ledgers)."""
        if why:
            self.writer_error = why
            log.error("%s; starting a new one", why)
        self.writer_ready.clear()
        with self._send_lock, self._inflight_lock:
            if self._writer is not None:
                self._writer.join(1.0)  # reap the old one (terminated if it somehow lives on)
            self._writer = WriterHandle(self.writer_config, self.writer_mode)
            for batch_id, (items, _) in self._inflight.items():
                self._hand_over(batch_id, items)

    def _committed(self, batch_id: int, report: BatchReport) -> None:
        with self._inflight_lock:
            entry = self._inflight.pop(batch_id, None)
        if entry is None:
            return
        self._slots.release()
        # only now, with the batch committed, may the broker forget these messages; after a
        # reconnect the broker redelivers what we did not ack, and an old mid could name
        # another message on the new connection, so it is not acked there
        current = self._generation
        puback_all(
            self._client,
            [mid for mid, qos, generation in entry[1] if qos == 1 and generation == current],
        )
        for mid, qos, generation in entry[1]:
            if qos == 2 and generation == current:  # we subscribe at QoS 1: not expected
                self._client.ack(mid, qos)
        if report.db_errors:
            self.metrics.db_errors.inc(report.db_errors)
        for topic, reason, explanation in report.rejected:
            self._reject(topic, reason, explanation)
        self._after_commit(report.outcome)
        self.metrics.batch_seconds.observe(report.seconds)

    def _reject(self, topic: str, reason: str, explanation: str) -> None:
        self.metrics.rejected.labels(reason).inc()
        parts = topic.split("/")
        station = parts[2] if len(parts) > 2 else "?"
        key = (station[:64], reason)
        if key not in self._logged and len(self._logged) < 10_000:
            self._logged.add(key)
            log.warning("rejected a message on %s: %s: %s", topic, reason, explanation)

    def _after_commit(self, outcome: BatchOutcome) -> None:
        for kind, n in outcome.stored.items():
            self.metrics.ingested.labels(kind).inc(n)
        if outcome.duplicates:
            self.metrics.duplicates.inc(outcome.duplicates)
        with self._acks_lock:
            self._acks.update(outcome.acks)
        now = time.monotonic()
        for station in outcome.rebirth:
            if now - self._rebirth_at.get(station, -1e9) >= _REBIRTH_EVERY:
                self._rebirth_at[station] = now
                self.send_command(station, "rebirth", {}, ttl=60)
        if outcome.changes and self._on_changes:
            self._on_changes(outcome.changes)
        if outcome.rollouts and self._on_rollouts:
            self._on_rollouts(outcome.rollouts)

    # -- outgoing ------------------------------------------------------------------------------
    def send_command(self, station: str, name: str, args: dict[str, Any], ttl: float) -> str:
        """Publish a command of the controller's own (not stored); returns its id."""
        command_id = uuid.uuid4().hex
        self.publish_command(
            station, name, command_id=command_id, expires_at=time.time() + ttl, args=args
        )
        return command_id

    def publish_command(
        self, station: str, name: str, *, command_id: str, expires_at: float, args: dict[str, Any]
    ) -> None:
        """Publish a command under the given id (a stored one: the id its reply will carry).

        While the broker is away paho keeps the QoS 1 message and sends it on reconnect."""
        payload = json.dumps({"id": command_id, "expires_at": expires_at, "args": args})
        self._client.publish(cmd_topic(station, name), payload.encode(), qos=1)

    def _ack_loop(self) -> None:
        while not self._stop.wait(self.ack_interval):
            self._flush_acks()

    def _flush_acks(self) -> None:
        with self._acks_lock:
            acks, self._acks = self._acks, {}
        for (station, session), seq in acks.items():
            payload = json.dumps({"session": session, "seq": seq}, separators=(",", ":"))
            self._client.publish(ack_topic(station), payload.encode(), qos=1)

    def _swept(self, report: SweepReport) -> None:
        if report.folded:
            log.info("retention folded %d telemetry rows into hourly aggregates", report.folded)
        self._ask_for_gaps(report.gaps)
        if report.changes and self._on_changes:
            self._on_changes(report.changes)

    def _ask_for_gaps(self, gaps: list[tuple[str, int, list[tuple[int, int]]]]) -> None:
        """Ask stations to send again what is missing (``cmd/resend``), without storms: a gap
        is asked for once it is a few seconds old, then at most every ``_RESEND_EVERY`` s."""
        mono = time.monotonic()
        due = {(station, session) for station, session, _ in gaps}
        self._resend_at = {k: t for k, t in self._resend_at.items() if k in due}
        for station, session, ranges in gaps:
            key = (station, session)
            if mono - self._resend_at.get(key, -1e9) < _RESEND_EVERY:
                continue
            self._resend_at[key] = mono
            for first, last in ranges[:_RANGES_PER_REQUEST]:
                self.metrics.resend_requests.inc()
                args = {"session": session, "from_seq": first, "to_seq": last}
                self.send_command(station, "resend", args, ttl=_RESEND_EVERY)
