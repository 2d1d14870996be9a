"""MQTT ingest: receive, validate, store in batches, confirm after the commit.

paho runs its own network thread; ``on_message`` only queues. One writer thread takes
batches off the queue, decodes and validates them, stores each batch in one transaction
(:class:`~kioskfleet.controller.store.FleetStore`), and only then sends the broker its PUBACKs
(paho manual ack, in arrival order) and the stations their ``ack`` (at most once a second per
station session). The broker keeps our persistent session, so whatever was not acked when we
died is delivered again — and stored once, thanks to the seq ledgers.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from kioskfleet.controller.metrics import Metrics
from kioskfleet.controller.retention import apply_retention
from kioskfleet.controller.store import BatchOutcome, FleetStore
from kioskfleet.protocol.broker_url import BrokerUrl
from kioskfleet.protocol.errors import ProtocolError
from kioskfleet.protocol.messages import AgentMessage, decode_agent_message
from kioskfleet.protocol.topics import (
    CONTROLLER_STATE_TOPIC,
    ack_topic,
    cmd_topic,
    parse_topic,
    subscriptions_for_controller,
)

log = logging.getLogger(__name__)

_UNSUPPORTED_PROTOCOL = 132
_REBIRTH_EVERY = 30.0  # seconds between birth requests to the same station
_GAP_GRACE = 3.0  # a gap younger than this is usually a message still on its way
_RESEND_EVERY = 15.0  # seconds between resend requests for the same station session
_RANGES_PER_REQUEST = 8


@dataclass(frozen=True)
class _Incoming:
    topic: str
    payload: bytes
    mid: int
    qos: int
    #: which connection delivered it: a PUBACK only makes sense on that connection
    generation: int


class Ingest:
    """The controller's MQTT side.

    Args:
        store: where batches go.
        broker: broker URL.
        client_id: stable id (the broker keeps this session's queue while we restart).
        metrics: Prometheus instruments.
    """

    def __init__(
        self,
        store: FleetStore,
        *,
        broker: BrokerUrl,
        client_id: str,
        metrics: Metrics,
        session_expiry: int = 7 * 24 * 3600,
        batch_size: int = 500,
        ack_interval: float = 1.0,
        sweep_interval: float = 1.0,
        retention: tuple[float, float] | None = None,
        on_changes: Callable[[list[tuple[str, str, str]]], None] | None = None,
    ) -> None:
        self.store = store
        self.broker = broker
        self.client_id = client_id
        self.metrics = metrics
        self.session_expiry = session_expiry
        self.batch_size = batch_size
        self.ack_interval = ack_interval
        self.sweep_interval = sweep_interval
        #: (days kept raw, seconds between runs)
        self.retention = retention
        self._next_retention = time.monotonic() + 60.0
        self._on_changes = on_changes
        self._queue: queue.Queue[_Incoming | None] = queue.Queue(maxsize=20_000)
        self._protocol = mqtt.MQTTv311 if broker.version == "3.1.1" else mqtt.MQTTv5
        self._client = self._build()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acks: dict[tuple[str, int], int] = {}
        self._acks_lock = threading.Lock()
        self._rebirth_at: dict[str, float] = {}
        self._resend_at: dict[tuple[str, int], float] = {}
        self._logged: set[tuple[str, str]] = set()
        self.connected = threading.Event()
        self.last_error: str | None = None
        self._connack = False
        self._falling_back = False
        self._generation = 0

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Connect (retrying in the background) and start the writer and sweeper."""
        self._connect_async()
        self._client.loop_start()
        for name, target in (("ingest-writer", self._writer), ("ingest-acks", self._ack_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Drain what is queued, say offline, disconnect."""
        self._stop.set()
        self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=10)
        self._flush_acks()
        if self.connected.is_set():
            info = self._client.publish(
                CONTROLLER_STATE_TOPIC, self._presence(False), qos=1, retain=True
            )
            info.wait_for_publish(timeout=2)
        self._client.disconnect()
        self._client.loop_stop()

    # -- paho ----------------------------------------------------------------------------------
    def _build(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=self._protocol,
            clean_session=False if self._protocol == mqtt.MQTTv311 else None,
            manual_ack=True,
        )
        if self.broker.username:
            client.username_pw_set(self.broker.username, self.broker.password)
        if self.broker.tls:
            client.tls_set()
        client.will_set(CONTROLLER_STATE_TOPIC, self._presence(False), qos=1, retain=True)
        client.reconnect_delay_set(1, 30)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _connect_async(self) -> None:
        if self._protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self.session_expiry
            # at most this many unacked messages in flight to us: the broker keeps the rest
            props.ReceiveMaximum = 2000
            self._client.connect_async(
                self.broker.host,
                self.broker.port,
                keepalive=30,
                clean_start=False,
                properties=props,
            )
        else:
            self._client.connect_async(self.broker.host, self.broker.port, keepalive=30)

    @staticmethod
    def _presence(online: bool) -> bytes:
        return json.dumps({"online": online, "ts": time.time()}).encode()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._connack = True
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            if (
                reason.value == _UNSUPPORTED_PROTOCOL
                and self.broker.version is None
                and self._protocol == mqtt.MQTTv5
                and not self._falling_back
            ):
                self._falling_back = True
                log.info("broker does not speak MQTT 5; falling back to 3.1.1")
                threading.Thread(target=self._fall_back, daemon=True).start()
            else:
                log.warning(self.last_error)
            return
        self.last_error = None
        self._generation += 1
        log.info("connected to %s (session present: %s)", self.broker, flags.session_present)
        for topic in subscriptions_for_controller():
            client.subscribe(topic, qos=1)
        client.publish(CONTROLLER_STATE_TOPIC, self._presence(True), qos=1, retain=True)
        self.connected.set()

    def _fall_back(self) -> None:
        old = self._client
        old.on_disconnect = None
        old.on_connect = None
        old.disconnect()
        old.loop_stop()
        self._protocol = mqtt.MQTTv311
        self._client = self._build()
        self._connect_async()
        self._client.loop_start()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if (
            not self._connack
            and self.broker.version is None
            and self._protocol == mqtt.MQTTv5
            and not self._stop.is_set()
            and not self._falling_back
        ):
            # a 3.1.1-only broker may close the socket on an MQTT 5 CONNECT without a CONNACK
            log.info("broker closed an MQTT 5 connect; falling back to 3.1.1")
            self._falling_back = True
            threading.Thread(target=self._fall_back, daemon=True).start()
            return
        self._connack = False
        if self.connected.is_set() and not self._stop.is_set():
            log.warning("lost the broker: %s", reason)
        self.connected.clear()
        self.last_error = f"disconnected from the broker: {reason}"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # blocks when the writer falls behind: paho stops reading, the broker holds the rest
        self._queue.put(
            _Incoming(msg.topic, bytes(msg.payload), msg.mid, msg.qos, self._generation)
        )

    # -- the writer ----------------------------------------------------------------------------
    def _writer(self) -> None:
        # the one thread that writes fleet state: batches, and the silent-station sweep
        next_sweep = time.monotonic() + self.sweep_interval
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if batch:
                self._process(batch)
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self.sweep_interval
                self._sweep()

    def _take_batch(self) -> list[_Incoming] | None:
        try:
            first = self._queue.get(timeout=min(0.5, self.sweep_interval))
        except queue.Empty:
            return None if self._stop.is_set() and self._queue.empty() else []
        if first is None:
            return None
        batch = [first]
        while len(batch) < self.batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)
                break
            batch.append(item)
        return batch

    def _process(self, batch: list[_Incoming]) -> None:
        started = time.perf_counter()
        decoded: list[tuple[str, AgentMessage]] = []
        rejected = 0
        for item in batch:
            if item.topic == CONTROLLER_STATE_TOPIC:
                continue  # our own presence, seen through fleet/v1/+/state
            try:
                topic = parse_topic(item.topic)
                decoded.append(
                    (topic.kind, decode_agent_message(topic.kind, topic.station, item.payload))
                )
            except ProtocolError as err:
                rejected += 1
                self._reject(item.topic, err)
        now = time.time()
        while True:
            try:
                outcome = self.store.apply(decoded, now, rejected=rejected)
                break
            except Exception as err:  # noqa: BLE001 - the database may be away; never drop
                self.metrics.db_errors.inc()
                log.error("storing a batch failed, retrying in 1 s: %s", err)
                if self._stop.wait(1.0):
                    return
        # only now, with the batch committed, may the broker forget these messages
        for item in batch:
            # after a reconnect the broker redelivers what we did not ack; an old mid could
            # name another message on the new connection, so it is not acked there
            if item.qos > 0 and item.generation == self._generation:
                self._client.ack(item.mid, item.qos)
        self._after_commit(outcome)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    def _reject(self, topic: str, err: ProtocolError) -> None:
        self.metrics.rejected.labels(err.reason).inc()
        parts = topic.split("/")
        station = parts[2] if len(parts) > 2 else "?"
        key = (station[:64], err.reason)
        if key not in self._logged and len(self._logged) < 10_000:
            self._logged.add(key)
            log.warning("rejected a message on %s: %s: %s", topic[:200], err.reason, err)

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

    # -- outgoing ------------------------------------------------------------------------------
    def send_command(self, station: str, name: str, args: dict[str, Any], ttl: float) -> str:
        """Publish a command; returns its id."""
        command_id = uuid.uuid4().hex
        payload = json.dumps({"id": command_id, "expires_at": time.time() + ttl, "args": args})
        self._client.publish(cmd_topic(station, name), payload.encode(), qos=1)
        return command_id

    def _ack_loop(self) -> None:
        while not self._stop.wait(self.ack_interval):
            self._flush_acks()

    def _flush_acks(self) -> None:
        with self._acks_lock:
            acks, self._acks = self._acks, {}
        for (station, session), seq in acks.items():
            payload = json.dumps({"session": session, "seq": seq}, separators=(",", ":"))
            self._client.publish(ack_topic(station), payload.encode(), qos=1)

    def _ask_for_gaps(self) -> None:
        """Ask stations to send again what is missing (``cmd/resend``), without storms: a gap
        is asked for once it is a few seconds old, then at most every ``_RESEND_EVERY`` s."""
        now, mono = time.time(), time.monotonic()
        self._resend_at = {k: t for k, t in self._resend_at.items() if k in self.store.gappy}
        for station, session, ranges in self.store.gaps(now, min_age=_GAP_GRACE):
            key = (station, session)
            if mono - self._resend_at.get(key, -1e9) < _RESEND_EVERY:
                continue
            self._resend_at[key] = mono
            for first, last in ranges[:_RANGES_PER_REQUEST]:
                self.metrics.resend_requests.inc()
                args = {"session": session, "from_seq": first, "to_seq": last}
                self.send_command(station, "resend", args, ttl=_RESEND_EVERY)

    def _retain(self) -> None:
        if self.retention is None or time.monotonic() < self._next_retention:
            return
        days, every = self.retention
        chunk = 2000
        try:
            # one chunk per sweep, so ingest goes on between chunks of a long first run
            folded = apply_retention(
                self.store.engine, cutoff=time.time() - days * 86400, chunk=chunk, max_chunks=1
            )
        except Exception as err:  # noqa: BLE001 - retention waits for its next turn
            log.error("retention failed: %s", err)
            folded = 0
        if folded:
            log.info("retention folded %d telemetry rows into hourly aggregates", folded)
        if folded < chunk:
            self._next_retention = time.monotonic() + every

    def _sweep(self) -> None:
        self._retain()
        self._ask_for_gaps()
        try:
            changes = self.store.sweep(time.time())
        except Exception as err:  # noqa: BLE001 - sweep again once the database is back
            log.error("sweeping for silent stations failed: %s", err)
            return
        if changes and self._on_changes:
            self._on_changes(changes)
