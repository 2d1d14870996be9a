"""Fleet benchmark: N simulated stations against a private Mosquitto and a real controller,
each in its own process, on one machine.

The controller is ``kioskfleet controller`` (env ``KIOSKFLEET_DB_URL``, ``KIOSKFLEET_MQTT_URL``,
``KIOSKFLEET_LISTEN``), the fleet is ``kioskfleet simulate --stations N --broker URL
--duration D --telemetry-interval 10``; the broker runs from deploy/mosquitto/mosquitto.conf.
While the fleet reports, this script samples each process's CPU and RSS (psutil, every second)
and ``/api/fleet/summary`` latency (5 requests a second); at the end it checks that every
message ``simulate`` counts as sent is in the summary's ``ingested``, exactly.

    .venv/bin/python bench/fleet.py --stations 2000 --duration 300
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any

import httpx
import psutil
from _support import (
    Mosquitto,
    free_port,
    log,
    mean,
    percentile,
    postgres_available,
    start_py_spy,
    stop_py_spy,
    summarize_collapsed,
    throwaway_postgres,
)

KIOSKFLEET = str(Path(sys.executable).with_name("kioskfleet"))


class Sampler(threading.Thread):
    """CPU (% of one core) and RSS of named processes, once a second."""

    def __init__(self, pids: dict[str, int], every: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.every = every
        self.samples: dict[str, list[tuple[float, float, float]]] = {n: [] for n in pids}
        self.fds: dict[str, int] = {}
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        for proc in self.procs.values():
            proc.cpu_percent(None)
        while not self.stop.wait(self.every):
            at = time.monotonic() - self.t0
            for name, proc in self.procs.items():
                try:
                    cpu = proc.cpu_percent(None)
                    rss = proc.memory_info().rss / 2**20
                    self.fds[name] = max(self.fds.get(name, 0), proc.num_fds())
                except psutil.NoSuchProcess:
                    continue
                self.samples[name].append((at, cpu, rss))

    def report(self, start: float, end: float) -> dict[str, dict[str, float]]:
        """Mean and peak CPU, mean and peak RSS (MB) per process within [start, end] s."""
        out = {}
        for name, rows in self.samples.items():
            window = [r for r in rows if start <= r[0] <= end] or rows
            cpus, rss = [r[1] for r in window], [r[2] for r in window]
            out[name] = {
                "cpu_mean": round(mean(cpus), 1),
                "cpu_p95": round(percentile(cpus, 95), 1),
                "rss_mb_mean": round(mean(rss), 1),
                "rss_mb_max": round(max(rss, default=float("nan")), 1),
                "fds_max": self.fds.get(name, 0),
            }
        return out


def wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the controller exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the controller did not become healthy")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--telemetry-interval", type=float, default=10.0)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--rate", type=float, default=5.0, help="summary requests per second")
    parser.add_argument(
        "--profile", type=Path, help="py-spy controller and simulator for 30 s mid-run into DIR"
    )
    args = parser.parse_args()
    if args.db == "postgres" and (why := postgres_available()):
        raise SystemExit(f"PostgreSQL not reachable: {why}")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="kf-bench-fleet-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        broker = Mosquitto(work / "mosquitto").start()
        stack.callback(broker.stop)
        db_url = stack.enter_context(
            throwaway_postgres()
            if args.db == "postgres"
            else nullcontext(f"sqlite:///{work / 'controller.db'}")
        )
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "KIOSKFLEET_DB_URL": db_url,
            "KIOSKFLEET_MQTT_URL": broker.url,
            "KIOSKFLEET_LISTEN": f"127.0.0.1:{port}",
        }
        ctl_log = (work / "controller.log").open("wb")
        controller = subprocess.Popen(
            [KIOSKFLEET, "controller"], env=env, stdout=ctl_log, stderr=ctl_log, cwd=work
        )
        stack.callback(_terminate, controller)
        wait_healthy(base, controller)
        log(f"controller up at {base}, broker {broker.url}, database {args.db}")

        sim_log = (work / "simulate.log").open("wb")
        sim_cmd = [
            KIOSKFLEET,
            "simulate",
            "--stations",
            str(args.stations),
            "--broker",
            broker.url,
            "--duration",
            f"{args.duration:g}",
            "--telemetry-interval",
            f"{args.telemetry_interval:g}",
        ]
        simulator = subprocess.Popen(sim_cmd, stdout=subprocess.PIPE, stderr=sim_log, cwd=work)
        stack.callback(_terminate, simulator)
        assert broker.proc is not None
        pids = {"controller": controller.pid, "simulator": simulator.pid}
        pids["mosquitto"] = broker.proc.pid
        # the controller's ingest writer runs in a child process of its own (decision 14)
        for child in psutil.Process(controller.pid).children():
            if "spawn_main" in " ".join(child.cmdline()):
                pids["controller_writer"] = child.pid
        sampler = Sampler(pids)
        sampler.start()
        t0 = sampler.t0
        log("simulator started: " + " ".join(sim_cmd))

        latencies: list[tuple[float, float]] = []
        timeline: list[dict[str, Any]] = []
        spies: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        profile_at = args.duration / 2
        errors = 0
        with httpx.Client(base_url=base, timeout=10) as http:
            next_at = time.monotonic()
            while simulator.poll() is None:
                now = time.monotonic() - t0
                if args.profile and not spies and now >= profile_at:
                    for name, pid in (("controller", controller.pid), ("simulator", simulator.pid)):
                        out = args.profile / f"fleet-{name}.txt"
                        spies.append((name, start_py_spy(pid, out, duration=30), out))
                    log("py-spy recording 30 s of controller and simulator")
                started = time.perf_counter()
                try:
                    response = http.get("/api/fleet/summary")
                    response.raise_for_status()
                    summary = response.json()
                except httpx.HTTPError:
                    errors += 1
                    summary = None
                latencies.append((now, (time.perf_counter() - started) * 1000))
                if summary is not None and (not timeline or now - timeline[-1]["t"] >= 10):
                    timeline.append(
                        {
                            "t": round(now, 1),
                            "online": summary["online"],
                            "stations": summary["stations"],
                            "telemetry": summary["ingested"]["telemetry"],
                        }
                    )
                    log(json.dumps(timeline[-1]))
                next_at += 1 / args.rate
                time.sleep(max(0.0, next_at - time.monotonic()))
        ended = time.monotonic() - t0
        sampler.stop.set()
        out_text = simulator.stdout.read().decode() if simulator.stdout else ""
        lines = [line for line in out_text.splitlines() if line.startswith("{")]
        if simulator.returncode != 0 or not lines:
            raise RuntimeError(f"simulate failed ({simulator.returncode}): {out_text[-2000:]}")
        sim_result = json.loads(lines[-1])
        sent = sim_result["sent"]
        # the simulator waited for every confirmation, so the summary must already agree
        final = httpx.get(f"{base}/api/fleet/summary", timeout=10).json()
        deadline = time.monotonic() + 30
        while final["ingested"] != sent and time.monotonic() < deadline:
            time.sleep(0.5)
            final = httpx.get(f"{base}/api/fleet/summary", timeout=10).json()
        batches = _batch_stats(base)
        profiles = {}
        for name, spy, path in spies:
            stop_py_spy(spy)
            if path.exists():
                profiles[name] = summarize_collapsed(path, top=15)

        ramp = min(10.0, args.stations / 200)
        reporting = [ms for at, ms in latencies if ramp <= at <= args.duration]
        resources = sampler.report(ramp, args.duration)
        sim_res = resources["simulator"]
        if "controller_writer" in resources:
            both = (resources["controller"], resources["controller_writer"])
            resources["controller_total"] = {
                "cpu_mean": round(sum(r["cpu_mean"] for r in both), 1),
                "rss_mb_max": round(sum(r["rss_mb_max"] for r in both), 1),
            }
        result: dict[str, Any] = {
            "bench": "fleet",
            "stations": args.stations,
            "duration_s": args.duration,
            "telemetry_interval_s": args.telemetry_interval,
            "db": args.db,
            "wall_s": round(ended, 1),
            "summary_latency_ms": {
                "samples": len(reporting),
                "p50": round(percentile(reporting, 50), 1),
                "p95": round(percentile(reporting, 95), 1),
                "p99": round(percentile(reporting, 99), 1),
                "max": round(max(reporting, default=float("nan")), 1),
                "errors": errors,
            },
            "resources": resources,
            "simulator_per_station": {
                "cpu_percent": round(sim_res["cpu_mean"] / args.stations, 4),
                "rss_kb": round(sim_res["rss_mb_max"] * 1024 / args.stations, 1),
            },
            "sent": sent,
            "unconfirmed": sim_result.get("unconfirmed"),
            "connected": sim_result.get("connected"),
            "ingested": final["ingested"],
            "final_summary": {k: final[k] for k in ("stations", "online", "offline", "rejected")},
            "accounted": final["ingested"] == sent,
            "ingest_batches": batches,
            "timeline": timeline,
        }
        if profiles:
            result["profiles"] = profiles
        print(json.dumps(result, separators=(",", ":")))
        return 0 if result["accounted"] else 1


def _batch_stats(base: str) -> dict[str, float]:
    """How the controller's writer batched: batches, mean messages and seconds per batch."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("kioskfleet_ingest_batch_seconds_count", "kioskfleet_ingest_batch_seconds_sum"):
            values[name.rsplit("_", 1)[1]] = float(value)
        elif name.startswith("kioskfleet_ingested_messages_total{"):
            values["messages"] = values.get("messages", 0.0) + float(value)
    count = values.get("count", 0.0) or 1.0
    return {
        "batches": values.get("count", 0.0),
        "stored_per_batch": round(values.get("messages", 0.0) / count, 2),
        "ms_per_batch": round(values.get("sum", 0.0) / count * 1000, 2),
    }


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


if __name__ == "__main__":
    raise SystemExit(main())
