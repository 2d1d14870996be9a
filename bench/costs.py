"""Per-message CPU cost of each stage of the controller's ingest, without a broker: where the
budget goes when the controller must keep up with a bare paho subscriber (bench/ingest.py).

Stages, each on the same realistic telemetry as bench/ingest.py, one thread, no contention:
``json.loads`` (a floor for any decoder), ``decode_agent_message`` (pydantic, what the writer
runs), the per-message ``model_dump`` the store does to build its row, and
``FleetStore.apply`` on batches of ``--batch`` already-decoded messages (SQLite in a temp dir,
or PostgreSQL with ``--db postgres``).

    .venv/bin/python bench/costs.py --messages 20000
"""

from __future__ import annotations

import argparse
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

from _support import StationPayloads, throwaway_postgres

from kioskfleet.agent.host import HostSampler
from kioskfleet.fleetsim.fleet import wuxi_fleet
from kioskfleet.protocol.messages import TelemetryMessage, decode_agent_message


def per_message_us(
    fn: Callable[[], Any], n: int, profiler: cProfile.Profile | None = None
) -> float:
    started = time.process_time()
    if profiler is not None:
        profiler.runcall(fn)
    else:
        fn()
    return round((time.process_time() - started) / n * 1e6, 1)


def station_update_costs(engine: Any, store: Any, rows: int) -> dict[str, Any]:
    """The store updates every touched station row with its own ``update().values(row)``
    statement (and its ledger row likewise): measure that against one ``executemany`` of a
    statement with bind parameters, on the same rows of the same database — the suggested fix."""
    from sqlalchemy import bindparam, update

    from kioskfleet.controller.models import Station

    table = Station.__table__  # type: ignore[attr-defined]
    states = list(store.stations.values())[:rows]
    values = [state.row() for state in states]
    columns = [key for key in values[0] if key != "id"]
    many = (
        update(table)
        .where(table.c.id == bindparam("station_id"))
        .values({c: bindparam(c) for c in columns})
    )
    params = [{"station_id": v["id"], **{c: v[c] for c in columns}} for v in values]
    repeats = 20

    def per_row() -> None:
        for _ in range(repeats):
            with engine.begin() as conn:
                for state in states:
                    conn.execute(update(table).where(table.c.id == state.id).values(state.row()))

    def executemany() -> None:
        for _ in range(repeats):
            with engine.begin() as conn:
                conn.execute(many, params)

    n = repeats * len(states)
    return {
        "rows_per_transaction": len(states),
        "us_per_row_update_values": per_message_us(per_row, n),
        "us_per_row_executemany_bindparam": per_message_us(executemany, n),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--stations", type=int, default=100)
    parser.add_argument("--batch", type=int, default=500, help="the controller's batch_size")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--cprofile", action="store_true", help="cProfile decode and apply, top functions on stderr"
    )
    args = parser.parse_args()
    profiler = cProfile.Profile() if args.cprofile else None

    from kioskfleet.controller.db import make_engine, migrate
    from kioskfleet.controller.store import FleetStore

    host = HostSampler().sample()
    session = int(time.time() * 1000)
    fleet = [StationPayloads(i, session, host) for i in wuxi_fleet(args.stations, id_prefix="cost")]
    births = [(p.identity.station, p.birth()) for p in fleet]
    stream = [
        (p.identity.station, p.telemetry(seq))
        for seq in range(1, args.messages // args.stations + 1)
        for p in fleet
    ]
    n = len(stream)
    decoded: list[Any] = []

    def loads() -> None:
        for _, payload in stream:
            json.loads(payload)

    def decode() -> None:
        decoded.extend(decode_agent_message("telemetry", s, p) for s, p in stream)

    def dump() -> None:
        for message in decoded:
            assert isinstance(message, TelemetryMessage)
            {k: v.model_dump(exclude_none=True) for k, v in message.devices.items()}

    result: dict[str, Any] = {
        "bench": "costs",
        "messages": n,
        "payload_bytes": round(sum(len(p) for _, p in stream) / n),
        "us_per_message": {
            "json_loads": per_message_us(loads, n),
            "decode_agent_message": per_message_us(decode, n, profiler),
            "store_model_dump": per_message_us(dump, n),
        },
    }
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

        wall = time.perf_counter()
        result["us_per_message"][f"store_apply_{args.db}_batch{args.batch}"] = per_message_us(
            apply, n, profiler
        )
        result["store_apply_wall_us_per_message"] = round((time.perf_counter() - wall) / n * 1e6, 1)
        result["station_update"] = station_update_costs(engine, store, args.batch)
        engine.dispose()
    costs = result["us_per_message"]
    result["us_per_message"]["controller_total_without_mqtt"] = round(
        costs["decode_agent_message"] + costs[f"store_apply_{args.db}_batch{args.batch}"], 1
    )
    if profiler is not None:
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(25)
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
