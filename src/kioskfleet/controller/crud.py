"""Read side of the fleet: keyword-only query functions, no HTTP in them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, select

from kioskfleet.controller.fleet import STATUSES
from kioskfleet.controller.models import Counter, Station, StationHistory

_S = Station.__table__  # type: ignore[attr-defined]
_H = StationHistory.__table__  # type: ignore[attr-defined]
_C = Counter.__table__  # type: ignore[attr-defined]


def iso(ts: float | None) -> str | None:
    """UTC Unix seconds → ISO 8601 with ``Z``."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def status_counts(conn: Connection) -> dict[tuple[str, str], int]:
    """Stations per (district, status)."""
    rows = conn.execute(
        select(func.coalesce(_S.c.district, "unknown"), _S.c.status, func.count()).group_by(
            _S.c.district, _S.c.status
        )
    )
    counts: dict[tuple[str, str], int] = {}
    for district, status, n in rows:
        counts[(district, status)] = counts.get((district, status), 0) + int(n)
    return counts


def totals_template() -> dict[str, int]:
    """A zero count for every status."""
    return dict.fromkeys(STATUSES, 0)


def fleet_summary(conn: Connection, *, open_alerts: int = 0) -> dict[str, Any]:
    """CONTRACT §4 ``/api/fleet/summary``."""
    totals = totals_template()
    districts: dict[str, dict[str, int]] = {}
    for (district, status), n in status_counts(conn).items():
        if status not in totals:
            continue
        totals[status] += n
        entry = districts.setdefault(district, {"stations": 0, **totals_template()})
        entry[status] += n
        entry["stations"] += n
    counters = {name: int(value) for name, value in conn.execute(select(_C.c.name, _C.c.value))}
    return {
        "stations": sum(totals.values()),
        **totals,
        "open_alerts": open_alerts,
        "ingested": {
            "telemetry": counters.get("ingested_telemetry", 0),
            "events": counters.get("ingested_events", 0),
        },
        "rejected": counters.get("rejected", 0),
        "districts": dict(sorted(districts.items())),
    }


def _public(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "district": row.district,
        "site": row.site,
        "site_type": row.site_type,
        "profile": row.profile,
        "status": row.status,
        "status_since": iso(row.status_since),
        "last_seen": iso(row.last_seen),
        "versions": {"agent": row.agent_version, "catalogue": row.catalogue_version},
        "telemetry_interval": row.telemetry_interval,
    }


def list_stations(
    conn: Connection,
    *,
    filters: dict[str, str | None],
    limit: int,
    offset: int,
) -> dict[str, Any]:
    """CONTRACT §4 ``/api/stations``: filtered, paged, ordered by id."""
    query = select(_S)
    counted = select(func.count()).select_from(_S)
    for column, value in filters.items():
        if value is not None:
            query = query.where(_S.c[column] == value)
            counted = counted.where(_S.c[column] == value)
    total = int(conn.execute(counted).scalar_one())
    rows = conn.execute(query.order_by(_S.c.id).limit(limit).offset(offset))
    return {"items": [_public(row) for row in rows], "total": total}


def get_station(conn: Connection, *, station_id: str, history: int = 50) -> dict[str, Any] | None:
    """CONTRACT §4 ``/api/stations/{id}``: the list item plus devices, history, alerts."""
    row = conn.execute(select(_S).where(_S.c.id == station_id)).first()
    if row is None:
        return None
    recent = conn.execute(
        select(_H.c.status, _H.c.reason, _H.c.session, _H.c.at)
        .where(_H.c.station == station_id)
        .order_by(_H.c.at.desc(), _H.c.id.desc())
        .limit(history)
    )
    return {
        **_public(row),
        "online": row.online,
        "session": row.session,
        "last_telemetry_at": iso(row.last_telemetry_at),
        "registered_at": iso(row.registered_at),
        "devices": row.devices or {},
        "required_devices": row.required_devices,
        "history": [
            {"status": h.status, "reason": h.reason, "session": h.session, "at": iso(h.at)}
            for h in recent
        ],
        "alerts": [],
    }
