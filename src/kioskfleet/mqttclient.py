"""Every paho client of kioskfleet is built here, for the agent's link and the controller's ingest.

This module owns how we talk MQTT to a broker: the protocol version and the fall back from 5 to
3.1.1, TLS (``mqtts://``: CA, client certificate and key, TLS 1.2 or newer, host name checked),
credentials from the URL, the keepalive, the retained will, the session (clean start, session
expiry and receive maximum for MQTT 5; clean session for 3.1.1) and the reconnect back-off.
How a client is *driven* stays with its user: the agent runs paho's socket callbacks on asyncio
(external-loop mode), the controller runs paho's network thread with manual acks.

It sits between ``kioskfleet.protocol`` (the only part of kioskfleet it imports) and the agent
and controller (docs/decisions.md 19).
"""

from __future__ import annotations

import random
import ssl
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel, ConfigDict, model_validator

from kioskfleet.protocol.broker_url import BrokerUrl, MqttVersion

#: CONNACK reason "Unsupported protocol version" (paho maps a 3.1.1 broker's return code 1 here)
UNSUPPORTED_PROTOCOL = 132


class MqttConfigError(ValueError):
    """The connection cannot be set up as configured (TLS files missing, unreadable, not PEM,
    a key that does not match its certificate, a certificate for a plain ``mqtt://`` URL).
    Retrying does not help: the configuration must change."""


