"""Per-message CPU cost of each stage of the controller's ingest, without a broker: where the
budget goes when the controller must keep up with a bare paho subscriber (bench/ingest.py).

Stages, each on the same realistic telemetry as bench/ingest.py, one thread, no contention:
``json.loads`` (a floor for any decoder), ``decode_agent_message`` (pydantic models),
``decode_telemetry_record`` (the same rules into plain dicts: what the writer runs), the
devices JSON of the models (what the store encoded before), and ``FleetStore.apply`` on
batches of ``--batch`` messages decoded as the writer decodes them (SQLite in a temp dir, or
PostgreSQL with ``--db postgres``, whose server CPU is reported beside it), with the garbage
collector tuned as the writer tunes it.

    .venv/bin/python bench/costs.py --messages 30000
    .venv/bin/python bench/costs.py --messages 30000 --db postgres
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from _support import AgentPayloads, StationPayloads, throwaway_postgres

from kioskfleet.agent.host import HostSampler
from kioskfleet.fleetsim.fleet import wuxi_fleet
from kioskfleet.protocol.messages import (
    TelemetryMessage,
    decode_agent_message,
    decode_telemetry_record,
)


def per_message_us(
    fn: Callable[[], Any], n: int, profiler: cProfile.Profile | None = None
) -> float:
    started = time.process_time()
    if profiler is not None:
        profiler.runcall(fn)
    else:
        fn()
    return round((time.process_time() - started) / n * 1e6, 1)


def postgres_server_cpu() -> float:
    """CPU seconds used so far by every ``postgres`` process on this machine."""
    import psutil

    total = 0.0
    for process in psutil.process_iter(["name"]):
        if process.info["name"] == "postgres":
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--stations", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1000, help="the controller's batch_size")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--payloads",
        choices=["agent", "agent-full", "bench"],
        default="agent",
        help="as bench/ingest.py: the agent's lean telemetry, the same with every info, or "
        "the older hand-built 1.6 KB payloads",
    )
    parser.add_argument(
        "--cprofile", action="store_true", help="cProfile decode and apply, top functions on stderr"
    )
    args = parser.parse_args()
    profiler = cProfile.Profile() if args.cprofile else None

    from kioskfleet.controller.db import make_engine, migrate
    from kioskfleet.controller.store import _DEVICES, FleetStore
    from kioskfleet.controller.writer import tune_gc

    host = HostSampler().sample()
    session = int(time.time() * 1000)
    identities = wuxi_fleet(args.stations, id_prefix="cost")
    fleet: list[Any] = (
        [StationPayloads(i, session, host) for i in identities]
        if args.payloads == "bench"
        else [AgentPayloads(i, session, host, lean=args.payloads == "agent") for i in identities]
    )
    births = [(p.identity.station, p.birth()) for p in fleet]
    stream = [
        (p.identity.station, p.telemetry(seq))
        for seq in range(1, args.messages // args.stations + 1)
        for p in fleet
    ]
    n = len(stream)
    decoded: list[Any] = []
    tune_gc()  # as the writer does: the decoded batch must not make every collection slower

    def loads() -> None:
        for _, payload in stream:
            json.loads(payload)

    def decode() -> None:
        # a batch at a time, as the writer holds them (not all of them at once)
        for start in range(0, n, args.batch):
            [decode_agent_message("telemetry", s, p) for s, p in stream[start : start + args.batch]]

    def decode_record() -> None:
        for start in range(0, n, args.batch):
            [decode_telemetry_record(s, p) for s, p in stream[start : start + args.batch]]

    def dump() -> None:
        for message in decoded:
            assert isinstance(message, TelemetryMessage)
            _DEVICES.dump_json(message.devices, exclude_none=True)

    result: dict[str, Any] = {
        "bench": "costs",
        "messages": n,
        "payload_bytes": round(sum(len(p) for _, p in stream) / n),
        "us_per_message": {
            "json_loads": per_message_us(loads, n),
            "decode_agent_message": per_message_us(decode, n),
            "decode_telemetry_record": per_message_us(decode_record, n, profiler),
        },
    }
    decoded.extend(decode_agent_message("telemetry", s, p) for s, p in stream)
    result["us_per_message"]["store_devices_json"] = per_message_us(dump, n)
    # what the writer stores: telemetry decoded into plain dicts
    decoded[:] = [decode_telemetry_record(s, p) for s, p in stream]
    with (
        tempfile.TemporaryDirectory(prefix="kf-bench-costs-") as tmp,
        throwaway_postgres()
        if args.db == "postgres"
        else nullcontext(f"sqlite:///{Path(tmp) / 'c.db'}") as url,
    ):
        engine = make_engine(url)
        migrate(engine)
        store = FleetStore(engine)
        store.apply(
            [("state", decode_agent_message("state", s, p)) for s, p in births], time.time()
        )
        batches = [decoded[i : i + args.batch] for i in range(0, n, args.batch)]

        def apply() -> None:
            for batch in batches:
                store.apply([("telemetry", m) for m in batch], time.time())

        wall, server = time.perf_counter(), postgres_server_cpu()
        result["us_per_message"][f"store_apply_{args.db}_batch{args.batch}"] = per_message_us(
            apply, n, profiler
        )
        result["store_apply_wall_us_per_message"] = round((time.perf_counter() - wall) / n * 1e6, 1)
        if args.db == "postgres":
            result["us_per_message"]["postgres_server"] = round(
                (postgres_server_cpu() - server) / n * 1e6, 1
            )
        engine.dispose()
    costs = result["us_per_message"]
    result["us_per_message"]["controller_total_without_mqtt"] = round(
        costs["decode_telemetry_record"] + costs[f"store_apply_{args.db}_batch{args.batch}"], 1
    )
    if profiler is not None:
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(25)
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
