"""What alerts add to the writer's sweep (once a second) with 10,000 stations: the sweep with
nothing due, and with a district dropping (its offline alerts and site incidents falling due).

The store (``FleetStore``, SQLite in a temp dir or PostgreSQL with ``--db postgres``) is given
``--stations`` stations by their births; then ``FleetStore.sweep`` is timed at successive
injected times: quiet sweeps (what every second costs), and the sweep at which the offline
alerts of ``--drop`` stations (whole sites, as in a power cut) fall due. The part spent in
alerts spend before the write (re-reading people's changes, silences and maintenance; popping
what is due; deciding) is timed beside the whole sweep (the store's scan for silent stations,
and the transaction writing status changes, alert rows, history and notifications).

    .venv/bin/python bench/alert_sweep.py --stations 10000 [--db postgres]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from _support import throwaway_postgres

from kioskfleet.fleetsim.fleet import wuxi_fleet
from kioskfleet.protocol.messages import decode_agent_message


def _birth(identity: Any, session: int) -> tuple[str, Any]:
    payload = {
        "v": 1,
        "station": identity.station,
        "session": session,
        "seq": 0,
        "ts": 1.0,
        "online": True,
        "district": identity.district,
        "site": identity.site,
        "site_type": identity.site_type,
        "profile": identity.profile,
        "telemetry_interval": 3600,
    }
    return "state", decode_agent_message("state", identity.station, json.dumps(payload).encode())


def _death(station: str, session: int) -> tuple[str, Any]:
    payload = {"v": 1, "station": station, "session": session, "seq": 0, "ts": 1.0}
    payload["online"] = False  # type: ignore[assignment]
    return "state", decode_agent_message("state", station, json.dumps(payload).encode())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=10_000)
    parser.add_argument("--drop", type=int, default=200, help="stations going offline at once")
    parser.add_argument("--sweeps", type=int, default=30, help="quiet sweeps timed")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args()

    from kioskfleet.controller.db import make_engine, migrate
    from kioskfleet.controller.store import FleetStore

    identities = wuxi_fleet(args.stations, id_prefix="swp")
    t0 = time.time()
    with (
        tempfile.TemporaryDirectory() as tmp,
        throwaway_postgres() if args.db == "postgres" else nullcontext(None) as pg,
    ):
        url = pg if pg is not None else f"sqlite:///{Path(tmp) / 'c.db'}"
        engine = make_engine(url)
        migrate(engine)
        store = FleetStore(engine, started=t0)
        for start in range(0, len(identities), 1000):
            store.apply([_birth(i, 1) for i in identities[start : start + 1000]], t0)
        now = t0 + 1

        def timed(at: float) -> tuple[float, float]:
            alerting = store.alerting
            spent = [0.0]
            refresh, sweep = alerting.refresh, alerting.sweep

            def timed_refresh(*a: Any, **k: Any) -> Any:
                started = time.perf_counter()
                try:
                    return refresh(*a, **k)
                finally:
                    spent[0] += time.perf_counter() - started

            def timed_sweep(*a: Any, **k: Any) -> Any:
                started = time.perf_counter()
                try:
                    return sweep(*a, **k)
                finally:
                    spent[0] += time.perf_counter() - started

            alerting.refresh, alerting.sweep = timed_refresh, timed_sweep  # type: ignore[method-assign]
            started = time.perf_counter()
            store.sweep(at)
            total = time.perf_counter() - started
            alerting.refresh, alerting.sweep = refresh, sweep  # type: ignore[method-assign]
            return total * 1000, spent[0] * 1000

        quiet = [timed(now + k) for k in range(args.sweeps)]
        now += args.sweeps
        dropped = [i.station for i in sorted(identities, key=lambda i: (i.district, i.site))]
        dropped = dropped[: args.drop]
        store.apply([_death(s, 1) for s in dropped], now)
        before_due = timed(now + 60)
        due = timed(now + 121)
        with engine.connect() as conn:
            from sqlalchemy import func, select

            from kioskfleet.controller.alertrows import ALERT

            counts = dict(
                conn.execute(
                    select(ALERT.c.condition, func.count()).group_by(ALERT.c.condition)
                ).all()
            )
        after = [timed(now + 122 + k) for k in range(args.sweeps)]
        engine.dispose()

    def summary(runs: list[tuple[float, float]]) -> dict[str, float]:
        return {
            "sweep_ms_median": round(statistics.median(r[0] for r in runs), 2),
            "deciding_ms_median": round(statistics.median(r[1] for r in runs), 2),
            "sweep_ms_max": round(max(r[0] for r in runs), 2),
        }

    result = {
        "bench": "alert_sweep",
        "db": args.db,
        "stations": args.stations,
        "drop": args.drop,
        "quiet": summary(quiet),
        "dropped_not_due": {
            "sweep_ms": round(before_due[0], 2),
            "deciding_ms": round(before_due[1], 2),
        },
        "dropped_due": {"sweep_ms": round(due[0], 2), "deciding_ms": round(due[1], 2)},
        "quiet_after": summary(after),
        "alerts_opened": counts,
    }
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
