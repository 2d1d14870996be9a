"""Fleet benchmark: N simulated stations against a private Mosquitto and a real controller,
each in its own process, on one machine.

The controller is ``kioskfleet controller`` (env ``KIOSKFLEET_DB_URL``, ``KIOSKFLEET_MQTT_URL``,
``KIOSKFLEET_LISTEN``), the fleet is ``kioskfleet simulate --stations N --broker URL
--duration D --telemetry-interval 10`` (over as many processes as it chooses, or
``--processes``); the broker runs from deploy/mosquitto/mosquitto.conf. While the fleet
reports, this script samples CPU and RSS (psutil, every second) of the controller, its writer,
the simulator (all its processes), Mosquitto and the PostgreSQL server, and, ``--rate`` times
a second, the latency of ``/api/fleet/summary``, ``/api/stations?limit=100`` and
``/api/stations/{id}`` of a random station. On PostgreSQL it records mid-run the plans
(``EXPLAIN (ANALYZE, BUFFERS)``) of the queries behind those three routes and the station
table's statistics. At the end it checks that every station was online while the fleet
reported and that every message ``simulate`` counts as sent is in the summary's
``ingested``, exactly.

With ``--rollout`` the controller hosts a signed update repository (the demo's kind: online
release key allowed), a software release is published, the simulated stations run the real
updater (``simulate --update-url … --update-root …``), and once every station is online a
rollout of that release to all of them starts (canaries, 10/50/100 %, threshold 0.2): each
station downloads through TUF from the controller, switches, restarts (a new agent session)
and soaks. Its progress is sampled every 10 s into the timeline and its end state recorded.

    .venv/bin/python bench/fleet.py --stations 2000 --duration 300
    .venv/bin/python bench/fleet.py --stations 10000 --duration 300 --db postgres
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import resource
import subprocess
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import psutil
from _support import (
    BENCH_AUTH,
    KIOSKFLEET,
    log,
    mean,
    percentile,
    postgres_available,
    start_controller,
    start_py_spy,
    stop_py_spy,
    summarize_collapsed,
    terminate,
)


class Sampler(threading.Thread):
    """CPU (% of one core) and RSS of named process groups, once a second: a group is a
    process and, for the simulator, the processes it spawns; ``postgres`` is every process of
    that name (the server is shared, so its share includes whatever else it serves)."""

    def __init__(self, pids: dict[str, int], every: float = 1.0, *, postgres: bool = False):
        super().__init__(daemon=True)
        self.roots = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.procs: dict[str, dict[int, psutil.Process]] = {
            name: {proc.pid: proc} for name, proc in self.roots.items()
        }
        if postgres:
            self.procs["postgres_server"] = {}
        self.every = every
        self.samples: dict[str, list[tuple[float, float, float]]] = {n: [] for n in self.procs}
        self.fds: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def _refresh(self) -> None:
        """New members of each group (the simulator's children appear after a while)."""
        sim = self.roots.get("simulator")
        if sim is not None:
            with contextlib.suppress(psutil.Error):
                for child in sim.children():
                    self.procs["simulator"].setdefault(child.pid, child)
        if "postgres_server" in self.procs:
            for proc in psutil.process_iter(["name"]):
                if proc.info["name"] == "postgres":
                    self.procs["postgres_server"].setdefault(proc.pid, proc)

    def run(self) -> None:
        self._refresh()
        for group in self.procs.values():
            for proc in group.values():
                with contextlib.suppress(psutil.Error):
                    proc.cpu_percent(None)
        while not self.stop.wait(self.every):
            at = time.monotonic() - self.t0
            self._refresh()
            for name, group in self.procs.items():
                cpu = rss = 0.0
                fds = alive = 0
                for pid, proc in list(group.items()):
                    try:
                        cpu += proc.cpu_percent(None)
                        rss += proc.memory_info().rss / 2**20
                        if name != "postgres_server":
                            fds += proc.num_fds()
                        alive += 1
                    except psutil.Error:
                        del group[pid]
                if alive:
                    self.samples[name].append((at, cpu, rss))
                    self.fds[name] = max(self.fds.get(name, 0), fds)
                    self.counts[name] = max(self.counts.get(name, 0), alive)

    def report(self, start: float, end: float) -> dict[str, dict[str, float]]:
        """Mean and p95 CPU, mean and peak RSS (MB) per group within [start, end] s."""
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
                "processes": self.counts.get(name, 0),
            }
        return out


