"""Figures over a period: how fast alerts are acknowledged and repaired, and how available
the stations were. One module for the API (``/api/alerts/stats``, ``/api/availability``) and
the dashboard: the queries fetch the rows, pure functions (:func:`durations`,
:func:`alert_figures`, :func:`online_seconds`) compute, so both show the same numbers.

Definitions (decision 32):

- alert figures are over the alerts **opened** in [from, to), per (district, severity):
  time to acknowledge = ``acknowledged_at - opened_at`` over the acknowledged ones; time to
  resolve = ``resolved_at - opened_at`` over the ones **repaired** (resolution ``cleared`` or
  ``by_person``; ``grouped`` and ``flapping`` close an alert into another one, which is
  counted in its own right); MTTR is the mean of the latter. Medians are the middle value
  (mean of the two middle ones), the 90th percentile is the nearest rank (⌈0.9·n⌉-th value).
- availability of a station is the share of [from, to) it spent ``online`` (connected,
  reporting, not degraded), from its status changes (``station_history``) and its status at
  the start of the period; a station registered during the period counts from its
  registration, one registered after it not at all. A site's or district's is the sum of its
  stations' online seconds over the sum of their seconds in the period, so every station
  weighs by the time it existed. Stations are grouped by their district and site now.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Connection, and_, func, select

from kioskfleet.controller.models import AlertRow, Station, StationHistory
from kioskfleet.controller.public import (
    AlertStats,
    Availability,
    AvailabilityBy,
)

_A = AlertRow.__table__  # type: ignore[attr-defined]
_S = Station.__table__  # type: ignore[attr-defined]
_H = StationHistory.__table__  # type: ignore[attr-defined]

#: resolutions that mean the problem was fixed (or went away), not folded into another alert
REPAIRED: Final = frozenset({"cleared", "by_person"})
#: the status that counts as available
AVAILABLE: Final = "online"
_SEVERITY_ORDER: Final = {"critical": 0, "warning": 1, "info": 2}


def durations(values: Sequence[float]) -> dict[str, Any]:
    """Count, mean, median and nearest-rank 90th percentile of ``values`` (None when
    empty)."""
    if not values:
        return {"n": 0, "mean_s": None, "median_s": None, "p90_s": None}
    ordered = sorted(values)
    p90 = ordered[math.ceil(0.9 * len(ordered)) - 1]
    return {
        "n": len(ordered),
        "mean_s": statistics.fmean(ordered),
        "median_s": float(statistics.median(ordered)),
        "p90_s": p90,
    }


def alert_figures(
    alerts: Iterable[Mapping[str, Any]], *, district: str | None, severity: str | None
) -> dict[str, Any]:
    """The figures of ``alerts`` (mappings with ``state``, ``opened_at``,
    ``acknowledged_at``, ``resolved_at``, ``resolution``), labelled with ``district`` and
    ``severity``."""
    count = 0
    unresolved = 0
    to_ack: list[float] = []
    to_resolve: list[float] = []
    for alert in alerts:
        count += 1
        if alert["state"] != "resolved":
            unresolved += 1
        if alert["acknowledged_at"] is not None:
            to_ack.append(alert["acknowledged_at"] - alert["opened_at"])
        if alert["resolved_at"] is not None and alert["resolution"] in REPAIRED:
            to_resolve.append(alert["resolved_at"] - alert["opened_at"])
    resolve = durations(to_resolve)
    return {
        "district": district,
        "severity": severity,
        "alerts": count,
        "acknowledged": len(to_ack),
        "resolved": len(to_resolve),
        "unresolved": unresolved,
        "time_to_acknowledge": durations(to_ack),
        "time_to_resolve": resolve,
        "mttr_s": resolve["mean_s"],
    }


def alert_stats(
    *, conn: Connection, start: float, end: float, district: str | None = None
) -> AlertStats:
    """``GET /api/alerts/stats``: figures of the alerts opened in [``start``, ``end``), per
    (district, severity) and overall (of ``district`` only, when given)."""
    where = [_A.c.opened_at >= start, _A.c.opened_at < end]
    if district is not None:
        where.append(_A.c.district == district)
    rows = [
        dict(row._mapping)
        for row in conn.execute(
            select(
                _A.c.district,
                _A.c.severity,
                _A.c.state,
                _A.c.opened_at,
                _A.c.acknowledged_at,
                _A.c.resolved_at,
                _A.c.resolution,
            ).where(*where)
        )
    ]
    groups: dict[tuple[str | None, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["district"], row["severity"]), []).append(row)
    ordered = sorted(groups, key=lambda k: (k[0] or "", _SEVERITY_ORDER.get(k[1], 9)))
    return AlertStats.model_validate(
        {
            "start": datetime.fromtimestamp(start, UTC),
            "end": datetime.fromtimestamp(end, UTC),
            "groups": [alert_figures(groups[k], district=k[0], severity=k[1]) for k in ordered],
            "overall": alert_figures(rows, district=district, severity=None),
        }
    )


def online_seconds(
    *,
    start: float,
    end: float,
    registered_at: float,
    initial: str | None,
    changes: Iterable[tuple[float, str]],
) -> tuple[float, float]:
    """(seconds in the period, seconds ``online``) of one station over [``start``,
    ``end``).

    Args:
        registered_at: when the station registered; it counts from then.
        initial: its status at ``start`` (its last change at or before it), None if unknown
            (time before its first known status counts as not available).
        changes: its status changes (time, status) after ``start``, in order.
    """
    begin = max(start, registered_at)
    if begin >= end:
        return 0.0, 0.0
    status = initial
    cursor = begin
    online = 0.0
    for at, new in changes:
        if at >= end:
            break
        if at > cursor:
            if status == AVAILABLE:
                online += at - cursor
            cursor = at
        status = new
    if status == AVAILABLE:
        online += end - cursor
    return end - begin, online


def availability(
    *,
    conn: Connection,
    start: float,
    end: float,
    by: AvailabilityBy = "station",
    district: str | None = None,
) -> Availability:
    """``GET /api/availability``: availability over [``start``, ``end``) per station, site
    or district (of ``district`` only, when given)."""
    station_where = [_S.c.registered_at < end]
    if district is not None:
        station_where.append(_S.c.district == district)
    stations = conn.execute(
        select(_S.c.id, _S.c.district, _S.c.site, _S.c.registered_at).where(*station_where)
    ).all()
    ids = {s.id for s in stations}
    # each station's last status at or before the start (the newest row per station)
    ranked = (
        select(
            _H.c.station,
            _H.c.status,
            func.row_number()
            .over(partition_by=_H.c.station, order_by=(_H.c.at.desc(), _H.c.id.desc()))
            .label("rank"),
        )
        .where(_H.c.at <= start)
        .subquery()
    )
    initial = {
        row.station: row.status
        for row in conn.execute(select(ranked.c.station, ranked.c.status).where(ranked.c.rank == 1))
        if row.station in ids
    }
    changes: dict[str, list[tuple[float, str]]] = {}
    for row in conn.execute(
        select(_H.c.station, _H.c.at, _H.c.status)
        .where(and_(_H.c.at > start, _H.c.at < end))
        .order_by(_H.c.station, _H.c.at, _H.c.id)
    ):
        if row.station in ids:
            changes.setdefault(row.station, []).append((row.at, row.status))

    totals: dict[tuple[str | None, str | None, str | None], list[float]] = {}
    for s in stations:
        period, online = online_seconds(
            start=start,
            end=end,
            registered_at=s.registered_at,
            initial=initial.get(s.id),
            changes=changes.get(s.id, ()),
        )
        if by == "station":
            key = (s.district, s.site, s.id)
        elif by == "site":
            key = (s.district, s.site, None)
        else:
            key = (s.district, None, None)
        entry = totals.setdefault(key, [0, 0.0, 0.0])
        entry[0] += 1
        entry[1] += period
        entry[2] += online
    items = [
        {
            "district": key[0],
            "site": key[1],
            "station": key[2],
            "stations": int(count),
            "period_s": period,
            "online_s": online,
            "availability": online / period if period > 0 else None,
        }
        for key, (count, period, online) in sorted(
            totals.items(), key=lambda kv: tuple(part or "" for part in kv[0])
        )
    ]
    return Availability.model_validate(
        {
            "start": datetime.fromtimestamp(start, UTC),
            "end": datetime.fromtimestamp(end, UTC),
            "by": by,
            "items": items,
            "total": len(items),
        }
    )
