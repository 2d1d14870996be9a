"""What the console's pages cost with a large fleet: each page and the fragment the live stream
makes it re-read, through the whole app in-process (httpx's ASGI transport, no sockets),
beside ``GET /api/fleet/summary`` and ``GET /metrics`` measured in the same run (the overview
both as most requests find it, read by another page moments ago, and read again, as after a
status change); SQLite and
PostgreSQL, at each ``--stations`` count. The fleet is filled as ``bench/metrics_scrape.py``
fills it (births through the store, then a mix of states, alerts, notifications).

    flock /tmp/kioskfleet-bench.lock .venv/bin/python bench/console_pages.py \\
        --stations 1000 10000 --out bench/results/2026-11-30/console-pages.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
from _support import BENCH_AUTH, BENCH_TOKEN, postgres_available
from metrics_scrape import database, ms, populate

from kioskfleet.controller.app import create_app
from kioskfleet.controller.config import Settings
from kioskfleet.controller.fleetmetrics import read_snapshot
from kioskfleet.controller.service import Controller

PATHS = (
    "/api/fleet/summary",
    "/metrics",
    "/",
    "/fragments/overview",
    "/fragments/overview (read again)",
    "/stations",
    "/fragments/stations?status=degraded",
    "/stations/{station}",
    "/fragments/stations/{station}",
)


def measure(db_url: str, count: int, number: int) -> dict[str, Any]:
    settings = Settings(bootstrap_token=BENCH_TOKEN, db_url=db_url)
    controller = Controller(settings)
    populate(controller.engine, count, 600)
    engine = controller.engine

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
    result: dict[str, Any] = {"stations": count, "db": engine.dialect.name, "ms": {}}
    for path in PATHS:
        url = path.format(station=sid).removesuffix(" (read again)")
        again = path.endswith("(read again)")

        def get(url: str = url, again: bool = again) -> httpx.Response:
            if again:  # as after a status change: the shared overview is read again
                app.state.shared_overview = None
            response = loop.run_until_complete(client.get(url))
            assert response.status_code == 200, (url, response.status_code)
            return response

        size = len(get().content)
        result["ms"][path] = {"median_min": ms(get, number), "bytes": size}
    loop.run_until_complete(client.aclose())
    loop.close()
    engine.dispose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--number", type=int, default=5, help="requests per timing repeat")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    kinds = ["sqlite"] + (["postgresql"] if postgres_available() is None else [])
    results = []
    for count in args.stations:
        for kind in kinds:
            with database(kind) as url:
                r = measure(url, count, args.number)
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
