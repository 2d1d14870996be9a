"""What a Prometheus scrape of ``/metrics`` costs with a large fleet: series count, bytes, and
the time of ``GET /metrics`` through the whole app in-process (httpx's ASGI transport, no
sockets), split into reading the database (``fleetmetrics.read_snapshot``) and building plus
rendering the families; SQLite and PostgreSQL side by side, at each ``--stations`` count.

The station table is filled the way the controller fills it: births of the simulated Wuxi
fleet applied by the store (``FleetStore.apply``), every profile's devices with supplies;
then a mix of states is written into the rows (1 in 10 stations degraded by a printer out of
paper, 1 in 20 silent, 1 in 25 offline, paper low and cashboxes high here and there) and
``--alerts`` active alerts and 200 notifications are inserted; ``--rollouts`` rollouts to the
whole fleet are created by the rollouts module (the newest running), and reading them
(``fleetmetrics.read_rollouts``) is timed on its own.

    flock /tmp/kioskfleet-bench.lock .venv/bin/python bench/metrics_scrape.py \\
        --stations 1000 10000 --out bench/results/2026-11-30/metrics-scrape.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
import timeit
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from _support import postgres_available, throwaway_postgres
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select, text, update

from kioskfleet.controller import rollouts
from kioskfleet.controller.app import create_app
from kioskfleet.controller.config import Settings
from kioskfleet.controller.db import migrate
from kioskfleet.controller.fleetmetrics import (
    STATUS_NUMBER,
    FleetSnapshot,
    families,
    fleet_exposition,
    read_rollouts,
    read_snapshot,
)
from kioskfleet.controller.models import AlertRow, Notification, RolloutRow, Station
from kioskfleet.controller.service import Controller
from kioskfleet.controller.store import FleetStore
from kioskfleet.controller.tufrepo.releases import ReleasePublic
from kioskfleet.fleetsim.fleet import wuxi_fleet
from kioskfleet.protocol import decode_agent_message
from kioskfleet.protocol.devices import slot_kind

_DRIVER = {
    "printer": "escpos",
    "cash_acceptor": "ssp",
    "coin_acceptor": "cctalk",
    "id_reader": "ga467",
    "card_reader": "crt591",
}
_SUPPLIES: dict[str, dict[str, str]] = {
    "printer": {"paper": "full"},
    "cash_acceptor": {"cashbox": "ok"},
    "coin_acceptor": {"cashbox": "ok"},
}


def populate(engine: Engine, count: int, alerts: int) -> None:
    """``count`` stations born through the store, then a mix of states, alerts and
    notifications written into the tables."""
    migrate(engine)
    store = FleetStore(engine)
    identities = wuxi_fleet(count)
    for start in range(0, count, 2000):
        batch = []
        for identity in identities[start : start + 2000]:
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
                    slot: {
                        "device": (kind := slot_kind(slot)),
                        "driver": _DRIVER[kind],
                        "state": "online",
                        "faults": [],
                        "info": {"model": "M", "serial": f"{identity.station}-{slot}"},
                        **({"supplies": _SUPPLIES[kind]} if kind in _SUPPLIES else {}),
                    }
                    for slot in identity.required_devices or ()
                },
            }
            raw = json.dumps(payload).encode()
            batch.append(("state", decode_agent_message("state", identity.station, raw)))
        store.apply(batch, now=time.time())  # type: ignore[arg-type]

    table = Station.__table__  # type: ignore[attr-defined]
    with engine.begin() as conn:
        rows = conn.execute(table.select().with_only_columns(table.c.id, table.c.devices)).all()
        for n, (sid, devices) in enumerate(rows):
            values: dict[str, Any] = {"last_seen": time.time() - n % 30}
            if n % 10 == 3 and "printer" in devices:
                devices["printer"].update(
                    state="user_error", faults=["paper_out"], supplies={"paper": "out"}
                )
                values.update(status="degraded", degraded=True, devices=devices)
            elif n % 7 == 1 and "printer" in devices:
                devices["printer"]["supplies"] = {"paper": "low"}
                values["devices"] = devices
            elif n % 11 == 2 and "cash_acceptor" in devices:
                devices["cash_acceptor"]["supplies"] = {"cashbox": "high"}
                values["devices"] = devices
            if n % 20 == 5:
                values["status"] = "silent"
            if n % 25 == 7:
                values.update(status="offline", online=False)
            conn.execute(update(table).where(table.c.id == sid).values(**values))

        districts = sorted({i.district for i in identities})
        now = time.time()
        conn.execute(
            AlertRow.__table__.insert(),  # type: ignore[attr-defined]
            [
                {
                    "id": (aid := uuid.uuid4().hex),
                    "subject": aid,
                    "district": districts[k % len(districts)],
                    "station": identities[k % count].station,
                    "condition": "paper_out",
                    "severity": ("critical", "warning", "info")[k % 3],
                    "state": ("open", "acknowledged", "resolved")[k % 3],
                    "opened_at": now,
                    "details": {},
                    "stations": [],
                    "awaiting_clear": False,
                    "level": 0,
                    "updated_at": now,
                }
                for k in range(alerts)
            ],
        )
        conn.execute(
            Notification.__table__.insert(),  # type: ignore[attr-defined]
            [
                {
                    "alert_id": "a",
                    "kind": "opened",
                    "receiver": "r",
                    "payload": {},
                    "created_at": now,
                    "next_attempt_at": now,
                    "sent_at": now if k % 2 else None,
                    "given_up_at": now if k % 10 == 0 else None,
                }
                for k in range(200)
            ],
        )


def ms(fn: Callable[[], Any], number: int) -> tuple[float, float]:
    """(median, min) milliseconds per call over 5 repeats of ``number`` calls."""
    runs = [t / number * 1000 for t in timeit.repeat(fn, number=number, repeat=5)]
    return statistics.median(runs), min(runs)


# The alternatives measured beside the controller's code (decision 41): the device statuses
# grouped in the database by ``json_each`` (the first version), and every family rendered by
# prometheus_client (the per-station ones too).
_JSON_EACH: dict[str, str] = {
    "sqlite": """
        SELECT coalesce(s.district, 'unknown'), d.key, json_extract(d.value, '$.state'),
               json_extract(d.value, '$.supplies.paper'),
               json_extract(d.value, '$.supplies.cashbox'), count(*)
        FROM station AS s, json_each(s.devices) AS d
        WHERE s.status != 'offline' AND d.type = 'object'
        GROUP BY 1, 2, 3, 4, 5""",
    "postgresql": """
        SELECT coalesce(s.district, 'unknown'), d.key, d.value ->> 'state',
               d.value -> 'supplies' ->> 'paper', d.value -> 'supplies' ->> 'cashbox', count(*)
        FROM station AS s CROSS JOIN LATERAL json_each(s.devices) AS d
        WHERE s.status != 'offline' AND json_typeof(d.value) = 'object'
        GROUP BY 1, 2, 3, 4, 5""",
}


def read_json_each(engine: Engine) -> None:
    """``read_snapshot`` as first written: the station scan without the devices' JSON, the
    devices grouped by json_each, then the same alert and outbox queries."""
    table = Station.__table__  # type: ignore[attr-defined]
    with engine.connect() as conn:
        conn.execute(
            select(
                table.c.id,
                table.c.district,
                table.c.site_type,
                table.c.status,
                func.coalesce(table.c.last_seen, table.c.registered_at),
            )
        ).all()
        conn.execute(text(_JSON_EACH[engine.dialect.name])).all()
        # the rest of read_snapshot, the same in both
        conn.execute(
            text(
                "SELECT coalesce(district, 'unknown'), severity, state, count(*) FROM alert"
                " WHERE state IN ('open', 'acknowledged') GROUP BY 1, 2, 3"
            )
        ).all()
        conn.execute(
            text("SELECT count(*) FROM notification WHERE sent_at IS NULL AND given_up_at IS NULL")
        ).all()
        conn.execute(text("SELECT count(*) FROM notification WHERE given_up_at IS NOT NULL")).all()


def render_all_by_client(snap: Any) -> bytes:
    """Every family, the per-station ones too, through prometheus_client."""
    status = GaugeMetricFamily("kioskfleet_station_status", "", labels=["station", "district"])
    seen = GaugeMetricFamily(
        "kioskfleet_station_last_seen_timestamp_seconds", "", labels=["station"]
    )
    for point in snap.stations:
        status.add_metric([point.id, point.district], STATUS_NUMBER[point.status])
        seen.add_metric([point.id], point.last_seen)
    all_families = [*families(snap), status, seen]

    class Fixed(Collector):
        def collect(self) -> Iterator[Any]:
            yield from all_families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    return generate_latest(registry)


def add_rollouts(engine: Engine, count: int) -> None:
    """``count`` rollouts of a made-up release to every station, the newest running."""
    release = ReleasePublic(
        id="software-bench", kind="software", version="9.9.9", release_counter=1, targets=[]
    )
    table = RolloutRow.__table__  # type: ignore[attr-defined]
    for n in range(count):
        with engine.begin() as conn:
            rollout_id = rollouts.create_rollout(
                conn=conn,
                body=rollouts.RolloutRequest(release=release.id),
                release=release,
                actor="bench",
                source=None,
                now=time.time() - (count - n) * 60,
            )
            if n == count - 1:
                conn.execute(
                    update(table).where(table.c.id == rollout_id).values(state="running", wave=1)
                )


def measure(
    db_url: str, count: int, number: int, alerts: int, rollout_count: int
) -> dict[str, Any]:
    settings = Settings(db_url=db_url)
    controller = Controller(settings)
    populate(controller.engine, count, alerts)
    engine = controller.engine
    add_rollouts(engine, rollout_count)

    def read_rollouts_alone() -> None:
        with engine.connect() as conn:
            read_rollouts(conn, FleetSnapshot(), time.time())

    def read() -> Any:
        with engine.connect() as conn:
            return read_snapshot(conn, districts=settings.districts)

    # what Controller.start() registers (start itself would connect to a broker)
    controller.metrics.watch_fleet(read)
    snap = read()

    app = create_app(settings, controller)
    loop = asyncio.new_event_loop()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://c")

    def scrape() -> httpx.Response:
        return loop.run_until_complete(client.get("/metrics"))

    body = scrape().text
    series = [line for line in body.splitlines() if line and not line.startswith("#")]
    per_station = [s for s in series if s.startswith("kioskfleet_station_")]
    result = {
        "stations": count,
        "db": engine.dialect.name,
        "series": len(series),
        "series_per_station_families": len(per_station),
        "series_aggregates_and_counters": len(series) - len(per_station),
        "bytes": len(body.encode()),
        "rollouts": rollout_count,
        "series_rollout_families": sum(1 for s in series if s.startswith("kioskfleet_rollout")),
        "read_ms": ms(read, number),
        "read_rollouts_ms": ms(read_rollouts_alone, number),
        "read_json_each_ms": ms(lambda: read_json_each(engine), number),
        "families_render_ms": ms(lambda: fleet_exposition(snap), number),
        "render_all_by_client_ms": ms(lambda: render_all_by_client(snap), number),
        "get_metrics_ms": ms(scrape, number),
    }
    loop.run_until_complete(client.aclose())
    loop.close()
    engine.dispose()
    return result


@contextlib.contextmanager
def database(kind: str) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{Path(tmp) / 'c.db'}"
    else:
        with throwaway_postgres() as url:
            yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--number", type=int, default=5, help="scrapes per timing repeat")
    parser.add_argument("--alerts", type=int, default=600, help="alerts inserted (2/3 active)")
    parser.add_argument("--rollouts", type=int, default=3, help="rollouts to the whole fleet")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    kinds = ["sqlite"] + (["postgresql"] if postgres_available() is None else [])
    results = []
    for count in args.stations:
        for kind in kinds:
            with database(kind) as url:
                result = measure(url, count, args.number, args.alerts, args.rollouts)
            results.append(result)
            print(
                f"{result['db']:<10} {count:>6} stations: {result['series']:>6} series "
                f"({result['series_per_station_families']} per station, "
                f"{result['series_aggregates_and_counters']} aggregate), "
                f"{result['bytes']:>9,} bytes; GET /metrics median "
                f"{result['get_metrics_ms'][0]:7.1f} ms (min {result['get_metrics_ms'][1]:.1f}); "
                f"read {result['read_ms'][0]:6.1f} ms (json_each: "
                f"{result['read_json_each_ms'][0]:.1f}; its rollouts alone "
                f"{result['read_rollouts_ms'][0]:.1f}, {result['series_rollout_families']} "
                f"series), render "
                f"{result['families_render_ms'][0]:6.1f} ms (all by prometheus_client: "
                f"{result['render_all_by_client_ms'][0]:.1f})",
                flush=True,
            )
    for r in results:
        read_ratio = r["read_ms"][0] / r["read_json_each_ms"][0]
        render_ratio = r["families_render_ms"][0] / r["render_all_by_client_ms"][0]
        print(
            f"{r['db']} {r['stations']}: read ÷ json_each read = {read_ratio:.2f}; "
            f"render ÷ all by prometheus_client = {render_ratio:.2f}"
        )
    by = {(r["db"], r["stations"]): r for r in results}
    small, large = min(args.stations), max(args.stations)
    for kind in ("sqlite", "postgresql"):
        if (kind, small) in by and (kind, large) in by and small != large:
            ratio = by[(kind, large)]["get_metrics_ms"][0] / by[(kind, small)]["get_metrics_ms"][0]
            print(f"{kind}: GET /metrics at {large} ÷ at {small} stations = {ratio:.2f}")
    for count in args.stations:
        if ("sqlite", count) in by and ("postgresql", count) in by:
            ratio = (
                by[("postgresql", count)]["get_metrics_ms"][0]
                / by[("sqlite", count)]["get_metrics_ms"][0]
            )
            print(f"{count} stations: GET /metrics PostgreSQL ÷ SQLite = {ratio:.2f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
