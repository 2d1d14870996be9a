"""The alert routes at fleet scale: what a client waits for (through the whole app in-process,
httpx's ASGI transport, no sockets) with ``--stations`` stations, a history of status changes
for each, ``--resolved`` resolved alerts and ``--unresolved`` unresolved ones; and, side by
side in the same run, counting the unresolved alerts with ``state != 'resolved'`` (a scan of
every alert ever resolved) and with ``state IN ('open', 'acknowledged')`` (an index search).

    flock /tmp/kioskfleet-bench.lock .venv/bin/python bench/alert_api.py [--db postgres]

Prints one line per call (median, p95, min in ms over ``--number`` calls) and one JSON object
on stdout at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, insert, text

from kioskfleet.controller.alertrows import ALERT, alert_values
from kioskfleet.controller.alerts.model import Alert
from kioskfleet.controller.app import create_app
from kioskfleet.controller.config import Settings
from kioskfleet.controller.db import migrate
from kioskfleet.controller.models import Station, StationHistory
from kioskfleet.controller.service import Controller
from kioskfleet.fleetsim.fleet import wuxi_fleet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _support import BENCH_AUTH, BENCH_TOKEN, percentile, throwaway_postgres

STATION = Station.__table__  # type: ignore[attr-defined]
HISTORY = StationHistory.__table__  # type: ignore[attr-defined]
DAY = 86400.0
STATUSES = ("online", "degraded", "online", "silent", "online", "offline")
CONDITIONS = ("paper_out", "paper_jam", "cover_open", "note_jam", "card_jammed", "offline")


def populate(engine: Engine, args: argparse.Namespace, now: float) -> list[str]:
    """Stations registered 30 days ago with ``--changes`` status changes each over the last
    week, and the alerts; the station ids."""
    rng = random.Random(7)
    identities = list(wuxi_fleet(args.stations))
    ids = [i.station for i in identities]
    where = {i.station: (i.district, i.site) for i in identities}
    with engine.begin() as conn:
        conn.execute(
            insert(STATION),
            [
                {
                    "id": i.station,
                    "district": i.district,
                    "site": i.site,
                    "site_type": i.site_type,
                    "profile": i.profile,
                    "status": "online",
                    "online": True,
                    "degraded": False,
                    "session": 1,
                    "status_since": now - DAY,
                    "registered_at": now - 30 * DAY,
                    "devices": {},
                    "telemetry_interval": 10.0,
                    "in_service": True,
                }
                for i in identities
            ],
        )
        history: list[dict[str, Any]] = []
        for station in ids:
            history.append(_change(station, "online", now - 30 * DAY))
            times = sorted(now - rng.uniform(0, 7 * DAY) for _ in range(args.changes))
            history.extend(
                _change(station, STATUSES[k % len(STATUSES)], at) for k, at in enumerate(times)
            )
            if len(history) > 20_000:
                conn.execute(insert(HISTORY), history)
                history = []
        if history:
            conn.execute(insert(HISTORY), history)
        rows: list[dict[str, Any]] = []
        for n in range(args.resolved + args.unresolved):
            station = rng.choice(ids)
            district, site = where[station]
            opened = now - rng.uniform(0, 30 * DAY)
            resolved = n < args.resolved
            acked = rng.random() < 0.5
            alert = Alert(
                id=f"{n:032x}",
                district=district,
                site=site,
                station=station,
                # unresolved ones each get a subject of their own
                device=f"slot_{n}",
                condition=rng.choice(CONDITIONS),
                severity=rng.choice(("critical", "warning", "info")),
                state="resolved" if resolved else ("acknowledged" if acked else "open"),
                opened_at=opened,
                details={"summary": "x", "since": opened - 5},
                acknowledged_at=opened + rng.uniform(10, 900) if acked else None,
                acknowledged_by="li" if acked else None,
                resolved_at=opened + rng.uniform(60, 7200) if resolved else None,
                resolution="cleared" if resolved else None,
            )
            rows.append({**alert_values(alert, opened), "level": 0})
            if len(rows) >= 20_000:
                conn.execute(insert(ALERT), rows)
                rows = []
        if rows:
            conn.execute(insert(ALERT), rows)
    return ids


def _change(station: str, status: str, at: float) -> dict[str, Any]:
    return {"station": station, "status": status, "reason": "bench", "session": 1, "at": at}


def timed(fn: Callable[[], Any], number: int) -> dict[str, float]:
    """Median, p95 and min milliseconds of ``number`` calls (after one warm-up call)."""
    fn()
    runs = []
    for _ in range(number):
        start = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - start) * 1000)
    return {
        "median_ms": round(statistics.median(runs), 2),
        "p95_ms": round(percentile(runs, 95), 2),
        "min_ms": round(min(runs), 2),
    }


@contextlib.contextmanager
def database(kind: str) -> Iterator[str]:
    if kind == "postgres":
        with throwaway_postgres() as url:
            yield url
    else:
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{Path(tmp) / 'c.db'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=20, help="status changes per station")
    parser.add_argument("--resolved", type=int, default=200_000)
    parser.add_argument("--unresolved", type=int, default=3_000)
    parser.add_argument("--number", type=int, default=30)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args()

    with database(args.db) as url:
        settings = Settings(bootstrap_token=BENCH_TOKEN, db_url=url)
        controller = Controller(settings)  # never started: no broker, no ingest
        migrate(controller.engine)
        now = time.time()
        started = time.perf_counter()
        ids = populate(controller.engine, args, now)
        if args.db == "postgres":
            with controller.engine.begin() as conn:
                conn.execute(text("ANALYZE"))
        print(f"populated in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        app = create_app(settings, controller)
        loop = asyncio.new_event_loop()
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), headers=BENCH_AUTH, base_url="http://controller"
        )
        rng = random.Random(11)

        def get(path: str) -> Callable[[], Any]:
            def call() -> None:
                response = loop.run_until_complete(client.get(path))
                assert response.status_code == 200, (path, response.text)

            return call

        def station_path(kind: str) -> Callable[[], Any]:
            def call() -> None:
                station = rng.choice(ids)
                path = (
                    f"/api/stations/{station}"
                    if kind == "detail"
                    else f"/api/alerts?station={station}&state=open"
                )
                response = loop.run_until_complete(client.get(path))
                assert response.status_code == 200, (path, response.text)

            return call

        def count(where: str) -> Callable[[], Any]:
            def call() -> None:
                with controller.engine.connect() as conn:
                    conn.execute(text(f"SELECT count(*) FROM alert WHERE {where}")).scalar_one()

            return call

        month_ago = _iso(now - 30 * DAY)
        results: dict[str, dict[str, float]] = {}
        for name, fn in (
            ("GET /api/fleet/summary", get("/api/fleet/summary")),
            ("GET /api/alerts?state=active (100)", get("/api/alerts?state=active")),
            ("GET /api/alerts (newest 100 of all)", get("/api/alerts")),
            ("GET /api/alerts?station=…&state=open", station_path("list")),
            ("GET /api/stations/{id} (with its alerts)", station_path("detail")),
            ("GET /metrics", get("/metrics")),
            (
                "GET /api/alerts/stats (30 days)",
                get(f"/api/alerts/stats?from={month_ago}"),
            ),
            ("GET /api/availability?by=district (7 days)", get("/api/availability?by=district")),
            ("GET /api/availability?by=station (7 days)", get("/api/availability?by=station")),
            ("count state != 'resolved'", count("state != 'resolved'")),
            ("count state IN (open, acknowledged)", count("state IN ('open', 'acknowledged')")),
        ):
            number = args.number if "availability" not in name else max(args.number // 6, 3)
            results[name] = timed(fn, number)
            print(f"{name:<48} {results[name]}", file=sys.stderr)
        ne = results["count state != 'resolved'"]["median_ms"]
        in_ = results["count state IN (open, acknowledged)"]["median_ms"]
        print(f"!= / IN (median): {ne / in_:.1f}", file=sys.stderr)
        loop.run_until_complete(client.aclose())
        loop.close()
        controller.engine.dispose()
    print(
        json.dumps(
            {
                "db": args.db,
                "stations": args.stations,
                "history_rows": args.stations * (args.changes + 1),
                "resolved": args.resolved,
                "unresolved": args.unresolved,
                "results": results,
                "ne_over_in": round(ne / in_, 1),
            }
        )
    )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


if __name__ == "__main__":
    main()
