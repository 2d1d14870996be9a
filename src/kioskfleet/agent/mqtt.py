"""The agent's MQTT link: the agent's only connection to the broker.

paho runs in external-loop mode on the asyncio loop (socket callbacks → ``add_reader`` /
``add_writer``), so one loop can carry one kiosk or thousands of simulated ones without a
thread per connection. Its clients come from :mod:`kioskfleet.mqttclient` (protocol version and
fall back, TLS, will, clean session, back-off); the link drives them: connect, the retained
last will of each attempt, resubscription and reconnection. The rest of the agent sees
:meth:`publish`, the subscriptions it asked for and three callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from kioskfleet.mqttclient import (
    Backoff,
    ConnectFailed,
    MqttClientFactory,
    ReconnectPolicy,
    SessionPolicy,
    TlsFiles,
)
from kioskfleet.protocol.broker_url import BrokerUrl

log = logging.getLogger(__name__)


class MqttLink:
    """One MQTT connection driven by an asyncio loop.

    Args:
        client_id: MQTT client id (the station id).
        url: broker address and protocol version.
        subscriptions: topic filters (QoS 1) subscribed at every connect, before ``on_connect``.
        will: called before every connect attempt; returns (topic, payload) of the retained will.
        on_connect: called once per successful connect, after subscribing.
        on_message: called with (topic, payload) for every message received.
        on_published: called with the mid of a QoS 1 publish the broker acknowledged.
        on_disconnect: called when an established connection is lost.
        keepalive: the keepalive the station promises (the wire's is 2/3 of it).
        reconnect_min, reconnect_max: bounds of the jittered reconnect back-off (seconds).
        rng: randomness of the back-off (seeded by simulations and tests).
        tls: certificate files for an ``mqtts://`` broker (system CAs, no client certificate
            when None).

    Raises:
        MqttConfigError: unusable TLS files.
    """

    def __init__(
        self,
        *,
        client_id: str,
        url: BrokerUrl,
        subscriptions: list[str],
        will: Callable[[], tuple[str, bytes]],
        on_connect: Callable[[], None],
        on_message: Callable[[str, bytes], None],
        on_published: Callable[[int], None],
        on_disconnect: Callable[[], None] = lambda: None,
        keepalive: int = 30,
        reconnect_min: float = 1.0,
        reconnect_max: float = 60.0,
        rng: random.Random | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.client_id = client_id
        self.url = url
        self.keepalive = keepalive
        # The station promises to be seen offline within 1.5 × keepalive + 2 s after it dies.
        # Mosquitto 2.0 checks keepalives only every 5 s, so 1.5 × keepalive alone can miss
        # that by up to 5 s; a keepalive of 2/3 of the promise makes the broker notice at
        # 1 × keepalive + 5 s, inside the promise for keepalives of 6 s and more.
        self.wire_keepalive = max(1, int(keepalive * 2 / 3))
        self._subscriptions = subscriptions
        self._will = will
        self._on_connect_cb = on_connect
        self._on_message_cb = on_message
        self._on_published_cb = on_published
        self._on_disconnect_cb = on_disconnect
        self._backoff = Backoff(ReconnectPolicy(reconnect_min, reconnect_max), rng)
        # agent sessions are clean: state is resynchronised by births and the outbox
        # (docs/decisions.md 5); the outbox paces publishing, paho only holds what is on the wire
        self._factory = MqttClientFactory(
            url,
            client_id=client_id,
            keepalive=self.wire_keepalive,
            session=SessionPolicy(clean=True, expiry=0),
            tls=tls,
            max_inflight=100,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        #: a fresh client per connection attempt (built in _attempt, docs/decisions.md 11)
        self._client: mqtt.Client | None = None
        self._connected = False
        self._stopping = False
        self._retry: asyncio.TimerHandle | None = None
        self._misc: asyncio.TimerHandle | None = None
        self._sock: Any = None
        self._closed = asyncio.Event()
        self._connack = False
        #: how often this link (re)connected; tests and benchmarks read it
        self.connects = 0
        #: why the latest connect attempt or connection failed (None once connected)
        self.last_error: str | None = None

    # -- public --------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True between CONNACK and the loss of the connection."""
        return self._connected

    @property
    def protocol_version(self) -> str:
        """The protocol this link speaks (``5`` or ``3.1.1``)."""
        return self._factory.version

    def start(self, delay: float = 0.0) -> None:
        """Connect (after ``delay`` seconds) and keep connecting until :meth:`stop`."""
        self._loop = asyncio.get_running_loop()
        self._schedule(delay)
        self._misc = self._loop.call_later(1.0, self._tick)

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> int | None:
        """Publish if connected; returns the message id (for QoS 1) or None when not connected."""
        if not self._connected or self._client is None:
            return None
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        return info.mid

    async def stop(self, last_words: tuple[str, bytes] | None = None, wait: float = 3.0) -> None:
        """Disconnect cleanly: publish ``last_words`` (retained), wait for its PUBACK, DISCONNECT.

        A clean DISCONNECT suppresses the will, which is why the agent says goodbye itself.
        """
        self._stopping = True
        if self._retry is not None:
            self._retry.cancel()
        if self._connected and self._client is not None and last_words is not None:
            info = self._client.publish(last_words[0], last_words[1], qos=1, retain=True)
            deadline = asyncio.get_running_loop().time() + wait
            while not info.is_published() and self._connected:
                if asyncio.get_running_loop().time() > deadline:
                    log.warning("%s: goodbye not acknowledged in %.0f s", self.client_id, wait)
                    break
                await asyncio.sleep(0.02)
        if self._sock is not None and self._client is not None:
            self._client.disconnect()
            try:
                await asyncio.wait_for(self._closed.wait(), wait)
            except TimeoutError:
                log.warning("%s: broker did not close the connection", self.client_id)
        if self._misc is not None:
            self._misc.cancel()
        self._connected = False

    def use_identity(self, tls: TlsFiles) -> None:
        """Connect with these certificate files from now on (a renewed certificate): the
        connection is closed cleanly — a DISCONNECT, so no will and the station is not seen
        offline — and made again after the usual short back-off, with the new certificate.

        Raises:
            MqttConfigError: unusable files (the current connection stays as it is).
        """
        self._factory.use_tls(tls)
        if self._connected and self._client is not None:
            self._client.disconnect()

    def abort(self, reconnect: bool = False) -> None:
        """Drop the connection without DISCONNECT, as a network failure does (the broker
        publishes the will). Without ``reconnect`` the link stays down (a kiosk that died);
        with it, the link handles the loss as any other and connects again. Tests only."""
        if not reconnect:
            self._stopping = True
            if self._retry is not None:
                self._retry.cancel()
            if self._misc is not None:
                self._misc.cancel()
        sock = self._sock
        if sock is not None:
            self._unwatch(sock)
            sock.close()
            self._sock = None
        was, self._connected = self._connected, False
        if reconnect:
            if was:
                self._on_disconnect_cb()
            self._schedule(self._backoff.next_delay())

    # -- paho ----------------------------------------------------------------------------------
    def _build(self) -> mqtt.Client:
        client = self._factory.build(will=self._will())
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        return client

    def _schedule(self, delay: float) -> None:
        assert self._loop is not None
        if self._retry is not None:
            self._retry.cancel()
        self._retry = self._loop.call_later(delay, self._attempt)

    def _attempt(self) -> None:
        self._retry = None
        if self._stopping:
            return
        self._connack = False
        # a fresh client per connection: paho's in-flight state is memory-only and its
        # re-sends after a reconnect are not ours to rely on; the outbox re-sends instead.
        # Built now, because the will carries the session of this very attempt.
        self._client = self._build()
        try:
            # blocks the loop for the TCP (and TLS) handshake, docs/decisions.md 3
            self._factory.connect(self._client)
        except ConnectFailed as err:
            self._failed(str(err))
            self._schedule(self._backoff.next_delay())

    def _failed(self, why: str) -> None:
        # a kiosk that cannot connect says why once, not at every retry
        if why != self.last_error:
            # TLS failures are configuration (certificates) until shown otherwise
            level = logging.WARNING if self._factory.tls_error is not None else logging.DEBUG
            log.log(level, "%s: %s", self.client_id, why)
        self.last_error = why

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._connack = True
        if reason.is_failure:
            if self._factory.fall_back(reason):
                log.info("%s: broker does not speak MQTT 5, falling back to 3.1.1", self.client_id)
                self._replace_client()
                self._schedule(0.0)
                return
            why = f"broker refused the connection: {reason}"
            if why != self.last_error:
                log.warning("%s: %s", self.client_id, why)
            self.last_error = why
            return  # the disconnect that follows schedules the retry
        self._connected = True
        self._backoff.reset()
        self.last_error = None
        self.connects += 1
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        self._on_connect_cb()

    def _replace_client(self) -> None:
        """Drop the current client without a word (the next attempt builds a new one)."""
        old = self._client
        self._client = None
        sock = self._sock
        if sock is not None:
            self._unwatch(sock)
            self._sock = None
        if old is not None:
            old.on_socket_close = None
            old.on_disconnect = None
            with contextlib.suppress(OSError):
                old.disconnect()
        if sock is not None:
            sock.close()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        was = self._connected
        self._connected = False
        ours = client is self._client and not self._stopping
        # some 3.1.1-only brokers close the socket on an MQTT 5 CONNECT instead of answering
        # "unsupported protocol version" (the factory knows a TLS refusal from that)
        if ours and not self._connack and self._factory.fall_back(None):
            log.info("%s: broker closed an MQTT 5 connect, trying 3.1.1", self.client_id)
            self._replace_client()
            self._schedule(0.0)
            return
        why = self._factory.explain(reason, connack=self._connack)
        if was:
            log.info("%s: connection lost: %s", self.client_id, why)
            if not self._stopping:
                self.last_error = f"connection lost: {why}"
            self._on_disconnect_cb()
        elif ours and not (self._connack and self.last_error):
            self._failed(why)  # a refusal's CONNACK already said why
        if ours and self._retry is None:
            self._schedule(self._backoff.next_delay())

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._on_message_cb(msg.topic, bytes(msg.payload))

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        self._on_published_cb(mid)

    # -- external loop -------------------------------------------------------------------------
    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._sock = sock
        self._closed.clear()
        self._loop.add_reader(sock, self._read)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._unwatch(sock)
        if sock is self._sock:
            self._sock = None
        self._closed.set()

    def _unwatch(self, sock: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(ValueError, OSError):  # the socket is already closed
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_writer(sock, self._write)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_writer(sock)

    def _read(self) -> None:
        client, sock = self._client, self._sock
        if client is None:
            return
        client.loop_read()
        # TLS decrypts whole records: what paho did not read yet waits inside the SSL object,
        # where the loop's reader cannot see it, until more bytes come from the network
        while (
            isinstance(sock, ssl.SSLSocket) and self._sock is sock and self._client is client
        ) and sock.pending():
            client.loop_read()

    def _write(self) -> None:
        if self._client is not None:
            self._client.loop_write()

    def _tick(self) -> None:
        assert self._loop is not None
        if self._sock is not None and self._client is not None:
            self._client.loop_misc()  # keepalive pings, detection of a dead broker
        if not self._stopping:
            self._misc = self._loop.call_later(1.0, self._tick)
