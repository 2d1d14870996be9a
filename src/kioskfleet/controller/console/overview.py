"""What the overview page shows, read in one go: the API's fleet summary (the same numbers as
``/api/fleet/summary``) and the metrics' fleet snapshot (site types, supplies, alerts)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from sqlalchemy import Connection

from kioskfleet.controller import crud
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
