"""What the console's pages cost with a large fleet: each page and the fragment the live stream
makes it re-read, through the whole app in-process (httpx's ASGI transport, no sockets),
beside ``GET /api/fleet/summary`` and ``GET /metrics`` measured in the same run (the overview
as most requests find it, read by another page moments ago; read again after a status change,
its availability today kept; and read anew, availability today computed too, as once a
minute); SQLite and PostgreSQL, at each ``--stations`` count. The fleet is filled as
``bench/metrics_scrape.py`` fills it (births through the store, then a mix of states, alerts,
notifications), registered a month ago with ``--changes`` status changes each since midnight
(Asia/Shanghai) in its history.

    flock /tmp/kioskfleet-bench.lock .venv/bin/python bench/console_pages.py \\
        --stations 1000 10000 --out bench/results/2026-11-30/console-pages.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import httpx
from _support import BENCH_AUTH, BENCH_TOKEN, postgres_available
from metrics_scrape import database, ms, populate
from sqlalchemy import Engine, insert, update

from kioskfleet.controller.app import create_app
from kioskfleet.controller.config import Settings
from kioskfleet.controller.figures import day_start
from kioskfleet.controller.fleetmetrics import read_snapshot
from kioskfleet.controller.models import Station, StationHistory
from kioskfleet.controller.service import Controller

_S = Station.__table__  # type: ignore[attr-defined]
_H = StationHistory.__table__  # type: ignore[attr-defined]
STATUSES = ("degraded", "online", "silent", "online", "offline", "online")

PATHS = (
    "/api/fleet/summary",
    "/metrics",
    "/",
    "/fragments/overview",
    "/fragments/overview (read again)",
    "/fragments/overview (read anew)",
    "/stations",
    "/fragments/stations?status=degraded",
    "/stations/{station}",
    "/fragments/stations/{station}",
)


def histories(engine: Engine, changes: int, now: float) -> None:
    """Every station registered a month ago, online since, then ``changes`` status changes
    at random times since midnight (Asia/Shanghai): what availability today sums."""
    rng = random.Random(7)
    start = day_start(now)
    with engine.begin() as conn:
        conn.execute(update(_S).values(registered_at=now - 30 * 86400))
        ids = [row.id for row in conn.execute(_S.select().with_only_columns(_S.c.id))]
        rows: list[dict[str, Any]] = []
        for station in ids:
            times = sorted(rng.uniform(start, now) for _ in range(changes))
            for status, at in [
                ("online", now - 30 * 86400),
                *zip(STATUSES * changes, times, strict=False),
            ]:
                rows.append(
                    {
                        "station": station,
                        "status": status,
                        "reason": "bench",
                        "session": 1,
                        "at": at,
                    }
                )
            if len(rows) > 20_000:
                conn.execute(insert(_H), rows)
                rows = []
        if rows:
            conn.execute(insert(_H), rows)


def measure(db_url: str, count: int, number: int, changes: int) -> dict[str, Any]:
    settings = Settings(bootstrap_token=BENCH_TOKEN, db_url=db_url)
    controller = Controller(settings)
    populate(controller.engine, count, 600)
    engine = controller.engine
    histories(engine, changes, time.time())

    def read() -> Any:
        with engine.connect() as conn:
            return read_snapshot(conn, districts=settings.districts)

    controller.metrics.watch_fleet(read)
    app = create_app(settings, controller)
    loop = asyncio.new_event_loop()
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), headers=BENCH_AUTH, base_url="http://c"
    )
    station = loop.run_until_complete(client.get("/api/stations", params={"limit": 1})).json()
    sid = station["items"][0]["id"]
    result: dict[str, Any] = {
        "stations": count,
        "changes_today": changes,
        "db": engine.dialect.name,
        "ms": {},
    }
    for path in PATHS:
        url = path.format(station=sid).split(" (")[0]
        again = path.endswith("(read again)")
        anew = path.endswith("(read anew)")

        def get(url: str = url, again: bool = again, anew: bool = anew) -> httpx.Response:
            if again:  # a status change (the shared overview's key differs): read again
                with engine.begin() as conn:
                    conn.execute(update(_S).where(_S.c.id == sid).values(status_since=time.time()))
            if anew:  # nothing shared yet: the overview and availability today computed
                app.state.shared_overview = None
            response = loop.run_until_complete(client.get(url))
            assert response.status_code == 200, (url, response.status_code)
            return response

        size = len(get().content)
        result["ms"][path] = {"median_min": ms(get, number), "bytes": size}

    def change() -> None:
        with engine.begin() as conn:
            conn.execute(update(_S).where(_S.c.id == sid).values(status_since=time.time()))

    # what "read again" spends on its status change, to subtract
    result["ms"]["the status change alone"] = {"median_min": ms(change, number), "bytes": 0}
    loop.run_until_complete(client.aclose())
    loop.close()
    engine.dispose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--number", type=int, default=5, help="requests per timing repeat")
    parser.add_argument(
        "--changes", type=int, default=6, help="status changes per station since midnight"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    kinds = ["sqlite"] + (["postgresql"] if postgres_available() is None else [])
    results = []
    for count in args.stations:
        for kind in kinds:
            with database(kind) as url:
                r = measure(url, count, args.number, args.changes)
            results.append(r)
            summary = r["ms"]["/api/fleet/summary"]["median_min"][0]
            metrics = r["ms"]["/metrics"]["median_min"][0]
            for path, m in r["ms"].items():
                median, low = m["median_min"]
                print(
                    f"{r['db']:<10} {count:>6} stations  {path:<38} median {median:7.1f} ms "
                    f"(min {low:6.1f}), {m['bytes']:>7,} bytes; ÷ summary {median / summary:5.1f}, "
                    f"÷ /metrics {median / metrics:4.2f}",
                    flush=True,
                )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