class ConnectFailed(ConnectionError):
    """A connect attempt failed before MQTT spoke (network, TLS handshake). Try again later."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for an ``mqtts://`` connection.

    ``ca`` is the CA that signed the broker's certificate (the system's CAs when None);
    ``cert`` and ``key`` are this client's certificate and private key (``key`` None when the
    certificate file holds the key too). Without ``cert`` the client sends no certificate.
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if self.key is not None and self.cert is None:
            raise MqttConfigError("a TLS client key needs its certificate")


class TlsSettings(BaseModel):
    """The ``[tls]`` section of the agent's and the controller's configuration: the PEM files
    of an ``mqtts://`` connection (:class:`TlsFiles`). The files are loaded once when the
    configuration is read, so a missing or mismatched file is a configuration error naming
    the key, not a failure at the first connect."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    #: the CA that signed the broker's certificate (the system's CAs when absent)
    ca: Path | None = None
    #: this client's certificate (PEM), sent to a broker that asks for one
    cert: Path | None = None
    #: this client's private key (absent when the certificate file holds it too)
    key: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _paths(cls, data: Any) -> Any:
        # TOML and environment variables give strings; strict mode wants Paths
        if isinstance(data, dict):
            return {k: Path(v) if isinstance(v, str) and v else v for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _usable(self) -> Self:
        tls_context(self.files)  # MqttConfigError is a ValueError: a validation error
        return self

    @property
    def files(self) -> TlsFiles:
        """The files as the client factory takes them."""
        return TlsFiles(ca=self.ca, cert=self.cert, key=self.key)


@dataclass(frozen=True)
class SessionPolicy:
    """What the broker keeps for us between connections.

    ``clean`` is MQTT 5's clean start (3.1.1's clean session); ``expiry`` (seconds) and
    ``receive_maximum`` (unacked QoS 1 messages the broker may have in flight to us) are sent
    as MQTT 5 CONNECT properties only — a 3.1.1 broker applies its own settings.
    """

    clean: bool
    expiry: int = 0
    receive_maximum: int | None = None


@dataclass(frozen=True)
class ReconnectPolicy:
    """Bounds of the delay between connect attempts (seconds)."""

    minimum: float = 1.0
    maximum: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.minimum <= self.maximum:
            raise ValueError(
                f"reconnect delays must satisfy 0 < minimum <= maximum "
                f"(got {self.minimum}, {self.maximum})"
            )


def backoff_delay(policy: ReconnectPolicy, failures: int, rng: random.Random) -> float:
    """The delay after ``failures`` failed attempts in a row (0 for the first retry): a
    ceiling that doubles with every failure, from ``policy.minimum`` up to ``policy.maximum``,
    and a random delay under it ("full jitter", at least half the minimum). Pure apart from
    ``rng``; for callers that keep the failure count themselves (the notification outbox keeps
    it per receiver)."""
    low, high = policy.minimum, policy.maximum
    ceiling = min(high, low * 2 ** min(max(failures, 0), 32))
    return min(high, low / 2 + rng.uniform(0, ceiling))


class Backoff:
    """Delays between connect attempts: a ceiling that doubles with every failed attempt, from
    ``minimum`` up to ``maximum``, and a random delay under it ("full jitter", at least half the
    minimum), so a district coming back does not reconnect in lock step. Pure: the only input
    besides the calls is the injected ``rng``.
    """

    def __init__(self, policy: ReconnectPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._rng = rng or random.Random()
        self._failures = 0

    @property
    def failures(self) -> int:
        """Delays handed out since the last :meth:`reset`."""
        return self._failures

    def next_delay(self) -> float:
        """The delay before the next attempt (and one more failure counted)."""
        delay = backoff_delay(self.policy, self._failures, self._rng)
        self._failures += 1
        return delay

    def reset(self) -> None:
        """A connection succeeded: the next failure starts from the minimum again."""
        self._failures = 0


def puback_all(client: mqtt.Client, mids: Sequence[int]) -> None:
    """PUBACK the QoS 1 messages ``mids`` (a client built with ``manual_ack``), in this order,
    as one write.

    paho's ``Client.ack`` queues a 4-byte packet per message and, with its network thread
    running, wakes that thread through a socket pair for each: two system calls per message
    in the process that must keep pace with the broker. Here the PUBACKs (fixed header 0x40,
    remaining length 2, the message id: the same bytes in MQTT 3.1.1 and 5, reason code
    success left out) go into paho's outgoing queue as one packet, through the method its own
    ``ack`` uses (paho 2.x ``_packet_queue``); a paho without it gets one ``ack`` each.
    """
    if not mids:
        return
    queue_packet = getattr(client, "_packet_queue", None)
    if queue_packet is None:  # pragma: no cover - paho 2.x has it
        for mid in mids:
            client.ack(mid, 1)
        return
    packet = struct.pack(f"!{len(mids)}I", *(_PUBACK | mid for mid in mids))
    queue_packet(_PUBACK >> 24, packet, 0, 0)


#: a PUBACK's fixed header (0x40, remaining length 2) above its 16-bit message id
_PUBACK = 0x4002 << 16


class SharedTableProperties(Properties):
    """paho's MQTT 5 ``Properties``, with its lookup tables built once rather than per packet.

    paho decodes every received packet's properties into a new ``Properties``, whose
    constructor builds a list, a dict of 27 names and a dict of 27 entries with some 30
    ``list.index`` calls, and whose ``unpack`` first clears each of the 27 names (a
    ``str.replace`` and a ``hasattr`` each) — on an empty object. For a PUBLISH without
    properties (all of a fleet's telemetry) that is most of what paho spends on the packet
    beyond its bytes: a third of the controller's MQTT thread (docs/benchmarks.md). Here the
    tables are paho's own, built once and shared (paho reads them, never writes them), and a
    fresh object given an empty property section has nothing to clear or read; everything
    else is paho's code.
    """

    _tables = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]

    def __init__(self, packetType: int) -> None:
        set_attribute = object.__setattr__
        set_attribute(self, "packetType", packetType)
        set_attribute(self, "types", self._tables.types)
        set_attribute(self, "names", self._tables.names)
        set_attribute(self, "properties", self._tables.properties)

    def unpack(self, buffer: bytes | bytearray) -> tuple[Properties, int]:
        """As paho's; a fresh object (no property set yet) with no properties is done at once."""
        if buffer[:1] == b"\x00" and len(self.__dict__) == len(_PRIVATE):
            return self, 1
        result: tuple[Properties, int] = super().unpack(buffer)  # type: ignore[no-untyped-call]
        return result


class ReadAheadSocket:
    """A paho socket (paho's ``SocketLike``) whose reads come out of one large ``recv``.

    paho reads each packet with three or four ``recv`` calls (its type byte, each byte of its
    remaining length, then the rest) after a ``select`` of its own: four or five system calls
    and their Python wrappers per telemetry message, in the thread that must keep pace with
    the broker. Here one ``recv`` of up to :attr:`CHUNK` bytes serves many packets; paho's
    loop asks :meth:`pending` (as it asks a TLS socket) and reads on without waiting in
    ``select`` while bytes are buffered. Errors (no data yet, TLS wanting more) come from the
    wrapped socket unchanged, as paho expects them.
    """

    CHUNK = 256 * 1024

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buffer = b""
        self._offset = 0

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes: buffered ones first, else one large read of the socket."""
        if self._offset >= len(self._buffer):
            data: bytes = self._sock.recv(max(size, self.CHUNK))
            if len(data) <= size:
                return data
            self._buffer, self._offset = data, 0
        start = self._offset
        self._offset = start + size
        return self._buffer[start : self._offset]

    def pending(self) -> int:
        """Bytes that can be read without the network (buffered here or in TLS)."""
        inner = getattr(self._sock, "pending", None)
        return max(0, len(self._buffer) - self._offset) + (inner() if inner else 0)

    def send(self, buffer: bytes | bytearray) -> int:
        sent: int = self._sock.send(buffer)
        return sent

    def close(self) -> None:
        self._sock.close()

    def fileno(self) -> int:
        number: int = self._sock.fileno()
        return number

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)


class ReadAheadClient(mqtt.Client):
    """A paho client reading through a :class:`ReadAheadSocket`, for a network thread
    (``loop_start``/``loop_forever``) that receives far more than it sends: the controller's
    ingest. Each pass of paho's loop reads every packet already buffered before it writes
    and checks its keepalive again (at most :attr:`ReadAheadSocket.CHUNK` bytes' worth)."""

    def _create_socket(self) -> Any:
        return ReadAheadSocket(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        sock = self._sock
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and sock is self._sock:
            buffered = getattr(sock, "pending", None)
            if buffered is None or buffered() <= 0:
                break
            rc = super().loop_read(max_packets)
        return rc


#: the attributes a ``Properties`` holds before any property is set
_PRIVATE = ("packetType", "types", "names", "properties")


def share_property_tables() -> bool:
    """Have paho decode received packets' MQTT 5 properties with :class:`SharedTableProperties`
    in this process (paho 2.x decodes packets in ``paho.mqtt._packet``); False on a paho laid
    out otherwise, which keeps its own. Process-wide: the controller calls it for its ingest,
    the one client in a process that must keep pace with a broker."""
    from paho.mqtt import _packet

    if getattr(_packet, "Properties", None) not in (Properties, SharedTableProperties):
        return False
    setattr(_packet, "Properties", SharedTableProperties)  # noqa: B010 - not in its exports
    return True


def should_fall_back(
    *, pinned: MqttVersion | None, speaking: MqttVersion, refusal: int | None, tls_failed: bool
) -> bool:
    """Whether to try MQTT 3.1.1 after a connect attempt with ``speaking`` failed.

    ``refusal`` is the CONNACK's reason code, or None when the broker closed the connection
    without a CONNACK (some 3.1.1-only brokers do that to an MQTT 5 CONNECT). A URL that pins a
    version never falls back, and a connection that ended in a TLS error (a refused client
    certificate ends the TLS session right after the handshake) says nothing about MQTT.
    """
    if pinned is not None or speaking != "5":
        return False
    if refusal is None:
        return not tls_failed
    return refusal == UNSUPPORTED_PROTOCOL


def tls_context(files: TlsFiles) -> ssl.SSLContext:
    """A client context: TLS 1.2 or newer, the broker's certificate and host name checked
    against ``files.ca`` (or the system's CAs), our certificate sent when there is one.

    Raises:
        MqttConfigError: a file is missing or unreadable, not PEM, or key and cert disagree.
    """
    try:
        context = ssl.create_default_context(cafile=str(files.ca) if files.ca is not None else None)
    except (OSError, ssl.SSLError) as err:
        raise MqttConfigError(f"cannot load the CA file {files.ca}: {_why(err)}") from err
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if files.cert is not None:
        try:
            context.load_cert_chain(
                str(files.cert), str(files.key) if files.key is not None else None
            )
        except (OSError, ssl.SSLError) as err:
            raise MqttConfigError(
                f"cannot load the client certificate {files.cert}"
                f"{f' with key {files.key}' if files.key else ''}: {_why(err)}"
            ) from err
    return context


def _why(err: BaseException) -> str:
    if isinstance(err, ssl.SSLError) and err.reason:
        return str(err.reason).replace("_", " ").lower()
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err)


class MqttClientFactory:
    """Builds paho clients for one side's connection to one broker, and connects them.

    Args:
        url: broker address, TLS on or off, pinned protocol version, credentials.
        client_id: MQTT client id.
        keepalive: MQTT keepalive (seconds) sent in CONNECT.
        session: clean or persistent session.
        tls: certificate files for an ``mqtts://`` URL (the system's CAs and no client
            certificate when None).
        manual_ack: the user acknowledges received QoS 1 messages itself (after storing them).
        max_inflight: outgoing QoS 1 messages on the wire before paho queues.
        paho_reconnects: paho's network thread reconnects by itself with delays doubling within
            these bounds (the controller: one client, no herd to spread, so no jitter); None
            when the user reconnects itself, after a :class:`Backoff` delay (the agent).
        read_ahead: build :class:`ReadAheadClient` s (a client driven by paho's network
            thread that mostly receives: the controller's ingest).

    Raises:
        MqttConfigError: unusable TLS files, or TLS files for a plain ``mqtt://`` URL.
    """

    def __init__(
        self,
        url: BrokerUrl,
        *,
        client_id: str,
        keepalive: int,
        session: SessionPolicy,
        tls: TlsFiles | None = None,
        manual_ack: bool = False,
        max_inflight: int = 20,
        paho_reconnects: ReconnectPolicy | None = None,
        read_ahead: bool = False,
    ) -> None:
        self.url = url
        self.client_id = client_id
        self.keepalive = keepalive
        self.session = session
        self.manual_ack = manual_ack
        self.max_inflight = max_inflight
        self.paho_reconnects = paho_reconnects
        self.read_ahead = read_ahead
        #: the protocol of the next client built: the URL's, or 5 until a fall back
        self.version: MqttVersion = url.version or "5"
        if tls is not None and not url.tls and (tls.cert is not None or tls.ca is not None):
            raise MqttConfigError(f"TLS files are given but the broker URL {url} is not mqtts://")
        self._context = tls_context(tls or TlsFiles()) if url.tls else None
        if self._context is not None:
            # the TLS error that ended the latest connection (paho keeps only "connection lost")
            self._context.sslsocket_class = _recording_socket(self._record)
        self._tls_error: ssl.SSLError | None = None

    def use_tls(self, files: TlsFiles) -> None:
        """Connect with these files from the next connection on (a renewed certificate).

        Raises:
            MqttConfigError: unusable files, or a plain ``mqtt://`` URL.
        """
        if not self.url.tls:
            raise MqttConfigError(f"the broker URL {self.url} is not mqtts://")
        context = tls_context(files)
        context.sslsocket_class = _recording_socket(self._record)
        self._context = context

    # -- building and connecting ---------------------------------------------------------------
    def build(self, will: tuple[str, bytes] | None = None) -> mqtt.Client:
        """A new paho client speaking :attr:`version`; ``will`` is (topic, payload), published
        retained with QoS 1 when the connection dies without a DISCONNECT. The caller adds its
        callbacks and drives the network."""
        v5 = self.version == "5"
        options: dict[str, Any] = {
            "client_id": self.client_id,
            "protocol": mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            "clean_session": None if v5 else self.session.clean,
            "manual_ack": self.manual_ack,
            "reconnect_on_failure": self.paho_reconnects is not None,
        }
        client = (
            ReadAheadClient(CallbackAPIVersion.VERSION2, **options)
            if self.read_ahead
            else mqtt.Client(CallbackAPIVersion.VERSION2, **options)
        )
        if self.url.username:
            client.username_pw_set(self.url.username, self.url.password)
        if self._context is not None:
            client.tls_set_context(self._context)
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        if self.paho_reconnects is not None:
            # paho counts whole seconds; a 0 s minimum would double to 0 s forever
            client.reconnect_delay_set(
                max(1, round(self.paho_reconnects.minimum)),
                max(1, round(self.paho_reconnects.maximum)),
            )
        client.max_inflight_messages_set(self.max_inflight)
        client.on_pre_connect = self._pre_connect
        return client

    def connect(self, client: mqtt.Client, *, background: bool = False) -> None:
        """Send CONNECT with this side's keepalive and session.

        ``background`` leaves the TCP (and TLS) handshake to paho's network thread
        (``connect_async``); otherwise they happen now, blocking the caller.

        Raises:
            ConnectFailed: the broker cannot be reached, or the TLS handshake failed.
        """
        kwargs: dict[str, Any] = {"keepalive": self.keepalive}
        if self.version == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self.session.expiry
            if self.session.receive_maximum is not None:
                props.ReceiveMaximum = self.session.receive_maximum
            kwargs.update(clean_start=self.session.clean, properties=props)
        if background:
            client.connect_async(self.url.host, self.url.port, **kwargs)
            return
        try:
            client.connect(self.url.host, self.url.port, **kwargs)
        except OSError as err:  # ssl.SSLError and host name mismatches are OSErrors too
            if isinstance(err, ssl.SSLError):
                raise ConnectFailed(f"TLS handshake with {self.url} failed: {err}") from err
            raise ConnectFailed(f"cannot reach {self.url}: {_why(err)}") from err

    # -- after a failure -----------------------------------------------------------------------
    def fall_back(self, refusal: ReasonCode | None) -> bool:
        """After a failed connect: switch to MQTT 3.1.1 if :func:`should_fall_back` says so.

        ``refusal`` is the CONNACK's reason, or None when the connection closed before one.
        Returns True when the next client built speaks 3.1.1.
        """
        if should_fall_back(
            pinned=self.url.version,
            speaking=self.version,
            refusal=None if refusal is None else refusal.value,
            tls_failed=self._tls_error is not None,
        ):
            self.version = "3.1.1"
            return True
        return False

    @property
    def tls_error(self) -> ssl.SSLError | None:
        """The TLS error that ended the latest connection or connect attempt, if one did."""
        return self._tls_error

    def explain(self, reason: ReasonCode | str | None, *, connack: bool) -> str:
        """Why a connection ended, in words: ``reason`` (paho's, or a CONNACK's) unless TLS
        says more; ``connack`` tells whether the broker had answered CONNECT."""
        err = self._tls_error
        if err is None:
            return str(reason) if reason is not None else "the connection was closed"
        if connack or isinstance(err, ssl.SSLCertVerificationError):
            return f"TLS: {err}"
        return (
            f"the broker ended the TLS session before answering CONNECT ({err}): "
            "it may not accept our client certificate"
        )

    def _pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        self._tls_error = None

    def _record(self, err: ssl.SSLError) -> None:
        self._tls_error = err


def _recording_socket(record: Callable[[ssl.SSLError], None]) -> type[ssl.SSLSocket]:
    """An SSLSocket class that tells ``record`` about the TLS errors paho swallows (it reduces
    them to "connection lost" and logs them at most)."""

    class RecordingSSLSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            try:
                super().do_handshake(block)
            except ssl.SSLError as err:
                _note(err)
                raise

        def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
            try:
                return super().recv(buflen, flags)
            except ssl.SSLError as err:
                _note(err)
                raise

        def send(self, data: Any, flags: int = 0) -> int:
            try:
                return super().send(data, flags)
            except ssl.SSLError as err:
                _note(err)
                raise

    def _note(err: ssl.SSLError) -> None:
        # "want read/write" is a non-blocking socket's normal business, not a failure
        if not isinstance(err, ssl.SSLWantReadError | ssl.SSLWantWriteError):
            record(err)

    return RecordingSSLSocket