class UpdateBench:
    """``--rollout``: the repository, the release, the rollout and what became of it."""

    def __init__(self, work: Path) -> None:
        from kioskfleet.controller.tufrepo.service import create_demo_repository, open_repository

        tuf = create_demo_repository(work / "tuf")
        self.root = work / "update-root.json"
        self.root.write_bytes(open_repository(tuf).root_bytes(1))
        #: the controller's ``[tuf]`` section, as environment variables
        self.env = {
            "KIOSKFLEET_TUF__DIR": str(tuf.dir),
            "KIOSKFLEET_TUF__ONLINE_KEYS": str(tuf.online_keys),
            "KIOSKFLEET_TUF__ONLINE_RELEASE": "true",
        }
        self.release: str | None = None
        self.rollout: str | None = None
        self.started_at: float | None = None
        self.completed_at: float | None = None

    def publish(self, base: str) -> None:
        """Upload a small software release (signed by the controller's online key)."""
        from kioskfleet import __version__
        from kioskfleet.updates.software import build_software

        version = f"{__version__}-bench.1"
        data = build_software(version, {"bin/kioskfleet-agent": f"agent {version}\n".encode()})
        answer = httpx.post(
            f"{base}/api/releases",
            data={"kind": "software", "version": version},
            files={"file": ("release.tar.gz", data, "application/gzip")},
            timeout=60,
            headers=BENCH_AUTH,
        )
        answer.raise_for_status()
        self.release = str(answer.json()["id"])
        log(f"release {self.release} published ({version})")

    def start(self, http: httpx.Client, now: float) -> None:
        """Start the rollout to every station (once)."""
        if self.rollout is not None:
            return
        answer = http.post(
            "/api/rollouts",
            json={"release": self.release, "waves": [10, 50, 100], "failure_threshold": 0.2},
            timeout=120,
        )
        answer.raise_for_status()
        self.rollout, self.started_at = str(answer.json()["id"]), now
        log(f"rollout {self.rollout} started at {now:.1f} s")

    def sample(self, http: httpx.Client, now: float) -> dict[str, Any]:
        """The rollout's state for the timeline (the list's entry: no per-station rows)."""
        if self.rollout is None:
            return {}
        try:
            items = http.get("/api/rollouts", params={"limit": 1}, timeout=30).json()["items"]
        except httpx.HTTPError:
            return {"rollout": "unanswered"}
        mine = next((r for r in items if r["id"] == self.rollout), None)
        if mine is None:
            return {}
        if mine["state"] == "completed" and self.completed_at is None:
            self.completed_at = now
        counts = {k: v for k, v in mine["summary"].items() if v}
        return {"rollout": mine["state"], "wave": mine["wave"], "progress": counts}

    def report(self, http: httpx.Client) -> dict[str, Any]:
        """What became of the rollout by the end of the run."""
        with http:
            listed = http.get("/api/rollouts", params={"limit": 1}).json()["items"]
        mine = next((r for r in listed if r["id"] == self.rollout), None)
        return {
            "release": self.release,
            "id": self.rollout,
            "started_at_s": None if self.started_at is None else round(self.started_at, 1),
            "completed_at_s": None if self.completed_at is None else round(self.completed_at, 1),
            "state": mine["state"] if mine else None,
            "wave": mine["wave"] if mine else None,
            "reason": mine["reason"] if mine else None,
            "summary": mine["summary"] if mine else None,
        }


