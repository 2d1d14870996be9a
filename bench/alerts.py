"""Alert latency: from the broker accepting a fault to the alert being listed by the API.

A fleet of ``--stations`` reports to a real controller through a private Mosquitto: all but
``--probes`` of them are ``kioskfleet simulate`` (telemetry every 10 s, over its own
processes); the probes are stations this script speaks for, with the real agent's births and
telemetry (bench/_support.py ``StationPayloads``). Each probe in turn reports a printer fault in
an ``events`` message (a ``device_status`` event, QoS 1): the clock starts when the broker's
PUBACK for it arrives and stops when ``GET /api/alerts?state=open&station=…`` lists an alert
with that condition; then the fault is cleared and the time until the alert is resolved is
taken the same way. Each probe reports three different faults (``paper_out``, ``cover_open``,
``paper_jam``), once each, so no condition flaps. The API is polled every 10 ms per probe;
``--workers`` probes are in flight at once.

    .venv/bin/python bench/alerts.py --stations 2000 --db sqlite
    .venv/bin/python bench/alerts.py --stations 2000 --db postgres

Prints one JSON line: p50/p90/p99/max of both latencies (seconds), the samples, and whether
every fault was listed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from _support import (
    BENCH_AUTH,
    KIOSKFLEET,
    StationPayloads,
    log,
    percentile,
    postgres_available,
    start_controller,
    terminate,
)

from kioskfleet.fleetsim.fleet import wuxi_fleet
from kioskfleet.protocol.topics import station_topic

#: (fault, the printer's state and paper supply while it lasts)
FAULTS = (
    ("paper_out", "user_error", "out"),
    ("cover_open", "user_error", "full"),
    ("paper_jam", "user_error", "jammed"),
)


class Probe:
    """One station this script speaks for: its session, seq and printer slot."""

    def __init__(self, identity: Any, session: int) -> None:
        self.payloads = StationPayloads(
            identity, session, {"disk_percent": 41.0, "temperature_c": 38.0}
        )
        self.station = identity.station
        self.session = session
        self.seq = 0
        self.lock = threading.Lock()
        self.printer = next(
            slot for slot, status in self.payloads.devices.items() if status["device"] == "printer"
        )

    def next_seq(self) -> int:
        with self.lock:
            self.seq += 1
            return self.seq

    def printer_event(self, fault: str | None) -> bytes:
        healthy = self.payloads.devices[self.printer]
        status = dict(healthy)
        if fault is not None:
            state, paper = next((s, p) for f, s, p in FAULTS if f == fault)
            status.update(state=state, faults=[fault], supplies={"paper": paper})
        body = {
            "v": 1,
            "station": self.station,
            "session": self.session,
            "seq": self.next_seq(),
            "ts": time.time(),
            "events": [{"type": "device_status", "device": self.printer, "status": status}],
        }
        return json.dumps(body, separators=(",", ":")).encode()


class Publisher:
    """One paho client publishing for every probe; ``publish`` returns when the broker's
    PUBACK arrived, and when that was (``time.monotonic``)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("mqtt://").rsplit(":", 1)
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="bench-alerts-probes", clean_session=True
        )
        self.client.max_inflight_messages_set(1000)
        self.acked: dict[int, float] = {}
        self.cond = threading.Condition()
        self.client.on_publish = self._on_publish
        self.client.connect(host, int(port))
        self.client.loop_start()

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with self.cond:
            self.acked[mid] = time.monotonic()
            self.cond.notify_all()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> float:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self.cond:
            if not self.cond.wait_for(lambda: info.mid in self.acked, timeout=30):
                raise RuntimeError(f"no PUBACK for {topic} in 30 s")
            return self.acked.pop(info.mid)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def wait_listed(
    http: httpx.Client, station: str, condition: str, *, state: str, deadline: float
) -> float | None:
    """Poll until ``station`` has an alert of ``condition`` in ``state``; when it was seen."""
    while time.monotonic() < deadline:
        reply = http.get("/api/alerts", params={"state": state, "station": station})
        reply.raise_for_status()
        if any(item["condition"] == condition for item in reply.json()["items"]):
            return time.monotonic()
        time.sleep(0.01)
    return None


