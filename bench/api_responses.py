"""CPU cost of the read API's responses: building and serializing a station list, a station's
detail and the fleet summary, exactly the way FastAPI does it for each route (the route's own
response field and ``fastapi.routing.serialize_response``), on SQLite, no broker.

``list 2000`` builds and serializes one list of ``--stations`` items (the route itself caps a
page at 1,000; the crud function does not); ``GET …`` goes through the whole app in-process
(httpx's ASGI transport, no sockets).

    .venv/bin/python bench/api_responses.py --stations 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from _support import BENCH_AUTH, BENCH_TOKEN
from fastapi.routing import APIRoute, serialize_response

from kioskfleet.controller import crud
from kioskfleet.controller.api.routes import stations
from kioskfleet.controller.app import create_app
from kioskfleet.controller.config import Settings
from kioskfleet.controller.db import migrate
from kioskfleet.controller.service import Controller
from kioskfleet.controller.store import FleetStore
from kioskfleet.fleetsim.fleet import PROFILE_DEVICES, wuxi_fleet
from kioskfleet.protocol import decode_agent_message

_DRIVER = {
    "printer": "escpos",
    "cash_acceptor": "ssp",
    "coin_acceptor": "cctalk",
    "id_reader": "ga467",
    "card_reader": "crt591",
}


def populate(controller: Controller, count: int) -> str:
    """``count`` stations born with their profile's devices; returns one station id."""
    migrate(controller.engine)
    store = FleetStore(controller.engine)
    batch = []
    for identity in wuxi_fleet(count):
        kinds = PROFILE_DEVICES[identity.profile]
        payload = {
            "v": 1,
            "station": identity.station,
            "session": 1,
            "seq": 0,
            "ts": 1.0,
            "online": True,
            "district": identity.district,
            "site": identity.site,
            "site_type": identity.site_type,
            "profile": identity.profile,
            "telemetry_interval": identity.telemetry_interval,
            "versions": {"agent": "0.1.0", "catalogue": "2026.11"},
            "devices": {
                kind: {
                    "device": kind,
                    "driver": _DRIVER[kind],
                    "state": "online",
                    "faults": [],
                    "info": {"model": "M", "serial": f"{identity.station}-{kind}"},
                }
                for kind in kinds
            },
        }
        raw = json.dumps(payload).encode()
        batch.append(("state", decode_agent_message("state", identity.station, raw)))
    store.apply(batch, now=2.0)  # type: ignore[arg-type]
    return batch[0][1].station  # type: ignore[attr-defined]


def ms(fn: Callable[[], Any], number: int) -> tuple[float, float]:
    """(median, min) milliseconds per call over 7 repeats of ``number`` calls."""
    runs = [t / number * 1000 for t in timeit.repeat(fn, number=number, repeat=7)]
    return statistics.median(runs), min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=2000)
    parser.add_argument("--number", type=int, default=20)
    parser.add_argument("--dump", type=Path, help="write each response body into this folder")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(bootstrap_token=BENCH_TOKEN, db_url=f"sqlite:///{Path(tmp) / 'c.db'}")
        controller = Controller(settings)
        one = populate(controller, args.stations)
        app = create_app(settings, controller)
        # the route as declared (FastAPI includes routers lazily: app.routes does not list it)
        (list_route,) = (
            r
            for r in stations.router.routes
            if isinstance(r, APIRoute) and r.endpoint is stations.list_stations
        )
        list_field = list_route.response_field
        loop = asyncio.new_event_loop()

        def list_all() -> bytes:
            with controller.engine.connect() as conn:
                page = crud.list_stations(
                    conn=conn,
                    filters=dict.fromkeys(crud_filters()),
                    limit=args.stations,
                    offset=0,
                )
            body = loop.run_until_complete(
                serialize_response(field=list_field, response_content=page, dump_json=True)
            )
            return body if isinstance(body, bytes) else json.dumps(body).encode()

        def query_only() -> Any:
            with controller.engine.connect() as conn:
                return crud.list_stations(
                    conn=conn,
                    filters=dict.fromkeys(crud_filters()),
                    limit=args.stations,
                    offset=0,
                )

        page = query_only()

        def serialize_only() -> Any:
            return loop.run_until_complete(
                serialize_response(field=list_field, response_content=page, dump_json=True)
            )

        body = list_all()
        assert len(json.loads(body)["items"]) == args.stations
        results = {
            f"list {args.stations}: query + models (crud)": ms(query_only, args.number),
            f"list {args.stations}: FastAPI validate + serialize": ms(serialize_only, args.number),
            f"list {args.stations}: both": ms(list_all, args.number),
        }
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), headers=BENCH_AUTH, base_url="http://controller"
        )
        for path in ("/api/stations?limit=1000", f"/api/stations/{one}", "/api/fleet/summary"):
            response = loop.run_until_complete(client.get(path))
            assert response.status_code == 200
            if args.dump:
                name = path.strip("/").replace("/", "_").replace("?", "_")
                (args.dump / f"{name}.json").write_bytes(response.content)
            results[f"GET {path}"] = ms(
                lambda p=path: loop.run_until_complete(client.get(p)), args.number
            )
        loop.run_until_complete(client.aclose())
        loop.close()
        controller.engine.dispose()
    width = max(map(len, results))
    for name, (median, best) in results.items():
        print(f"{name:<{width}}  median {median:7.2f} ms  min {best:7.2f} ms")
    print(f"list body: {len(body):,} bytes", file=sys.stderr)


def crud_filters() -> tuple[str, ...]:
    """The station list's filter names."""
    return ("district", "site", "site_type", "profile", "status")


if __name__ == "__main__":
    main()