#: the routes a dashboard polls while the fleet reports, timed side by side
ROUTES = ("summary", "list", "detail")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--telemetry-interval", type=float, default=10.0)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--rate", type=float, default=2.0, help="rounds of the three reads per second"
    )
    parser.add_argument("--processes", type=int, help="simulate --processes (default: its own)")
    parser.add_argument("--seed", type=int, default=1, help="which stations' details are read")
    parser.add_argument(
        "--profile", type=Path, help="py-spy controller and simulator for 30 s mid-run into DIR"
    )
    parser.add_argument(
        "--rollout",
        action="store_true",
        help="the updater in every station: roll a software release out to all of them",
    )
    args = parser.parse_args()
    if args.db == "postgres" and (why := postgres_available()):
        raise SystemExit(f"PostgreSQL not reachable: {why}")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    # a socket per station in the broker and in the simulator: raise the soft limit to the
    # hard one, which the broker and the simulator inherit
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile != resource.RLIM_INFINITY and nofile < args.stations + 1000:
        log(f"warning: open files limited to {nofile}; the broker needs one per station")

    with tempfile.TemporaryDirectory(prefix="kf-bench-fleet-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        updates = UpdateBench(work) if args.rollout else None
        run = start_controller(stack, work, args.db, updates.env if updates else None)
        broker, db_url, base, controller = run.broker, run.db_url, run.base, run.proc
        log(f"controller up at {base}, broker {broker.url}, database {args.db}")
        if updates is not None:
            updates.publish(base)

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
        if args.processes:
            sim_cmd += ["--processes", str(args.processes)]
        if updates is not None:
            sim_cmd += ["--update-url", f"{base}/tuf/", "--update-root", str(updates.root)]
        simulator = subprocess.Popen(sim_cmd, stdout=subprocess.PIPE, stderr=sim_log, cwd=work)
        stack.callback(terminate, simulator)
        assert broker.proc is not None
        pids = {"controller": controller.pid, "simulator": simulator.pid}
        pids["mosquitto"] = broker.proc.pid
        # the controller's ingest writer runs in a child process of its own (decision 14)
        for child in psutil.Process(controller.pid).children():
            if "spawn_main" in " ".join(child.cmdline()):
                pids["controller_writer"] = child.pid
        sampler = Sampler(pids, postgres=args.db == "postgres")
        sampler.start()
        t0 = sampler.t0
        log("simulator started: " + " ".join(sim_cmd))

        ids = [f"sim-{n:04d}" for n in range(1, args.stations + 1)]
        pick = random.Random(args.seed)
        latencies: dict[str, list[tuple[float, float]]] = {route: [] for route in ROUTES}
        timeline: list[dict[str, Any]] = []
        spies: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        plans: dict[str, Any] = {}
        middle = args.duration / 2
        failures: dict[str, list[float]] = {route: [] for route in ROUTES}
        # every station online: from the first moment all were, the fewest online after
        all_online_at: float | None = None
        online_min: int | None = None
        with httpx.Client(base_url=base, timeout=10, headers=BENCH_AUTH) as http:
            next_at = time.monotonic()
            while simulator.poll() is None:
                now = time.monotonic() - t0
                if args.profile and not spies and now >= middle:
                    for name, pid in (("controller", controller.pid), ("simulator", simulator.pid)):
                        out = args.profile / f"fleet-{name}.txt"
                        spies.append((name, start_py_spy(pid, out, duration=30), out))
                    log("py-spy recording 30 s of controller and simulator")
                if args.db == "postgres" and not plans and now >= middle:
                    plans = explain_reads(db_url, pick.choice(ids))
                    log("plans recorded: " + json.dumps(plans["ms"]))
                summary = None
                for route, path in (
                    ("summary", "/api/fleet/summary"),
                    ("list", "/api/stations?limit=100"),
                    ("detail", f"/api/stations/{pick.choice(ids)}"),
                ):
                    started = time.perf_counter()
                    try:
                        response = http.get(path)
                        response.raise_for_status()
                        body = response.json()
                    except httpx.HTTPError:
                        # a detail before its station's birth is a 404 during the ramp, which
                        # the timed window leaves out
                        failures[route].append(now)
                        body = None
                    latencies[route].append((now, (time.perf_counter() - started) * 1000))
                    if route == "summary":
                        summary = body
                if summary is not None and now <= args.duration:
                    online = summary["online"] + summary["degraded"]
                    if all_online_at is None and online == args.stations:
                        all_online_at = now
                        log(f"all {args.stations} stations online after {now:.1f} s")
                    if all_online_at is not None:
                        online_min = online if online_min is None else min(online_min, online)
                    if updates is not None and all_online_at is not None:
                        updates.start(http, now)
                if summary is not None and (not timeline or now - timeline[-1]["t"] >= 10):
                    timeline.append(
                        {
                            "t": round(now, 1),
                            "online": summary["online"],
                            "degraded": summary["degraded"],
                            "stations": summary["stations"],
                            "telemetry": summary["ingested"]["telemetry"],
                            **(updates.sample(http, now) if updates is not None else {}),
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
            tail = (work / "simulate.log").read_text()[-2000:]
            raise RuntimeError(f"simulate failed ({simulator.returncode}): {out_text} {tail}")
        sim_result = json.loads(lines[-1])
        sent = sim_result["sent"]
        # the simulator waited for every confirmation, so the summary must already agree
        final = httpx.get(f"{base}/api/fleet/summary", timeout=10, headers=BENCH_AUTH).json()
        deadline = time.monotonic() + 30
        while final["ingested"] != sent and time.monotonic() < deadline:
            time.sleep(0.5)
            final = httpx.get(f"{base}/api/fleet/summary", timeout=10, headers=BENCH_AUTH).json()
        batches = _batch_stats(base)
        profiles = {}
        for name, spy, path in spies:
            stop_py_spy(spy)
            if path.exists():
                profiles[name] = summarize_collapsed(path, top=15)

        ramp = min(10.0, args.stations / 200)
        # timed while the whole fleet reports: from the end of the ramp (or from when all were
        # online, if later) to the end of the duration
        settled = max(ramp, all_online_at or ramp)
        resources = sampler.report(settled, args.duration)
        sim_res = resources["simulator"]
        if "controller_writer" in resources:
            both = (resources["controller"], resources["controller_writer"])
            resources["controller_total"] = {
                "cpu_mean": round(sum(r["cpu_mean"] for r in both), 1),
                "rss_mb_max": round(sum(r["rss_mb_max"] for r in both), 1),
            }
        latency = {}
        for route, rows in latencies.items():
            window = [ms for at, ms in rows if settled <= at <= args.duration]
            latency[route] = {
                "samples": len(window),
                "p50": round(percentile(window, 50), 1),
                "p95": round(percentile(window, 95), 1),
                "p99": round(percentile(window, 99), 1),
                "max": round(max(window, default=float("nan")), 1),
                "errors": sum(1 for at in failures[route] if settled <= at <= args.duration),
                "errors_before": sum(1 for at in failures[route] if at < settled),
            }
        result: dict[str, Any] = {
            "bench": "fleet",
            "stations": args.stations,
            "duration_s": args.duration,
            "telemetry_interval_s": args.telemetry_interval,
            "db": args.db,
            "simulator_processes": sim_result.get("processes", 1),
            "open_files_limit": nofile,
            "wall_s": round(ended, 1),
            "timed_from_s": round(settled, 1),
            "latency_ms": latency,
            "under_100ms": all(latency[r]["p95"] < 100 for r in ROUTES),
            "all_online_after_s": None if all_online_at is None else round(all_online_at, 1),
            "online_min": online_min,
            "all_online": online_min == args.stations,
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
        if updates is not None:
            result["rollout"] = updates.report(httpx.Client(base_url=base, timeout=60))
        if plans:
            result["plans"] = plans
        if profiles:
            result["profiles"] = profiles
        print(json.dumps(result, separators=(",", ":")))
        return 0 if result["accounted"] and result["all_online"] else 1


def explain_reads(db_url: str, station_id: str) -> dict[str, Any]:
    """The plans of the statements behind the three routes, as PostgreSQL runs them now
    (``EXPLAIN (ANALYZE, BUFFERS)``, captured from crud's own calls, so they follow crud), and
    the station table's size and vacuum statistics."""
    from sqlalchemy import event

    from kioskfleet.controller import crud
    from kioskfleet.controller.db import make_engine

    engine = make_engine(db_url)
    captured: list[tuple[str, str, Any]] = []
    label = ""

    @event.listens_for(engine, "before_cursor_execute")
    def grab(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            captured.append((label, statement, parameters))

    ms: dict[str, float] = {}
    try:
        with engine.connect() as conn:
            for label, call in (
                ("summary", lambda: crud.fleet_summary(conn=conn)),
                (
                    "list",
                    lambda: crud.list_stations(conn=conn, filters={}, limit=100, offset=0),
                ),
                ("detail", lambda: crud.get_station(conn=conn, station_id=station_id)),
            ):
                started = time.perf_counter()
                call()
                ms[label] = round((time.perf_counter() - started) * 1000, 2)
        plans: list[dict[str, Any]] = []
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            for route, statement, parameters in captured:
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
                plan = [row[0] for row in cursor.fetchall()]
                plans.append({"route": route, "sql": " ".join(statement.split()), "plan": plan})
            cursor.execute(
                "SELECT n_live_tup, n_dead_tup, n_tup_upd, n_tup_hot_upd, "
                "last_autovacuum::text, autovacuum_count, pg_relation_size(relid), "
                "pg_total_relation_size(relid) FROM pg_stat_user_tables WHERE relname = 'station'"
            )
            row = cursor.fetchone()
            keys = (
                "live",
                "dead",
                "updates",
                "hot_updates",
                "last_autovacuum",
                "autovacuums",
                "heap_bytes",
                "total_bytes",
            )
            table = dict(zip(keys, row, strict=True)) if row else {}
        finally:
            raw.close()
    finally:
        engine.dispose()
    return {"ms": ms, "station_table": table, "statements": plans}


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


if __name__ == "__main__":
    raise SystemExit(main())
