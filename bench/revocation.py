"""How fast a revoked station loses the broker (decision 39): a private Mosquitto from
deploy/mosquitto/mosquitto.conf + tls.conf, a fleet CA made by the product's code, and the
controller's own BrokerControl (ACL file + SIGHUP) and kick (session takeover).

For ACL files that already hold 0, 1,000 and 10,000 revoked stations, with `--kiosks` other
kiosks connected, it measures per revocation: writing the file, the SIGHUP until the victim's
publish is refused (polled with QoS 1 publishes), the takeover until the victim's connection
closes, and the whole. Prints one JSON line per size and the ratios to the empty file.

    flock /tmp/kioskfleet-bench.lock python bench/revocation.py --rounds 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pwd
import shutil
import statistics
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

from kioskfleet.controller.brokeracl import BrokerControl, kick
from kioskfleet.controller.pki import (
    CaFiles,
    FleetCA,
    create_intermediate,
    create_root,
    issue_to_files,
)
from kioskfleet.protocol.broker_url import parse_broker_url

TLS_DIR = "/etc/mosquitto/kioskfleet/"


class Client:
    def __init__(self, port: int, ca: Path, files: CaFiles, name: str) -> None:
        self.codes: dict[int, int] = {}
        self.connected = threading.Event()
        self.closed_at: float | None = None
        self.lock = threading.Lock()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
        c.tls_set(ca_certs=str(ca), certfile=str(files.cert), keyfile=str(files.key))
        c.on_connect = lambda *a: self.connected.set()
        c.on_publish = self._puback
        c.on_disconnect = self._closed
        c.connect("127.0.0.1", port)
        c.loop_start()
        if not self.connected.wait(20):
            raise RuntimeError(f"{name} did not connect")
        self.client = c

    def _puback(self, c: Any, u: Any, mid: int, rc: Any, p: Any) -> None:
        with self.lock:
            self.codes[mid] = rc.value

    def _closed(self, *args: Any) -> None:
        self.closed_at = time.perf_counter()

    def publish_code(self, topic: str) -> int:
        info = self.client.publish(topic, b"{}", qos=1)
        deadline = time.monotonic() + 10
        while info.mid not in self.codes:
            if time.monotonic() > deadline:
                raise TimeoutError("no PUBACK")
            time.sleep(0.0005)
        return self.codes[info.mid]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    folder = Path(tempfile.mkdtemp(prefix="kf-revoke-"))
    now = dt.datetime.now(dt.UTC)
    root = create_root(folder / "root", now=now)
    fleet_files = create_intermediate(root, folder / "ca", now=now)
    ca = FleetCA.load(fleet_files, root.cert)
    pki = folder / "broker"
    issue_to_files(ca, "broker", pki, server_hosts=["127.0.0.1"], now=now, days=2)
    (pki / "fleet-chain.pem").write_bytes(fleet_files.cert.read_bytes() + root.cert.read_bytes())
    shutil.copy(ROOT / "deploy" / "mosquitto" / "fleet.acl", pki / "fleet.acl")
    broker = Mosquitto(folder / "mosquitto")
    port = free_port()
    tls = (ROOT / "deploy" / "mosquitto" / "tls.conf").read_text()
    tls = tls.replace(TLS_DIR, f"{pki}/").replace("listener 8883", f"listener {port} 127.0.0.1")
    with broker.conf.open("a") as conf:
        conf.write(tls + f"\nuser {pwd.getpwuid(os.geteuid()).pw_name}\n")
    broker.start()
    wait_port(port)
    assert broker.proc is not None
    pid_file = folder / "mosquitto.pid"
    pid_file.write_text(str(broker.proc.pid))
    control = BrokerControl(pki / "fleet.acl", pid_file=pid_file)
    url = parse_broker_url(f"mqtts://127.0.0.1:{port}")
    others = [
        Client(
            port,
            root.cert,
            issue_to_files(ca, f"wx-other-{i:04d}", folder / "k", now=now, days=2),
            f"wx-other-{i:04d}",
        )
        for i in range(args.kiosks)
    ]
    results = []
    try:
        for size in (0, 1000, 10_000):
            already = [f"wx-gone-{i:05d}" for i in range(size)]
            control.apply(already)
            rows: dict[str, list[float]] = {
                "write_s": [],
                "reload_s": [],
                "kick_s": [],
                "total_s": [],
            }
            for round_ in range(args.rounds):
                name = f"wx-victim-{size}-{round_}"
                files = issue_to_files(ca, name, folder / "k", now=now, days=2)
                victim = Client(port, root.cert, files, name)
                assert victim.publish_code(f"fleet/v1/{name}/telemetry") < 0x80
                t0 = time.perf_counter()
                took_write = control.apply([*already, name])
                while victim.publish_code(f"fleet/v1/{name}/telemetry") < 0x80:
                    pass
                t1 = time.perf_counter()
                assert kick(ca, name, broker=url, broker_ca=root.cert, now=now)
                while victim.closed_at is None:
                    time.sleep(0.0005)
                t2 = victim.closed_at
                victim.close()
                rows["write_s"].append(took_write)
                rows["reload_s"].append(t1 - t0 - took_write)
                rows["kick_s"].append(t2 - t1)
                rows["total_s"].append(t2 - t0)
            result = {
                "revoked_in_file": size,
                "kiosks_connected": args.kiosks,
                "acl_bytes": (pki / "fleet.acl").stat().st_size,
                **{k: round(statistics.median(v), 4) for k, v in rows.items()},
                "total_max_s": round(max(rows["total_s"]), 4),
            }
            log(result)
            results.append(result)
    finally:
        for other in others:
            other.close()
        broker.stop()
        shutil.rmtree(folder, ignore_errors=True)
    base = results[0]["total_s"]
    for result in results:
        result["total_vs_empty_file"] = round(result["total_s"] / base, 2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kiosks", type=int, default=200, help="other kiosks connected")
    for row in run(parser.parse_args()):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
