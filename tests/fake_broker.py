"""A scripted stand-in for an MQTT broker: it records every CONNECT it receives, byte by byte
decoded, and answers MQTT 5 CONNECTs as an old 3.1.1-only broker would. Enough to test what a
client puts on the wire (session flags, properties, will, keepalive) without a real broker."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
from dataclasses import dataclass, field
from typing import Literal

#: how a 3.1.1-only broker treats an MQTT 5 CONNECT
Refusal = Literal["connack", "connack-3.1.1", "close"]

# CONNECT property identifiers → size of their value in bytes (MQTT 5, 2.2.2.2)
_PROPERTY_SIZES = {0x11: 4, 0x21: 2, 0x22: 2, 0x27: 4, 0x17: 1, 0x19: 1, 0x18: 4, 0x01: 1}


@dataclass
class Connect:
    """One decoded CONNECT packet."""

    level: int  # 4 = MQTT 3.1.1, 5 = MQTT 5
    clean: bool  # clean session (3.1.1) / clean start (5)
    keepalive: int
    client_id: str
    properties: dict[int, int] = field(default_factory=dict)
    will_topic: str | None = None
    will_payload: bytes | None = None
    will_qos: int = 0
    will_retain: bool = False
    username: str | None = None
    password: bytes | None = None


class FakeBroker:
    """Listens on 127.0.0.1; refuses MQTT 5 (``refuse``), accepts MQTT 3.1.1 and then answers
    SUBSCRIBE and PINGREQ until the client goes.

    With ``tls`` (a server context) it speaks TLS; ``after_connack`` is sent with the CONNACK
    in one write (so, over TLS, in one record).
    """

    def __init__(
        self, refuse: Refusal, tls: ssl.SSLContext | None = None, after_connack: bytes = b""
    ) -> None:
        self.refuse = refuse
        self.tls = tls
        self.after_connack = after_connack
        self.connects: list[Connect] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeBroker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._server.close()
        self._thread.join(5)

    def url(self, query: str = "") -> str:
        return f"mqtt://127.0.0.1:{self.port}{query}"

    def _serve(self) -> None:
        self._server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError, EOFError), conn:
            if self.tls is not None:
                conn.settimeout(5)
                conn = self.tls.wrap_socket(conn, server_side=True)
            self._converse(conn)

    def _converse(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        with conn:
            kind, body = self._packet(conn)
            assert kind == 0x10, f"expected CONNECT, got {kind:#x}"
            connect = _decode_connect(body)
            self.connects.append(connect)
            if connect.level == 5:
                if self.refuse == "connack":  # reason 0x84: unsupported protocol version
                    conn.sendall(bytes([0x20, 3, 0, 0x84, 0]))
                elif self.refuse == "connack-3.1.1":  # a 3.1.1 CONNACK, return code 1
                    conn.sendall(bytes([0x20, 2, 0, 1]))
                return  # "close": not a word
            conn.sendall(bytes([0x20, 2, 0, 0]) + self.after_connack)
            while not self._stop.is_set():
                kind, body = self._packet(conn)
                if kind == 0x80:  # SUBSCRIBE → SUBACK granting QoS 1 to each filter
                    mid, filters = body[:2], _count_filters(body[2:])
                    conn.sendall(bytes([0x90, 2 + filters]) + mid + bytes([1] * filters))
                elif kind == 0xC0:  # PINGREQ
                    conn.sendall(bytes([0xD0, 0]))
                elif kind == 0xE0:  # DISCONNECT
                    return

    def _packet(self, conn: socket.socket) -> tuple[int, bytes]:
        first = self._read(conn, 1)[0]
        length, shift = 0, 0
        while True:
            byte = self._read(conn, 1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return first & 0xF0, self._read(conn, length)

    def _read(self, conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            if self._stop.is_set():
                raise EOFError
            try:
                chunk = conn.recv(n - len(data))
            except TimeoutError:
                continue
            if not chunk:
                raise EOFError
            data += chunk
        return data


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        assert len(chunk) == n, "CONNECT shorter than its fields"
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("!H", self.take(2))[0])

    def binary(self) -> bytes:
        return self.take(self.u16())

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    def properties(self) -> dict[int, int]:
        end = self.varint() + self.pos
        found: dict[int, int] = {}
        while self.pos < end:
            ident = self.u8()
            size = _PROPERTY_SIZES[ident]
            found[ident] = int.from_bytes(self.take(size), "big")
        return found


def _decode_connect(body: bytes) -> Connect:
    r = _Reader(body)
    assert r.binary() == b"MQTT"
    level, flags, keepalive = r.u8(), r.u8(), r.u16()
    properties = r.properties() if level == 5 else {}
    connect = Connect(
        level=level,
        clean=bool(flags & 0x02),
        keepalive=keepalive,
        client_id=r.binary().decode(),
        properties=properties,
    )
    if flags & 0x04:
        if level == 5:
            r.properties()
        connect.will_topic = r.binary().decode()
        connect.will_payload = r.binary()
        connect.will_qos = (flags >> 3) & 0x03
        connect.will_retain = bool(flags & 0x20)
    if flags & 0x80:
        connect.username = r.binary().decode()
    if flags & 0x40:
        connect.password = r.binary()
    return connect


def _count_filters(payload: bytes) -> int:
    r, n = _Reader(payload), 0
    while r.pos < len(payload):
        r.binary()
        r.u8()
        n += 1
    return n


def publish_packet(topic: str, payload: bytes) -> bytes:
    """An MQTT 3.1.1 PUBLISH, QoS 0 (remaining length below 128 bytes)."""
    body = struct.pack("!H", len(topic)) + topic.encode() + payload
    assert len(body) < 128
    return bytes([0x30, len(body)]) + body
