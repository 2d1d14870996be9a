"""Read side of the fleet: keyword-only query functions that return the API's public models
(``controller.public``), no HTTP in them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, or_, select

from kioskfleet.controller import alertviews
from kioskfleet.controller.fleet import STATUSES
from kioskfleet.controller.models import (
    Counter,
    Station,
    StationHistory,
    Telemetry,
    TelemetryHourly,
)
from kioskfleet.controller.public import (
    FleetSummary,
    StationDetail,
    StationList,
    StationTelemetry,
    StationTelemetryHourly,
)

_S = Station.__table__  # type: ignore[attr-defined]
_H = StationHistory.__table__  # type: ignore[attr-defined]
_C = Counter.__table__  # type: ignore[attr-defined]
_T = Telemetry.__table__  # type: ignore[attr-defined]
_TH = TelemetryHourly.__table__  # type: ignore[attr-defined]


def utc(ts: float) -> datetime:
    """UTC Unix seconds → an aware datetime (the API renders it ISO 8601 with ``Z``)."""
    return datetime.fromtimestamp(ts, UTC)


def utc_or_none(ts: float | None) -> datetime | None:
    """:func:`utc`, passing None through."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def status_counts(*, conn: Connection) -> dict[tuple[str, str], int]:
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


def fleet_summary(*, conn: Connection) -> FleetSummary:
    """CONTRACT §4 ``/api/fleet/summary``; ``open_alerts`` counts the unresolved alerts (open
    and acknowledged), the total of ``/api/alerts?state=active``."""
    totals = totals_template()
    districts: dict[str, dict[str, int]] = {}
    for (district, status), n in status_counts(conn=conn).items():
        if status not in totals:
            continue
        totals[status] += n
        entry = districts.setdefault(district, {"stations": 0, **totals_template()})
        entry[status] += n
        entry["stations"] += n
    counters = {name: int(value) for name, value in conn.execute(select(_C.c.name, _C.c.value))}
    return FleetSummary.model_validate(
        {
            "stations": sum(totals.values()),
            **totals,
            "open_alerts": alertviews.unresolved_count(conn=conn),
            "ingested": {
                "telemetry": counters.get("ingested_telemetry", 0),
                "events": counters.get("ingested_events", 0),
            },
            "rejected": counters.get("rejected", 0),
            "districts": dict(sorted(districts.items())),
        }
    )


#: what a list item needs: not ``devices``, whose JSON would be decoded for every row
_LISTED = (
    _S.c.id,
    _S.c.district,
    _S.c.site,
    _S.c.site_type,
    _S.c.profile,
    _S.c.status,
    _S.c.status_since,
    _S.c.last_seen,
    _S.c.agent_version,
    _S.c.catalogue_version,
    _S.c.telemetry_interval,
    _S.c.in_service,
)


def _listed(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "district": row.district,
        "site": row.site,
        "site_type": row.site_type,
        "profile": row.profile,
        "status": row.status,
        "status_since": utc(row.status_since),
        "last_seen": utc_or_none(row.last_seen),
        "versions": {"agent": row.agent_version, "catalogue": row.catalogue_version},
        "telemetry_interval": row.telemetry_interval,
        "in_service": row.in_service,
    }


def list_stations(
    *,
    conn: Connection,
    filters: Mapping[str, str | bool | None],
    limit: int,
    offset: int,
    q: str | None = None,
) -> StationList:
    """CONTRACT §4 ``/api/stations``: filtered, paged, ordered by id.

    ``filters`` maps a column (``district``, ``site``, ``site_type``, ``profile``, ``status``,
    ``in_service``) to the value it must have; None leaves that column free. ``q`` keeps the
    stations whose id or site contains it, ignoring case (``%`` and ``_`` are plain text).
    """
    query = select(*_LISTED)
    counted = select(func.count()).select_from(_S)
    for column, value in filters.items():
        if value is not None:
            query = query.where(_S.c[column] == value)
            counted = counted.where(_S.c[column] == value)
    if q:
        needle = q.lower()
        matches = or_(
            func.lower(_S.c.id).contains(needle, autoescape=True),
            func.lower(func.coalesce(_S.c.site, "")).contains(needle, autoescape=True),
        )
        query = query.where(matches)
        counted = counted.where(matches)
    total = int(conn.execute(counted).scalar_one())
    rows = conn.execute(query.order_by(_S.c.id).limit(limit).offset(offset))
    # one validation of the whole page, in pydantic's core (cheaper than a model per row)
    return StationList.model_validate({"items": [_listed(row) for row in rows], "total": total})


