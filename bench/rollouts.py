"""What the rollout runner costs the controller with a large rollout (decision 44).

A SQLite (or PostgreSQL) database with N stations (births written by the real FleetStore),
one software release, one rollout over all of them (canaries, 10/50/100). Timed, side by
side in one run: creating the rollout (planning N stations), the runner's pass that starts
the canaries, the pass that starts wave 1 (its install commands stored and audited), an idle
pass (nothing new: the per-second cost while stations work), and the ingest writer storing
one events message per station in batches of 2,000 — with an ``update`` event (whose
progress the writer writes in the batch's transaction, decision 49) against the same
messages with an event of another type, alternated twice — then the pass that judges after
them.

    PYTHONPATH=src .venv/bin/python bench/rollouts.py [--stations 10000] [--db sqlite|postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

from _support import throwaway_postgres
from sqlalchemy import func, select

from kioskfleet.controller.db import make_engine, migrate
from kioskfleet.controller.models import RolloutStationRow
from kioskfleet.controller.rollout_runner import RolloutRunner
from kioskfleet.controller.rollouts import RolloutRequest, create_rollout
from kioskfleet.controller.store import FleetStore
from kioskfleet.controller.tufrepo.releases import ReleasePublic, ReleaseTargetPublic
from kioskfleet.protocol import decode_agent_message


def _message(kind: str, station: str, **body: object) -> tuple[str, object]:
    payload = {"v": 1, "station": station, "session": 7, "seq": 0, "ts": time.time(), **body}
    return kind, decode_agent_message(kind, station, json.dumps(payload).encode())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stations", type=int, default=10_000)
    parser.add_argument(
        "--db",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="postgres: a throw-away database",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        if args.db == "postgres":
            url = stack.enter_context(throwaway_postgres()).replace(
                "postgresql://", "postgresql+psycopg://"
            )
        engine = make_engine(url)
        migrate(engine)
        store = FleetStore(engine)
        ids = [f"bench-{n:05d}" for n in range(args.stations)]
        births = [
            _message(
                "state",
                s,
                online=True,
                district="Binhu",
                site="Binhu Government Affairs Service Center",
                site_type="government_service_center",
                profile="estation-gen2" if n % 5 else "bank-agent-gen1",
                telemetry_interval=10,
            )
            for n, s in enumerate(ids)
        ]
        for start in range(0, len(births), 2000):
            store.apply(births[start : start + 2000], now=time.time())
        release = ReleasePublic(
            id="software-r1",
            kind="software",
            version="1.0.0",
            release_counter=1,
            targets=[
                ReleaseTargetPublic(
                    name="software/kioskfleet-1.0.0-r1.tar.gz",
                    site_type=None,
                    length=1,
                    sha256="0" * 64,
                )
            ],
        )
        timings: dict[str, float] = {}
        began = time.perf_counter()
        with engine.begin() as conn:
            rollout = create_rollout(
                conn=conn,
                body=RolloutRequest(release="software-r1"),
                release=release,
                actor="bench",
                source=None,
                now=time.time(),
            )
        timings["create (plan N stations)"] = time.perf_counter() - began
        runner = RolloutRunner(engine, lambda stations: 0)
        for name in ("pass: start the canaries", "pass: idle (canaries under way)"):
            began = time.perf_counter()
            runner.tick()
            timings[name] = time.perf_counter() - began
        # the canaries report healthy: the next pass starts wave 1
        table = RolloutStationRow.__table__  # type: ignore[attr-defined]
        with engine.connect() as conn:
            canaries = [
                row.station
                for row in conn.execute(
                    select(table.c.station).where(table.c.rollout_id == rollout, table.c.wave == 0)
                )
            ]
        events = [
            _message(
                "events",
                s,
                seq=1,
                events=[
                    {
                        "type": "update",
                        "release": "software-r1",
                        "rollout": rollout,
                        "progress": "healthy",
                    }
                ],
            )
            for s in canaries
        ]
        runner.progressed(store.apply(events, now=time.time()).rollouts)
        began = time.perf_counter()
        started = runner.tick()
        timings[f"pass: start wave 1 ({started} installs stored)"] = time.perf_counter() - began
        began = time.perf_counter()
        started = runner.tick()
        timings[f"pass: wave 1 goes on ({started} installs stored)"] = time.perf_counter() - began
        began = time.perf_counter()
        runner.tick()
        timings["pass: idle (wave 1 under way, not judged)"] = time.perf_counter() - began
        eager = RolloutRunner(engine, lambda stations: 0, rejudge=0.0)
        eager.tick()
        began = time.perf_counter()
        eager.tick()
        timings["pass: idle, judged anyway (every 10 s)"] = time.perf_counter() - began
        # every station sends one events message, in writer batches of 2,000: with an update
        # event (progress written in the batch's transaction) or with another event, twice
        kinds = {
            "update": {
                "type": "update",
                "release": "software-r1",
                "rollout": rollout,
                "progress": "downloading",
            },
            "other": {"type": "door_opened", "panel": "service"},
        }
        reported: set[str] = set()
        for seq, kind in enumerate(["other", "update", "other", "update"], start=2):
            messages = [_message("events", s, seq=seq, events=[kinds[kind]]) for s in ids]
            began = time.perf_counter()
            for start in range(0, len(messages), 2000):
                reported |= store.apply(messages[start : start + 2000], now=time.time()).rollouts
            spent = time.perf_counter() - began
            name = f"writer: {len(ids)} events messages, {kind} (seq {seq})"
            timings[name] = spent
        runner.progressed(reported)
        began = time.perf_counter()
        runner.tick()
        timings["pass: judged after every station reported"] = time.perf_counter() - began
        with engine.connect() as conn:
            written = conn.execute(
                select(func.count())
                .select_from(table)
                .where(table.c.rollout_id == rollout, table.c.progress == "downloading")
            ).scalar_one()
        engine.dispose()
    print(
        json.dumps(
            {"stations": args.stations, "db": engine.dialect.name, "progress_written": written}
        )
    )
    for name, seconds in timings.items():
        print(f"{name:45s} {seconds * 1000:9.1f} ms")


if __name__ == "__main__":
    main()
