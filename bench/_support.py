"""What both benchmarks share: a private Mosquitto from deploy/, a throwaway PostgreSQL
database, realistic agent payloads, py-spy sampling and a summary of its collapsed stacks."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEPLOY_CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
#: the bootstrap admin token of every controller a benchmark starts (CONTRACT §6): the API
#: needs credentials, and this one costs no database lookup
BENCH_TOKEN = "kioskfleet-bench-bootstrap-0123456789"
BENCH_AUTH = {"Authorization": f"Bearer {BENCH_TOKEN}"}
PG_ADMIN_URL = os.environ.get("KIOSKFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


#: the kioskfleet command of this environment
KIOSKFLEET = str(Path(sys.executable).with_name("kioskfleet"))


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def log(*parts: Any) -> None:
    """Progress goes to stderr; stdout carries only the result line."""
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


class Mosquitto:
    """A private Mosquitto run from the product's deploy/mosquitto/mosquitto.conf, with only the
    listener port and the persistence folder replaced (as tests/conftest.py does)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        conf = DEPLOY_CONF.read_text()
        conf = conf.replace("listener 1883 127.0.0.1", f"listener {self.port} 127.0.0.1")
        conf = conf.replace(
            "persistence_location /var/lib/mosquitto/", f"persistence_location {workdir / 'data'}/"
        )
        if f"listener {self.port}" not in conf or str(workdir) not in conf:
            raise RuntimeError("deploy/mosquitto/mosquitto.conf changed shape; update bench/")
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(conf)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        out = (self.workdir / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen([binary, "-c", str(self.conf)], stdout=out, stderr=out)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def postgres_available() -> str | None:
    """None when the admin URL answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except Exception as err:
        return f"{err.__class__.__name__}: {err}".strip()


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A fresh database on the admin server, dropped afterwards."""
    import psycopg

    name = f"kf_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- realistic payloads ------------------------------------------------------------------------
def bench_counters(n: int) -> dict[str, int]:
    """The counters a busy kiosk reports in its ``n``-th telemetry message (benchmark data)."""
    return {
        "commands": 0,
        "reconnects": 0,
        "transactions_total": 40 + n,
        "transactions_failed": n // 50,
        "receipts_printed": 38 + n,
        "paper_cm_used": 420 + 11 * n,
        "notes_accepted": 17 + n // 2,
        "notes_rejected": n // 40,
        "notes_escrowed": 17 + n // 2,
        "coins_accepted": 55 + 2 * n,
        "id_cards_read": 31 + n,
        "bank_cards_read": 12 + n // 3,
        "bank_card_declined": n // 60,
        "sessions_timed_out": n // 25,
        "screen_touches": 900 + 37 * n,
        "outbox_depth": 0,
        "mqtt_bytes_sent": 2_000_000 + 1700 * n,
        "mqtt_bytes_received": 150_000 + 90 * n,
        "device_polls": 5 * 60 * n,
    }


class StationPayloads:
    """Births and telemetry of one station, built from the real agent's pieces (simulated
    devices, host sampler, the agent's envelope), so the controller validates them as it
    validates a kiosk's. The counters are those a kiosk keeps about its day."""

    def __init__(self, identity: Any, session: int, host: dict[str, Any]) -> None:
        import random

        from kioskfleet.fleetsim.fleet import simulated_devices

        self.identity = identity
        self.session = session
        self.host = host
        rng = random.Random(identity.station)
        devices = simulated_devices(identity, rng=rng, fault_rate=0.0, poll_every=5.0)
        self.devices = {
            d.slot: d.read().model_dump(mode="json", exclude_none=True) for d in devices
        }
        self.rng = rng

    def birth(self) -> bytes:
        ident = self.identity
        body = {
            "v": 1,
            "station": ident.station,
            "session": self.session,
            "seq": 0,
            "ts": time.time(),
            "online": True,
            "district": ident.district,
            "site": ident.site,
            "site_type": ident.site_type,
            "profile": ident.profile,
            "telemetry_interval": ident.telemetry_interval,
            "keepalive": 30,
            "versions": {"agent": ident.agent_version, "catalogue": ident.catalogue_version},
            "devices": self.devices,
        }
        return json.dumps(body, separators=(",", ":")).encode()

    def telemetry(self, seq: int) -> bytes:
        n = seq
        host = {
            **self.host,
            "cpu_percent": round(self.rng.uniform(2, 35), 1),
            "memory_percent": round(self.rng.uniform(30, 60), 1),
            "uptime_s": round(86_400 + seq * 10.0, 1),
        }
        body = {
            "v": 1,
            "station": self.identity.station,
            "session": self.session,
            "seq": seq,
            "ts": time.time(),
            "host": host,
            "devices": self.devices,
            "counters": bench_counters(n),
        }
        return json.dumps(body, separators=(",", ":")).encode()


# -- profiling ---------------------------------------------------------------------------------
def py_spy() -> str | None:
    """The py-spy binary, if installed (``pip install py-spy``; PY_SPY overrides)."""
    return os.environ.get("PY_SPY") or shutil.which("py-spy")


def start_py_spy(
    pid: int, out: Path, duration: float = 3600, rate: int = 50
) -> subprocess.Popen[bytes]:
    """Sample ``pid`` (all threads, idle frames left out) into collapsed stacks at ``out``;
    :func:`stop_py_spy` ends it early (py-spy writes its output on SIGINT)."""
    binary = py_spy()
    if binary is None:
        raise RuntimeError("py-spy not found: pip install py-spy, or set PY_SPY")
    cmd = [
        binary,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, int(duration))),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--threads",
        "--nonblocking",
        "--output",
        str(out),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_py_spy(proc: subprocess.Popen[bytes]) -> None:
    """End a recording early; py-spy writes what it sampled so far."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def summarize_collapsed(path: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks, and per
    thread: enough to name the function that eats the time."""
    self_c: collections.Counter[str] = collections.Counter()
    incl_c: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        threads[frames[0]] += count
        # frames look like "func (path/file.py:123)"; drop the line so a function counts once
        names = [_frame_name(f) for f in frames[1:]]
        if names:
            self_c[names[-1]] += count
        for name in set(names):
            incl_c[name] += count

    def share(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(top)]

    return {
        "samples": total,
        "threads": share(threads),
        "self_pct": share(self_c),
        "inclusive_pct": share(incl_c),
    }


