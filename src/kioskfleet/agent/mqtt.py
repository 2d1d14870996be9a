"""The agent's MQTT link: the only place that knows paho.

paho runs in external-loop mode on the asyncio loop (socket callbacks → ``add_reader`` /
``add_writer``), so one loop can carry one kiosk or thousands of simulated ones without a
thread per connection. The link owns connect, the retained last will, resubscription,
reconnection with jittered back-off and the MQTT 5 → 3.1.1 fall back; the rest of the agent
sees :meth:`publish`, the subscriptions it asked for and three callbacks.
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
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from kioskfleet.protocol.broker_url import BrokerUrl

log = logging.getLogger(__name__)

_UNSUPPORTED_PROTOCOL = 132  # CONNACK reason "Unsupported protocol version" (3.1.1 rc 1 maps here)


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
        self._reconnect_min = reconnect_min
        self._reconnect_max = reconnect_max
        self._rng = rng or random.Random()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._protocol = mqtt.MQTTv311 if url.version == "3.1.1" else mqtt.MQTTv5
        self._client = self._build()
        self._connected = False
        self._stopping = False
        self._attempts = 0
        self._retry: asyncio.TimerHandle | None = None
        self._misc: asyncio.TimerHandle | None = None
        self._sock: Any = None
        self._closed = asyncio.Event()
        self._connack = False
        self._used = False
        #: how often this link (re)connected; tests and benchmarks read it
        self.connects = 0

    # -- public --------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True between CONNACK and the loss of the connection."""
        return self._connected

    @property
    def protocol_version(self) -> str:
        """The protocol this link speaks (``5`` or ``3.1.1``)."""
        return "5" if self._protocol == mqtt.MQTTv5 else "3.1.1"

    def start(self, delay: float = 0.0) -> None:
        """Connect (after ``delay`` seconds) and keep connecting until :meth:`stop`."""
        self._loop = asyncio.get_running_loop()
        self._schedule(delay)
        self._misc = self._loop.call_later(1.0, self._tick)

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> int | None:
        """Publish if connected; returns the message id (for QoS 1) or None when not connected."""
        if not self._connected:
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
        if self._connected and last_words is not None:
            info = self._client.publish(last_words[0], last_words[1], qos=1, retain=True)
            deadline = asyncio.get_running_loop().time() + wait
            while not info.is_published() and self._connected:
                if asyncio.get_running_loop().time() > deadline:
                    log.warning("%s: goodbye not acknowledged in %.0f s", self.client_id, wait)
                    break
                await asyncio.sleep(0.02)
        if self._sock is not None:
            self._client.disconnect()
            try:
                await asyncio.wait_for(self._closed.wait(), wait)
            except TimeoutError:
                log.warning("%s: broker did not close the connection", self.client_id)
        if self._misc is not None:
            self._misc.cancel()
        self._connected = False

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
            self._schedule(self._backoff())

    # -- paho ----------------------------------------------------------------------------------
    def _build(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=self._protocol,
            clean_session=True if self._protocol == mqtt.MQTTv311 else None,
            reconnect_on_failure=False,
        )
        if self.url.username:
            client.username_pw_set(self.url.username, self.url.password)
        if self.url.tls:
            client.tls_set(tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        # the outbox paces publishing; paho's own queue only holds what is on the wire
        client.max_inflight_messages_set(100)
        return client

    def _schedule(self, delay: float) -> None:
        assert self._loop is not None
        if self._retry is not None:
            self._retry.cancel()
        self._retry = self._loop.call_later(delay, self._attempt)

    def _backoff(self) -> float:
        # full jitter: a district coming back does not reconnect in lock step
        ceiling = min(self._reconnect_max, self._reconnect_min * 2 ** min(self._attempts, 16))
        return self._reconnect_min / 2 + self._rng.uniform(0, ceiling)

    def _attempt(self) -> None:
        self._retry = None
        if self._stopping:
            return
        self._attempts += 1
        self._connack = False
        if self._used:
            # a fresh client per connection: paho's in-flight state is memory-only and its
            # re-sends after a reconnect are not ours to rely on; the outbox re-sends instead
            self._client = self._build()
        self._used = True
        topic, payload = self._will()
        self._client.will_set(topic, payload, qos=1, retain=True)
        try:
            if self._protocol == mqtt.MQTTv5:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = 0
                self._client.connect(
                    self.url.host,
                    self.url.port,
                    keepalive=self.wire_keepalive,
                    clean_start=True,
                    properties=props,
                )
            else:
                self._client.connect(self.url.host, self.url.port, keepalive=self.wire_keepalive)
        except (TimeoutError, OSError, ValueError) as err:
            log.debug("%s: connect to %s failed: %s", self.client_id, self.url, err)
            self._schedule(self._backoff())

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._connack = True
        if reason.is_failure:
            if (
                reason.value == _UNSUPPORTED_PROTOCOL
                and self.url.version is None
                and self._protocol == mqtt.MQTTv5
            ):
                log.info("%s: broker does not speak MQTT 5, falling back to 3.1.1", self.client_id)
                self._protocol = mqtt.MQTTv311
                self._replace_client()
                self._schedule(0.0)
                return
            log.warning("%s: broker refused the connection: %s", self.client_id, reason)
            return  # the disconnect that follows schedules the retry
        self._connected = True
        self._attempts = 0
        self.connects += 1
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        self._on_connect_cb()

    def _replace_client(self) -> None:
        old = self._client
        self._client = self._build()
        sock = self._sock
        if sock is not None:
            self._unwatch(sock)
            self._sock = None
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
        if (
            not self._connack
            and self.url.version is None
            and self._protocol == mqtt.MQTTv5
            and client is self._client
            and not self._stopping
        ):
            # some 3.1.1-only brokers close the socket on an MQTT 5 CONNECT instead of
            # answering "unsupported protocol version"
            log.info("%s: broker closed an MQTT 5 connect, trying 3.1.1", self.client_id)
            self._protocol = mqtt.MQTTv311
            self._replace_client()
            self._schedule(0.0)
            return
        if was:
            log.info("%s: connection lost: %s", self.client_id, reason)
            self._on_disconnect_cb()
        if not self._stopping and client is self._client and self._retry is None:
            self._schedule(self._backoff())

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
        self._client.loop_read()

    def _write(self) -> None:
        self._client.loop_write()

    def _tick(self) -> None:
        assert self._loop is not None
        if self._sock is not None:
            self._client.loop_misc()  # keepalive pings, detection of a dead broker
        if not self._stopping:
            self._misc = self._loop.call_later(1.0, self._tick)