def station_choices(*, conn: Connection) -> dict[str, list[str]]:
    """The districts and site types stations have (the console's filter choices)."""
    return {
        column: [
            value
            for (value,) in conn.execute(
                select(_S.c[column])
                .where(_S.c[column].is_not(None))
                .distinct()
                .order_by(_S.c[column])
            )
        ]
        for column in ("district", "site_type")
    }


def get_station(*, conn: Connection, station_id: str, history: int = 50) -> StationDetail | None:
    """CONTRACT §4 ``/api/stations/{id}``: the list item plus devices, history, and its
    unresolved alerts (with the site incident it is a member of, if any).

    None when no station has that id. ``history`` bounds the status changes returned.
    """
    row = conn.execute(select(_S).where(_S.c.id == station_id)).first()
    if row is None:
        return None
    recent = conn.execute(
        select(_H.c.status, _H.c.reason, _H.c.session, _H.c.at)
        .where(_H.c.station == station_id)
        .order_by(_H.c.at.desc(), _H.c.id.desc())
        .limit(history)
    )
    return StationDetail.model_validate(
        {
            **_listed(row),
            "online": row.online,
            "session": row.session,
            "last_telemetry_at": utc_or_none(row.last_telemetry_at),
            "registered_at": utc(row.registered_at),
            "devices": row.devices or {},
            "required_devices": row.required_devices,
            "maintenance_window": row.maintenance_window,
            "history": [
                {"status": h.status, "reason": h.reason, "session": h.session, "at": utc(h.at)}
                for h in recent
            ],
            "alerts": alertviews.station_alerts(
                conn=conn, station=station_id, district=row.district, site=row.site
            ),
        }
    )


def _station_exists(conn: Connection, station_id: str) -> bool:
    return conn.execute(select(_S.c.id).where(_S.c.id == station_id)).first() is not None


def station_telemetry(
    *, conn: Connection, station_id: str, start: float, end: float, limit: int
) -> StationTelemetry | None:
    """A station's raw telemetry received in [``start``, ``end``) (UTC Unix seconds), oldest
    first; the newest ``limit`` when more match. None when no station has that id.

    Both queries walk the (station, received_at) index; on PostgreSQL only the day partitions
    of the window are read.
    """
    if not _station_exists(conn, station_id):
        return None
    window = (_T.c.station == station_id, _T.c.received_at >= start, _T.c.received_at < end)
    total = int(conn.execute(select(func.count()).select_from(_T).where(*window)).scalar_one())
    rows = conn.execute(
        select(_T.c.received_at, _T.c.ts, _T.c.host, _T.c.devices)
        .where(*window)
        .order_by(_T.c.received_at.desc())
        .limit(limit)
    ).all()
    items = [
        {
            "received_at": utc(row.received_at),
            "ts": utc(row.ts),
            "host": row.host,
            "devices": {
                slot: status["state"]
                for slot, status in (row.devices or {}).items()
                if isinstance(status, dict) and "state" in status
            },
        }
        for row in reversed(rows)
    ]
    return StationTelemetry.model_validate({"items": items, "total": total})


def station_telemetry_hourly(
    *, conn: Connection, station_id: str, start: float | None, end: float, limit: int
) -> StationTelemetryHourly | None:
    """A station's hourly aggregates for hours starting in [``start``, ``end``) (no lower
    bound when ``start`` is None), oldest first; the newest ``limit`` when more match. None
    when no station has that id."""
    if not _station_exists(conn, station_id):
        return None
    window = [_TH.c.station == station_id, _TH.c.hour < end]
    if start is not None:
        window.append(_TH.c.hour >= start)
    total = int(conn.execute(select(func.count()).select_from(_TH).where(*window)).scalar_one())
    rows = conn.execute(
        select(_TH.c.hour, _TH.c.samples, _TH.c.host, _TH.c.device_states)
        .where(*window)
        .order_by(_TH.c.hour.desc())
        .limit(limit)
    ).all()
    items = [
        {
            "hour": utc(row.hour),
            "samples": row.samples,
            "host": row.host,
            "device_states": row.device_states,
        }
        for row in reversed(rows)
    ]
    return StationTelemetryHourly.model_validate({"items": items, "total": total})
