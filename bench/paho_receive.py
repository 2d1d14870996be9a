"""paho's receive path for N QoS-1 PUBLISH packets (834-byte payloads) already waiting in a
socket: the stock client (automatic PUBACK, as the benchmarks' bare subscriber) or the
controller's (``ReadAheadClient``, shared property tables, manual acks). No broker, no
threads: run it under callgrind at two N; the difference of the counts over the difference
of N is the instructions per message.

    valgrind --tool=callgrind python bench/paho_receive.py stock|ours 500   # and 2500
"""

from __future__ import annotations

import socket
import struct
import sys

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

kind, n = sys.argv[1], int(sys.argv[2])
topic = b"fleet/v1/wx-station-0001/telemetry"
payload = b"x" * 834


def packet(mid: int) -> bytes:
    body = struct.pack("!H", len(topic)) + topic + struct.pack("!H", mid) + b"\x00" + payload
    length, vbi = len(body), b""
    while True:
        byte, length = length % 128, length // 128
        vbi += bytes([byte | (0x80 if length else 0)])
        if not length:
            break
    return bytes([0x32]) + vbi + body


ours_end, theirs = socket.socketpair()
for s in (ours_end, theirs):
    s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
    s.setsockopt(socket.SOL_SOCKET, 32, 64 << 20)  # SO_SNDBUFFORCE
data = b"".join(packet(1 + i % 65000) for i in range(n))
theirs.sendall(data)
ours_end.setblocking(False)
if kind == "ours":
    from kioskfleet.mqttclient import ReadAheadClient, ReadAheadSocket, share_property_tables

    share_property_tables()
    client = ReadAheadClient(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
    client._sock = ReadAheadSocket(ours_end)  # type: ignore[assignment]
else:
    import kioskfleet.mqttclient  # noqa: F401 - the same imports, not used

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client._sock = ours_end
count = [0]
client.on_message = lambda c, u, m: count.__setitem__(0, count[0] + 1)
while count[0] < n:
    client.loop_read()
print(count[0])