def _frame_name(frame: str) -> str:
    func, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "src/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{func} ({file})"


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


class AgentPayloads:
    """Births and telemetry of one station built by the agent's own payload builder
    (``agent/payloads.py`` and ``encode``), with its simulated devices (the station profile's,
    e.g. estation-gen2's five) and the counters an agent keeps: the bytes a station sends.
    ``lean`` telemetry leaves out each device's info once the birth carried it (CONTRACT §3);
    ``lean=False`` builds telemetry as it was before (info, empty supplies and events)."""

    def __init__(self, identity: Any, session: int, host: dict[str, Any], *, lean: bool) -> None:
        import random

        from kioskfleet.fleetsim.fleet import simulated_devices

        self.identity = identity
        self.session = session
        self.host = host
        self.lean = lean
        rng = random.Random(identity.station)
        devices = simulated_devices(identity, rng=rng, fault_rate=0.0, poll_every=5.0)
        self.devices = {d.slot: d.read() for d in devices}
        self.rng = rng

    def birth(self) -> bytes:
        from kioskfleet.agent import payloads
        from kioskfleet.protocol.messages import encode

        message = payloads.birth(
            self.identity, session=self.session, ts=time.time(), keepalive=30, devices=self.devices
        )
        return encode(message)

    def telemetry(self, seq: int) -> bytes:
        from kioskfleet.agent import payloads
        from kioskfleet.protocol.messages import encode

        host = {
            **self.host,
            "cpu_percent": round(self.rng.uniform(2, 35), 1),
            "memory_percent": round(self.rng.uniform(30, 60), 1),
            "uptime_s": round(86_400 + seq * 10.0, 1),
        }
        stamp = payloads.Stamp(self.identity.station, self.session, seq, time.time())
        counters = {"commands": 0, "reconnects": 0}
        if self.lean:
            known = {slot: status.info for slot, status in self.devices.items()}
            message = payloads.telemetry(
                stamp, host=host, devices=self.devices, counters=counters, known_info=known
            )
            return encode(message)
        # as the agent built it before lean telemetry: every device whole, events included
        body = {
            "v": 1,
            "station": stamp.station,
            "session": stamp.session,
            "seq": seq,
            "ts": stamp.ts,
            "host": host,
            "devices": {
                slot: {**status.model_dump(mode="json", exclude_none=True), "events": []}
                for slot, status in self.devices.items()
            },
            "counters": counters,
        }
        return json.dumps(body, separators=(",", ":")).encode()


def wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Wait until the controller at ``base`` answers ``/healthz`` with 200."""
    import httpx

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


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class ControllerRun:
    """A private Mosquitto, a database and ``kioskfleet controller`` serving on a free port."""

    broker: Mosquitto
    db_url: str
    base: str
    proc: subprocess.Popen[bytes]


def start_controller(stack: contextlib.ExitStack, work: Path, db: str) -> ControllerRun:
    """Start the broker (deploy/ configuration), a throw-away database (``sqlite`` in
    ``work`` or ``postgres``) and the controller, all stopped when ``stack`` closes; returns
    once the controller answers ``/healthz``."""
    broker = Mosquitto(work / "mosquitto").start()
    stack.callback(broker.stop)
    db_url = stack.enter_context(
        throwaway_postgres()
        if db == "postgres"
        else contextlib.nullcontext(f"sqlite:///{work / 'controller.db'}")
    )
    port = free_port()
    env = {
        **os.environ,
        "KIOSKFLEET_DB_URL": db_url,
        "KIOSKFLEET_MQTT_URL": broker.url,
        "KIOSKFLEET_LISTEN": f"127.0.0.1:{port}",
        "KIOSKFLEET_BOOTSTRAP_TOKEN": BENCH_TOKEN,
    }
    ctl_log = (work / "controller.log").open("wb")
    stack.callback(ctl_log.close)
    proc = subprocess.Popen(
        [KIOSKFLEET, "controller"], env=env, stdout=ctl_log, stderr=ctl_log, cwd=work
    )
    stack.callback(terminate, proc)
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base, proc)
    return ControllerRun(broker, db_url, base, proc)
