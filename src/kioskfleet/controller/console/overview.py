"""What the overview page shows, read in one go: the API's fleet summary (the same numbers as
``/api/fleet/summary``) and the metrics' fleet snapshot (site types, supplies, alerts); and
the availability today, computed by the module behind ``/api/availability``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from sqlalchemy import Connection

from kioskfleet.controller import crud, figures
from kioskfleet.controller.fleetmetrics import read_snapshot
from kioskfleet.controller.public import FleetSummary, StationPublic, StatusCounts

STATUSES: Final = ("online", "degraded", "silent", "offline")
SEVERITIES: Final = ("critical", "warning", "info")
#: supply levels that need a person soon
LOW: Final[dict[str, tuple[str, ...]]] = {
    "paper": ("low", "out", "jammed"),
    "cashbox": ("high", "full", "missing"),
}
#: stations listed under "needing attention", worst first
ATTENTION_MAX: Final = 20


@dataclass
class Overview:
    summary: FleetSummary
    #: severity → unresolved (open or acknowledged) alerts
    alerts: dict[str, int]
    #: site type → status → stations (and ``stations``)
    site_types: dict[str, dict[str, int]]
    #: district → supply → level → devices, only levels in :data:`LOW`
    supplies: dict[str, dict[str, dict[str, int]]]
    attention: list[StationPublic] = field(default_factory=list)
    #: the tiles: the fleet's districts in their usual order (zeros where a district has no
    #: station yet), then any other district the stations name
    districts: list[tuple[str, StatusCounts]] = field(default_factory=list)


@dataclass(frozen=True)
class Today:
    """Availability since midnight in Asia/Shanghai: ``GET /api/availability?by=district``
    over [``start``, ``end``) gives the same numbers."""

    #: Unix seconds: midnight in Asia/Shanghai, and when it was computed
    start: float
    end: float
    #: the whole fleet (its districts together, :func:`figures.combined`); None: no station
    fleet: float | None
    #: district → its availability (None: no station in the period)
    districts: dict[str, float | None]


def today(conn: Connection, now: float) -> Today:
    """The availability from midnight (Asia/Shanghai) to ``now``, per district and for the
    fleet, by :func:`figures.availability` (one way to compute it)."""
    start = figures.day_start(now)
    found = figures.availability(conn=conn, start=start, end=now, by="district")
    return Today(
        start=start,
        end=now,
        fleet=figures.combined(found.items),
        districts={item.district or "": item.availability for item in found.items},
    )


def overview(conn: Connection, districts: Sequence[str] = ()) -> Overview:
    """The overview of the fleet; ``districts``: the tiles' order (``Settings.districts``)."""
    summary = crud.fleet_summary(conn=conn)
    zero = StatusCounts(stations=0, online=0, degraded=0, silent=0, offline=0)
    tiles = [(name, summary.districts.get(name, zero)) for name in districts]
    tiles += [(name, d) for name, d in summary.districts.items() if name not in districts]
    snap = read_snapshot(conn)
    alerts = dict.fromkeys(SEVERITIES, 0)
    # open and acknowledged: what the summary's ``open_alerts`` counts (unresolved)
    for (_, severity, _state), n in snap.alerts.items():
        alerts[severity] = alerts.get(severity, 0) + n
    site_types: dict[str, dict[str, int]] = {}
    for (_, site_type, status), n in snap.by_site_type.items():
        row = site_types.setdefault(site_type, {"stations": 0, **dict.fromkeys(STATUSES, 0)})
        row[status] = row.get(status, 0) + n
        row["stations"] += n
    supplies: dict[str, dict[str, dict[str, int]]] = {}
    for (district, supply, level), n in snap.supplies.items():
        if n and level in LOW.get(supply, ()):
            supplies.setdefault(district, {}).setdefault(supply, {})[level] = n
    attention: list[StationPublic] = []
    for status in ("offline", "silent", "degraded"):
        left = ATTENTION_MAX - len(attention)
        if left <= 0:
            break
        page = crud.list_stations(conn=conn, filters={"status": status}, limit=left, offset=0)
        attention.extend(page.items)
    return Overview(
        summary=summary,
        alerts=alerts,
        site_types=dict(sorted(site_types.items())),
        supplies=dict(sorted(supplies.items())),
        attention=attention,
        districts=tiles,
    )
