"""Read side of alerts, silences and maintenance windows: keyword-only query
functions over a connection that return the API's public models (``controller.public``), no
HTTP in them. The write side (people's changes) is :mod:`kioskfleet.controller.alertactions`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal

from sqlalchemy import ColumnElement, Connection, and_, func, select

from kioskfleet.controller.alerts.model import SITE_OFFLINE
from kioskfleet.controller.models import (
    AlertHistory,
    AlertRow,
    MaintenanceRow,
    SilenceRow,
    Station,
)
from kioskfleet.controller.public import (
    AlertDetail,
    AlertList,
    MaintenanceList,
    SilenceList,
    SilenceState,
)

_A = AlertRow.__table__  # type: ignore[attr-defined]
_AH = AlertHistory.__table__  # type: ignore[attr-defined]
_SIL = SilenceRow.__table__  # type: ignore[attr-defined]
_MT = MaintenanceRow.__table__  # type: ignore[attr-defined]
_S = Station.__table__  # type: ignore[attr-defined]

#: ``state`` filter of ``/api/alerts``: one state, or ``active`` (open and acknowledged)
AlertStateFilter = Literal["open", "acknowledged", "resolved", "active"]
#: the states of an alert not yet resolved
UNRESOLVED: Final = ("open", "acknowledged")
#: keys of an alert's ``details`` that hold a time (UTC Unix seconds in the row)
_TIME_KEYS: Final = ("since", "from", "last_change")
#: what an item needs (every column but the subject key and the writer's bookkeeping)
_LISTED: Final = tuple(
    _A.c[name]
    for name in (
        "id",
        "state",
        "severity",
        "condition",
        "of",
        "district",
        "site",
        "station",
        "device",
        "stations",
        "opened_at",
        "acknowledged_at",
        "acknowledged_by",
        "resolved_at",
        "resolution",
        "resolved_by",
        "suppressed_by",
        "team",
        "level",
        "details",
    )
)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _utc_or_none(ts: float | None) -> datetime | None:
    return None if ts is None else _utc(ts)


def _details(stored: Mapping[str, Any] | None) -> dict[str, Any]:
    details: dict[str, Any] = {"summary": None, "since": None, **(stored or {})}
    for key in _TIME_KEYS:
        value = details.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            details[key] = _utc(value)
    return details


def alert_item(row: Any) -> dict[str, Any]:
    """A row of ``alert`` (with the :data:`_LISTED` columns) as an ``AlertPublic`` value."""
    return {
        "id": row.id,
        "state": row.state,
        "severity": row.severity,
        "condition": row.condition,
        "of": row.of,
        "district": row.district,
        "site": row.site,
        "station": row.station,
        "device": row.device,
        "stations": list(row.stations or ()) if row.condition == SITE_OFFLINE else None,
        "opened_at": _utc(row.opened_at),
        "acknowledged_at": _utc_or_none(row.acknowledged_at),
        "acknowledged_by": row.acknowledged_by,
        "resolved_at": _utc_or_none(row.resolved_at),
        "resolution": row.resolution,
        "resolved_by": row.resolved_by,
        "suppressed_by": row.suppressed_by,
        "team": row.team,
        "level": row.level,
        "details": _details(row.details),
    }


def _unresolved() -> ColumnElement[bool]:
    # IN rather than != 'resolved': a search of the (state, opened_at) index, not a scan of
    # every alert ever resolved
    unresolved: ColumnElement[bool] = _A.c.state.in_(UNRESOLVED)
    return unresolved


def list_alerts(
    *,
    conn: Connection,
    state: AlertStateFilter | None = None,
    filters: Mapping[str, str | None] | None = None,
    start: float | None = None,
    end: float | None = None,
    limit: int = 100,
    offset: int = 0,
) -> AlertList:
    """CONTRACT §4 ``/api/alerts``: newest first (by ``opened_at``), paged.

    ``filters`` maps a column (``district``, ``site``, ``station``, ``severity``,
    ``condition``, ``device``) to the value it must have; None leaves it free. ``station``
    matches an alert's own station: a site incident (``station`` null) is found by its
    ``district`` and ``site``. ``start``/``end`` bound ``opened_at`` (``start`` ≤ it <
    ``end``).
    """
    where: list[ColumnElement[bool]] = []
    if state == "active":
        where.append(_unresolved())
    elif state is not None:
        where.append(_A.c.state == state)
    for column, value in (filters or {}).items():
        if value is not None:
            where.append(_A.c[column] == value)
    if start is not None:
        where.append(_A.c.opened_at >= start)
    if end is not None:
        where.append(_A.c.opened_at < end)
    total = int(conn.execute(select(func.count()).select_from(_A).where(*where)).scalar_one())
    rows = conn.execute(
        select(*_LISTED)
        .where(*where)
        .order_by(_A.c.opened_at.desc(), _A.c.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return AlertList.model_validate({"items": [alert_item(row) for row in rows], "total": total})


def get_alert(*, conn: Connection, alert_id: str) -> AlertDetail | None:
    """One alert and its history (oldest first); None when no alert has that id."""
    row = conn.execute(select(*_LISTED).where(_A.c.id == alert_id)).first()
    if row is None:
        return None
    history = conn.execute(
        select(_AH.c.at, _AH.c.action, _AH.c.by, _AH.c.note, _AH.c.details)
        .where(_AH.c.alert_id == alert_id)
        .order_by(_AH.c.at, _AH.c.id)
    )
    return AlertDetail.model_validate(
        {
            **alert_item(row),
            "history": [
                {
                    "at": _utc(h.at),
                    "action": h.action,
                    "by": h.by,
                    "note": h.note,
                    "details": h.details or {},
                }
                for h in history
            ],
        }
    )


def station_alerts(
    *, conn: Connection, station: str, district: str | None, site: str | None
) -> list[dict[str, Any]]:
    """A station's unresolved alerts, newest first, as ``AlertPublic`` values: its own, and
    the unresolved ``site_offline`` incident of its site that lists it as a member (the
    incident speaks for its members, which get no offline alert of their own)."""
    own = _A.c.station == station
    incident = and_(
        _A.c.condition == SITE_OFFLINE,
        _A.c.station.is_(None),
        _A.c.district.is_not_distinct_from(district),
        _A.c.site.is_not_distinct_from(site),
    )
    rows = conn.execute(
        select(*_LISTED)
        .where(_unresolved(), own | incident)
        .order_by(_A.c.opened_at.desc(), _A.c.id.desc())
    )
    return [
        alert_item(row) for row in rows if row.station == station or station in (row.stations or ())
    ]


def unresolved_count(*, conn: Connection) -> int:
    """Alerts open or acknowledged: the summary's ``open_alerts``."""
    return int(conn.execute(select(func.count()).select_from(_A).where(_unresolved())).scalar_one())