def run_probe(
    probe: Probe, publisher: Publisher, http: httpx.Client, timeout: float
) -> list[dict[str, Any]]:
    """Each fault once: open → listed, clear → resolved."""
    samples: list[dict[str, Any]] = []
    topic = station_topic(probe.station, "events")
    for fault, _, _ in FAULTS:
        accepted = publisher.publish(topic, probe.printer_event(fault))
        listed = wait_listed(http, probe.station, fault, state="open", deadline=accepted + timeout)
        cleared = publisher.publish(topic, probe.printer_event(None))
        resolved = wait_listed(
            http, probe.station, fault, state="resolved", deadline=cleared + timeout
        )
        samples.append(
            {
                "station": probe.station,
                "fault": fault,
                "open_s": None if listed is None else listed - accepted,
                "resolve_s": None if resolved is None else resolved - cleared,
            }
        )
    return samples


def wait_online(http: httpx.Client, expected: int, timeout: float) -> int:
    """Wait until the summary counts ``expected`` stations online (or degraded)."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        summary = http.get("/api/fleet/summary").json()
        seen = summary["online"] + summary["degraded"]
        if seen >= expected:
            return seen
        time.sleep(1.0)
    return seen


def stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "p50": round(percentile(values, 50), 4),
        "p90": round(percentile(values, 90), 4),
        "p99": round(percentile(values, 99), 4),
        "max": round(max(values), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=2000, help="the whole fleet")
    parser.add_argument("--probes", type=int, default=100, help="stations that report faults")
    parser.add_argument("--workers", type=int, default=8, help="probes in flight at once")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per fault at most")
    args = parser.parse_args()
    if args.probes >= args.stations:
        raise SystemExit("--probes must be fewer than --stations")
    if args.db == "postgres" and (why := postgres_available()):
        raise SystemExit(f"PostgreSQL not reachable: {why}")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    simulated = args.stations - args.probes
    with tempfile.TemporaryDirectory(prefix="kf-bench-alerts-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        run = start_controller(stack, work, args.db)
        broker, base = run.broker, run.base
        duration = 180 + args.probes * len(FAULTS) * 2 * args.timeout / args.workers
        sim_log = (work / "simulate.log").open("wb")
        simulator = subprocess.Popen(
            [
                KIOSKFLEET,
                "simulate",
                "--stations",
                str(simulated),
                "--broker",
                broker.url,
                "--duration",
                f"{duration:.0f}",
                "--telemetry-interval",
                "10",
            ],
            stdout=subprocess.PIPE,
            stderr=sim_log,
            cwd=work,
        )
        stack.callback(terminate, simulator)

        publisher = Publisher(broker.url)
        stack.callback(publisher.close)
        session = int(time.time())
        # long telemetry interval: a probe stays online on one telemetry message
        identities = wuxi_fleet(args.probes, seed=97, id_prefix="probe", telemetry_interval=3600)
        probes = [Probe(identity, session) for identity in identities]
        for probe in probes:
            publisher.publish(
                station_topic(probe.station, "state"), probe.payloads.birth(), retain=True
            )
            publisher.publish(
                station_topic(probe.station, "telemetry"),
                probe.payloads.telemetry(probe.next_seq()),
            )
        http = stack.enter_context(httpx.Client(base_url=base, timeout=10, headers=BENCH_AUTH))
        online = wait_online(http, args.stations, timeout=120)
        log(f"{online} of {args.stations} stations online; probing")

        samples: list[dict[str, Any]] = []
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
            clients = [
                stack.enter_context(httpx.Client(base_url=base, timeout=10, headers=BENCH_AUTH))
                for _ in range(args.workers)
            ]
            futures = [
                pool.submit(run_probe, probe, publisher, clients[i % args.workers], args.timeout)
                for i, probe in enumerate(probes)
            ]
            for future in futures:
                samples.extend(future.result())
        elapsed = time.monotonic() - started
        summary = http.get("/api/fleet/summary").json()

    opened = [s["open_s"] for s in samples if s["open_s"] is not None]
    resolved = [s["resolve_s"] for s in samples if s["resolve_s"] is not None]
    result = {
        "bench": "alerts",
        "db": args.db,
        "stations": args.stations,
        "probes": args.probes,
        "online_before": online,
        "faults": len(samples),
        "listed": len(opened),
        "resolved": len(resolved),
        "open_latency_s": stats(opened),
        "resolve_latency_s": stats(resolved),
        "probing_s": round(elapsed, 1),
        "open_alerts_after": summary.get("open_alerts"),
        "target": "p99 open latency < 1 s",
        "met": len(opened) == len(samples) and bool(opened) and percentile(opened, 99) < 1.0,
    }
    print(json.dumps(result))
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
