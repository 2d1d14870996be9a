"""What a real kiosk agent costs while idle: RSS and CPU of `kioskfleet agent` with its five
devices simulated on pseudo-terminals, its local device service on, for `--duration` seconds.

"Idle" is the kiosk between citizens: connected to the broker, every device polled by the
coordinator, telemetry every `--telemetry-interval` seconds, no transaction. The devices are
`kioskfleet device simulate DRIVER --link PATH` processes (CONTRACT §2): printer `escpos`,
cash acceptor `ssp` (or `cctalk` bill with `--cash cctalk`), coin acceptor `cctalk` coin, ID
reader `ga467`, bank-card reader `crt591`. The agent's RSS and CPU time are sampled with
psutil every `--sample` seconds, after it has published its birth with every device online
and the local service answered one `GET /v1/status`. Targets: < 100 MB RSS, < 1 % of one
core. It also measures what importing FastAPI and uvicorn (the local service package) adds
to an agent process's RSS.

    .venv/bin/python bench/agent_footprint.py                      # 10 minutes
    .venv/bin/python bench/agent_footprint.py --duration 60 --no-local-service

Stdout: one JSON line; stderr: progress and one readable summary line.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from _support import ROOT, free_port, log, wait_port
from paho.mqtt.enums import CallbackAPIVersion

from kioskfleet.protocol.broker_url import parse_broker_url

TARGET_RSS_MB = 100.0
TARGET_CPU_PERCENT = 1.0
STATION = "bench-footprint-01"
#: slot → (driver, simulate arguments, config overrides)
DEVICES: dict[str, tuple[str, list[str], dict[str, Any]]] = {
    "printer": ("escpos", [], {}),
    "cash_acceptor": ("ssp", [], {}),
    "coin_acceptor": ("cctalk", ["--kind", "coin"], {}),
    "id_reader": ("ga467", [], {}),
    "card_reader": ("crt591", [], {}),
}


def child_env() -> dict[str, str]:
    """The environment of every child: this checkout's code first, whatever is installed."""
    paths = [str(ROOT / "src"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def kioskfleet_command() -> list[str]:
    """`kioskfleet` as installed next to this Python, else the same entry point by module."""
    script = shutil.which("kioskfleet", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "kioskfleet.cli"]


@contextlib.contextmanager
def simulated_devices(workdir: Path, cash: str) -> Iterator[dict[str, str]]:
    """One `kioskfleet device simulate` process per slot; yields slot → pty link."""
    processes: list[subprocess.Popen[str]] = []
    links: dict[str, str] = {}
    try:
        for slot, (driver, extra, _) in DEVICES.items():
            if slot == "cash_acceptor" and cash == "cctalk":
                driver, extra = "cctalk", ["--kind", "bill"]
            link = workdir / f"{slot}.pty"
            process = subprocess.Popen(
                [*kioskfleet_command(), "device", "simulate", driver, *extra, "--link", str(link)],
                stdout=subprocess.PIPE,
                text=True,
                env=child_env(),
            )
            processes.append(process)
            assert process.stdout is not None
            port = process.stdout.readline().strip()  # the pty path, once it serves
            if not port:
                raise RuntimeError(f"the {driver} simulator did not start")
            links[slot] = str(link)
        yield links
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def write_config(
    workdir: Path,
    links: dict[str, str],
    *,
    broker: str,
    telemetry_interval: float,
    local_port: int | None,
    cash: str,
) -> Path:
    lines = [
        f'station = "{STATION}"',
        'district = "Binhu"',
        'site = "Taihu Square Metro Station"',
        'site_type = "subway_station"',
        'profile = "estation-gen2"',
        f'broker = "{broker}"',
        f"telemetry_interval = {telemetry_interval}",
        f'state_dir = "{workdir / "state"}"',
        f'local_service = "127.0.0.1:{local_port}"' if local_port else "local_service = false",
    ]
    for slot, link in links.items():
        driver = DEVICES[slot][0]
        lines += ["", f"[devices.{slot}]", f'port = "{link}"']
        if slot == "cash_acceptor" and cash == "cctalk":
            # the station profile's note validator speaks SSP: no firmware profile for this one
            lines += ['driver = "cctalk"', 'profile = ""']
        else:
            lines.append(f'driver = "{driver}"')
    path = workdir / "agent.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def wait_for_birth(broker: str, timeout: float = 60.0) -> dict[str, Any]:
    """The agent's retained birth, once every device in it is online."""
    url = parse_broker_url(broker)
    births: list[dict[str, Any]] = []
    ready = threading.Event()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        payload = json.loads(message.payload)
        devices = payload.get("devices", {})
        if (
            payload.get("online")
            and devices
            and all(d.get("state") == "online" for d in devices.values())
        ):
            births.append(payload)
            ready.set()

    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{STATION}-watcher")
    watcher.on_message = on_message
    watcher.connect(url.host, url.port)
    watcher.subscribe(f"fleet/v1/{STATION}/state", qos=1)
    watcher.loop_start()
    try:
        if not ready.wait(timeout):
            raise RuntimeError("no birth with every device online")
    finally:
        watcher.loop_stop()
        watcher.disconnect()
    return births[-1]


def check_local_service(port: int, token_file: Path) -> list[str]:
    """One authorised `GET /v1/status`: the service is up; returns the devices it sees."""
    token = token_file.read_text(encoding="ascii").strip()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("GET", "/v1/status", headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    if response.status != 200 or body["transactions"]["busy"]:
        raise RuntimeError(f"local service: {response.status} {body}")
    return sorted(body["devices"])


def sample(process: psutil.Process, duration: float, every: float) -> dict[str, Any]:
    """RSS and CPU of ``process`` over ``duration`` seconds."""
    rss: list[float] = []
    windows: list[float] = []
    threads = 0
    started = time.monotonic()
    first = last = process.cpu_times()
    last_at = started
    while (now := time.monotonic()) - started < duration:
        time.sleep(min(every, max(0.0, duration - (now - started))))
        if not process.is_running() or process.status() == psutil.STATUS_ZOMBIE:
            raise RuntimeError("the agent died during the run")
        times, at = process.cpu_times(), time.monotonic()
        rss.append(process.memory_info().rss / 2**20)
        windows.append(
            100 * (times.user + times.system - last.user - last.system) / max(at - last_at, 1e-9)
        )
        threads = max(threads, process.num_threads())
        last, last_at = times, at
    wall = last_at - started
    cpu = last.user + last.system - first.user - first.system
    return {
        "seconds": round(wall, 1),
        "samples": len(rss),
        "rss_mb": {
            "start": round(rss[0], 1),
            "mean": round(sum(rss) / len(rss), 1),
            "max": round(max(rss), 1),
            "end": round(rss[-1], 1),
        },
        "cpu_percent": {
            "mean": round(100 * cpu / wall, 3),
            "max_window": round(max(windows), 2),
            "window_s": every,
        },
        "cpu_seconds": round(cpu, 2),
        "threads_max": threads,
    }


IMPORT_COST = """
import json, time, psutil
p = psutil.Process()
import kioskfleet.cli, kioskfleet.agent.service
before = p.memory_info().rss
started = time.perf_counter()
import kioskfleet.agent.localservice
took = time.perf_counter() - started
after = p.memory_info().rss
import fastapi, uvicorn
print(json.dumps({"rss_agent_mb": round(before / 2**20, 1),
                  "rss_with_local_service_mb": round(after / 2**20, 1),
                  "delta_mb": round((after - before) / 2**20, 1),
                  "import_seconds": round(took, 3),
                  "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__}))
"""


def import_cost() -> dict[str, Any]:
    """RSS of a fresh process with the agent imported, then with FastAPI and uvicorn too
    (the local service package), median of three runs."""
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", IMPORT_COST],
                capture_output=True,
                text=True,
                check=True,
                env=child_env(),
            ).stdout
        )
        for _ in range(3)
    ]
    runs.sort(key=lambda r: r["delta_mb"])
    return runs[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds sampled")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--telemetry-interval", type=float, default=10.0)
    parser.add_argument("--cash", choices=["ssp", "cctalk"], default="ssp")
    parser.add_argument("--no-local-service", action="store_true")
    args = parser.parse_args()

    cost = import_cost()
    log("import cost of the local service:", cost)
    workdir = Path(tempfile.mkdtemp(prefix="kioskfleet-footprint-"))
    agent: subprocess.Popen[bytes] | None = None
    try:
        with simulated_devices(workdir, args.cash) as links:
            local_port = None if args.no_local_service else free_port()
            config = write_config(
                workdir,
                links,
                broker=args.broker,
                telemetry_interval=args.telemetry_interval,
                local_port=local_port,
                cash=args.cash,
            )
            agent = subprocess.Popen(
                [*kioskfleet_command(), "agent", "--config", str(config)], env=child_env()
            )
            birth = wait_for_birth(args.broker)
            seen: list[str] = sorted(birth["devices"])
            if local_port is not None:
                wait_port(local_port)
                seen = check_local_service(local_port, workdir / "state" / "local-service.token")
            log(f"agent {agent.pid} connected, devices online: {', '.join(seen)}; sampling")
            measured = sample(psutil.Process(agent.pid), args.duration, args.sample)
            agent.send_signal(signal.SIGTERM)
            code = agent.wait(30)
            if code != 0:
                raise RuntimeError(f"the agent exited with {code} after SIGTERM")
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
        shutil.rmtree(workdir, ignore_errors=True)

    within = (
        measured["rss_mb"]["max"] < TARGET_RSS_MB
        and measured["cpu_percent"]["mean"] < TARGET_CPU_PERCENT
    )
    result = {
        "bench": "agent_footprint",
        "devices": dict.fromkeys(seen, "online"),
        "cash": args.cash,
        "local_service": not args.no_local_service,
        "telemetry_interval": args.telemetry_interval,
        **measured,
        "targets": {"rss_mb": TARGET_RSS_MB, "cpu_percent": TARGET_CPU_PERCENT},
        "within_targets": within,
        "import_cost": cost,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result), flush=True)
    print(
        f"agent idle {measured['seconds']:.0f} s, {len(seen)} devices, local service "
        f"{'on' if result['local_service'] else 'off'}: RSS max {measured['rss_mb']['max']} MB "
        f"(target < {TARGET_RSS_MB:.0f}), CPU mean {measured['cpu_percent']['mean']} % of a "
        f"core, worst {args.sample:.0f} s window {measured['cpu_percent']['max_window']} % "
        f"(target < {TARGET_CPU_PERCENT:.0f} %); FastAPI+uvicorn import adds "
        f"{cost['delta_mb']} MB — {'within' if within else 'OVER'} targets",
        file=sys.stderr,
        flush=True,
    )
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
