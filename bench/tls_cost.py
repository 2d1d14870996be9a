"""What TLS with client certificates costs (issue 12): connecting a fleet, the broker's CPU and
memory, the per-message cost on the broker and on a consumer, the fleet CA's signing.

One private Mosquitto from deploy/mosquitto/mosquitto.conf + tls.conf (plain listener and mTLS
listener side by side, the same ACL file), a fleet CA made by controller/pki.py. Measured in
one run, plain and TLS side by side:

- connect: N connections kept open (TCP, TLS with the kiosk's own certificate, MQTT 3.1.1
  CONNECT, CONNACK) from `--workers` processes; the broker's CPU (from /proc) and RSS growth,
  and the wall time; scaled to 10,000 stations per broker CPU second;
- messages: one publisher sends M QoS-1 messages of a telemetry's size to one subscriber
  (paho, as the controller's MQTT side); the broker's and the subscriber's CPU per message;
- signing: the fleet CA signing kiosk certificates (the controller's cost per enrolment).

    PYTHONPATH=src flock /tmp/kioskfleet-bench.lock .venv/bin/python bench/tls_cost.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import pwd
import shutil
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _support import ROOT, Mosquitto, free_port, log, wait_port

from kioskfleet.controller.pki import (
    CaFiles,
    FleetCA,
    create_intermediate,
    create_root,
    issue_to_files,
    parse_csr,
)

TLS_DIR = "/etc/mosquitto/kioskfleet/"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    var = b"\x00\x04MQTT\x04\x02\x00\x00"  # 3.1.1, clean session, no keepalive (held idle)
    payload = struct.pack("!H", len(cid)) + cid
    body = var + payload
    return bytes([0x10, len(body)]) + body


def _open(args: tuple[int, bool, list[tuple[str, str, str]], str, Any, Any]) -> None:
    """A worker: open the given connections, report, hold them until told."""
    port, tls, idents, ca, queue, go = args
    held = []
    started = time.perf_counter()
    for name, cert, key in idents:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        if tls:
            context = ssl.create_default_context(cafile=ca)
            context.load_cert_chain(cert, key)
            sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
        sock.sendall(_connect_packet(name))
        answer = sock.recv(4)
        if answer[:1] != b"\x20" or answer[3:4] != b"\x00":
            raise RuntimeError(f"{name}: no CONNACK ({answer!r})")
        held.append(sock)
    queue.put(time.perf_counter() - started)
    go.wait(600)  # the parent says when to let go
    for sock in held:
        sock.close()


def connect_phase(
    broker_pid: int, port: int, tls: bool, idents: list[tuple[str, str, str]], ca: str, workers: int
) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    queues = [ctx.Queue() for _ in range(workers)]
    go = ctx.Event()
    parts = [idents[i::workers] for i in range(workers)]
    cpu0, rss0, t0 = cpu_s(broker_pid), rss_mb(broker_pid), time.perf_counter()
    procs = [
        ctx.Process(target=_open, args=((port, tls, part, ca, q, go),))
        for part, q in zip(parts, queues, strict=True)
    ]
    for p in procs:
        p.start()
    for q in queues:
        q.get(timeout=600)
    wall = time.perf_counter() - t0
    cpu1, rss1 = cpu_s(broker_pid), rss_mb(broker_pid)
    go.set()
    for p in procs:
        p.join(60)
    time.sleep(1.0)  # let the broker close them
    n = len(idents)
    return {
        "connections": n,
        "wall_s": round(wall, 2),
        "broker_cpu_s": round(cpu1 - cpu0, 2),
        "broker_cpu_us_per_connection": round((cpu1 - cpu0) / n * 1e6),
        "broker_rss_kb_per_connection": round((rss1 - rss0) * 1024 / n, 1),
        "broker_cpu_s_for_10000": round((cpu1 - cpu0) / n * 10_000, 1),
    }


def message_phase(
    broker_pid: int, port: int, tls: bool, files: dict[str, CaFiles], ca: str, count: int
) -> dict[str, Any]:
    received = threading.Event()
    got = [0]
    sub_cpu = [0.0]

    def client(name: str) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
        if tls:
            c.tls_set(ca_certs=ca, certfile=str(files[name].cert), keyfile=str(files[name].key))
        return c

    sub = client("controller")
    pub = client("wx-bench-pub")

    def on_message(*a: Any) -> None:
        got[0] += 1
        if got[0] == 1:
            sub_cpu[0] = time.thread_time()
        if got[0] == count:
            sub_cpu[0] = time.thread_time() - sub_cpu[0]
            received.set()

    subscribed = threading.Event()
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect("127.0.0.1", port)
    sub.subscribe("fleet/v1/+/telemetry", qos=1)
    sub.loop_start()
    if not subscribed.wait(10):
        raise RuntimeError("no SUBACK")
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    payload = b"x" * 850  # a lean telemetry message (decision 30)
    cpu0, t0 = cpu_s(broker_pid), time.perf_counter()
    for _ in range(count):
        pub.publish("fleet/v1/wx-bench-pub/telemetry", payload, qos=1)
    if not received.wait(300):
        raise RuntimeError(f"received {got[0]} of {count}")
    wall, cpu = time.perf_counter() - t0, cpu_s(broker_pid) - cpu0
    for c in (sub, pub):
        c.loop_stop()
        c.disconnect()
    return {
        "messages": count,
        "msg_per_s": round(count / wall),
        "broker_cpu_us_per_message": round(cpu / count * 1e6, 1),
        "subscriber_cpu_us_per_message": round(sub_cpu[0] / (count - 1) * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--messages", type=int, default=20000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="kf-tls-"))
    now = dt.datetime.now(dt.UTC)
    root = create_root(folder / "root", now=now)
    fleet = create_intermediate(root, folder / "ca", now=now)
    ca = FleetCA.load(fleet, root.cert)
    pki = folder / "broker"
    issue_to_files(ca, "broker", pki, server_hosts=["127.0.0.1"], now=now, days=2)
    (pki / "fleet-chain.pem").write_bytes(fleet.cert.read_bytes() + root.cert.read_bytes())
    shutil.copy(ROOT / "deploy" / "mosquitto" / "fleet.acl", pki / "fleet.acl")

    # signing, as an enrolment does it (parse and check the CSR, sign)
    from kioskfleet.agent.identity import new_key_and_csr

    csrs = [new_key_and_csr(f"wx-sign-{i:04d}")[1] for i in range(300)]
    t0 = time.process_time()
    for i, csr in enumerate(csrs):
        ca.sign_kiosk(parse_csr(csr), f"wx-sign-{i:04d}", now=now)
    signing_us = (time.process_time() - t0) / len(csrs) * 1e6
    log(f"signing: {signing_us:.0f} µs CPU per kiosk certificate")

    log(f"issuing {args.connections} kiosk certificates")
    names = [f"wx-bench-{i:05d}" for i in range(args.connections)]
    files = {n: issue_to_files(ca, n, folder / "kiosks", now=now, days=2) for n in names}
    for extra in ("controller", "wx-bench-pub"):
        files[extra] = issue_to_files(ca, extra, folder / "kiosks", now=now, days=2)
    idents = [(n, str(files[n].cert), str(files[n].key)) for n in names]

    broker = Mosquitto(folder / "mosquitto")
    port = free_port()
    tls = (ROOT / "deploy" / "mosquitto" / "tls.conf").read_text()
    tls = tls.replace(TLS_DIR, f"{pki}/").replace("listener 8883", f"listener {port} 127.0.0.1")
    with broker.conf.open("a") as conf:
        conf.write(tls + f"\nuser {pwd.getpwuid(os.geteuid()).pw_name}\n")
    broker.start()
    wait_port(port)
    assert broker.proc is not None
    pid = broker.proc.pid
    results: dict[str, Any] = {"signing_us_per_certificate": round(signing_us)}
    try:
        for label, listener, is_tls in (("plain", broker.port, False), ("tls", port, True)):
            log(f"connect {label}")
            results[f"connect_{label}"] = connect_phase(
                pid, listener, is_tls, idents, str(root.cert), args.workers
            )
            log(results[f"connect_{label}"])
        # the plain listener's anonymous clients may not publish (fleet.acl): messages go
        # over TLS only, compared with a plain listener without the ACL below
        log("messages tls")
        results["messages_tls"] = message_phase(
            pid, port, True, files, str(root.cert), args.messages
        )
        log(results["messages_tls"])
    finally:
        broker.stop()
    # plain messages: the same broker configuration without the ACL file and TLS listener
    plain = Mosquitto(folder / "mosquitto-plain").start()
    try:
        assert plain.proc is not None
        log("messages plain")
        results["messages_plain"] = message_phase(
            plain.proc.pid, plain.port, False, files, str(root.cert), args.messages
        )
        log(results["messages_plain"])
    finally:
        plain.stop()
        shutil.rmtree(folder, ignore_errors=True)
    cp, ct = results["connect_plain"], results["connect_tls"]
    mp_, mt = results["messages_plain"], results["messages_tls"]
    results["ratios_tls_over_plain"] = {
        "broker_cpu_per_connection": round(
            ct["broker_cpu_us_per_connection"] / max(cp["broker_cpu_us_per_connection"], 1), 1
        ),
        "connect_wall": round(ct["wall_s"] / max(cp["wall_s"], 0.01), 1),
        "broker_rss_per_connection": round(
            ct["broker_rss_kb_per_connection"] / max(cp["broker_rss_kb_per_connection"], 0.1), 1
        ),
        "broker_cpu_per_message": round(
            mt["broker_cpu_us_per_message"] / max(mp_["broker_cpu_us_per_message"], 0.1), 2
        ),
        "subscriber_cpu_per_message": round(
            mt["subscriber_cpu_us_per_message"] / max(mp_["subscriber_cpu_us_per_message"], 0.1), 2
        ),
    }
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