# -- silences ------------------------------------------------------------------------------


def silence_state(starts_at: float, expires_at: float, now: float) -> SilenceState:
    """Where a silence stands at ``now``."""
    if now < starts_at:
        return "pending"
    return "active" if now < expires_at else "expired"


def silence_item(row: Any, now: float) -> dict[str, Any]:
    """A ``silence`` row as a ``SilencePublic`` value."""
    return {
        "id": row.id,
        "state": silence_state(row.starts_at, row.expires_at, now),
        "matchers": row.matchers,
        "author": row.author,
        "reason": row.reason,
        "starts_at": _utc(row.starts_at),
        "expires_at": _utc(row.expires_at),
        "created_at": _utc(row.created_at),
    }


def _silence_where(state: SilenceState | None, now: float) -> list[ColumnElement[bool]]:
    if state == "pending":
        return [_SIL.c.starts_at > now]
    if state == "active":
        return [_SIL.c.starts_at <= now, _SIL.c.expires_at > now]
    if state == "expired":
        return [_SIL.c.expires_at <= now]
    return []


def list_silences(
    *, conn: Connection, state: SilenceState | None, now: float, limit: int, offset: int
) -> SilenceList:
    """Silences (in ``state`` at ``now``, or all), newest first."""
    where = _silence_where(state, now)
    total = int(conn.execute(select(func.count()).select_from(_SIL).where(*where)).scalar_one())
    rows = conn.execute(
        select(_SIL)
        .where(*where)
        .order_by(_SIL.c.created_at.desc(), _SIL.c.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return SilenceList.model_validate(
        {"items": [silence_item(row, now) for row in rows], "total": total}
    )


# -- maintenance ---------------------------------------------------------------------------

MaintenanceState = Literal["active", "ended"]


def maintenance_item(row: Any, now: float) -> dict[str, Any]:
    """A ``maintenance`` row as a ``MaintenancePublic`` value."""
    return {
        "id": row.id,
        "station": row.station,
        "active": row.starts_at <= now < row.until,
        "by": row.by,
        "reason": row.reason,
        "starts_at": _utc(row.starts_at),
        "until": _utc(row.until),
        "created_at": _utc(row.created_at),
    }


def maintenance_where(
    *, station: str | None, state: MaintenanceState | None, now: float
) -> list[ColumnElement[bool]]:
    """The conditions selecting ``station``'s (or every) windows in ``state`` at ``now``."""
    where: list[ColumnElement[bool]] = []
    if station is not None:
        where.append(_MT.c.station == station)
    if state == "active":
        where.extend((_MT.c.starts_at <= now, _MT.c.until > now))
    elif state == "ended":
        where.append(_MT.c.until <= now)
    return where


def list_maintenance(
    *,
    conn: Connection,
    station: str | None,
    state: MaintenanceState | None,
    now: float,
    limit: int,
    offset: int,
) -> MaintenanceList:
    """Maintenance windows (of one station, or all; in ``state`` at ``now``, or all), newest
    first."""
    where = maintenance_where(station=station, state=state, now=now)
    total = int(conn.execute(select(func.count()).select_from(_MT).where(*where)).scalar_one())
    rows = conn.execute(
        select(_MT)
        .where(*where)
        .order_by(_MT.c.created_at.desc(), _MT.c.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return MaintenanceList.model_validate(
        {"items": [maintenance_item(row, now) for row in rows], "total": total}
    )
