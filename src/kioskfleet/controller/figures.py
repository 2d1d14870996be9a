"""Figures over a period: how fast alerts are acknowledged and repaired, and how available
the stations were. One module for the API (``/api/alerts/stats``, ``/api/availability``) and
the dashboard: the queries fetch the rows, pure functions (:func:`durations`,
:func:`alert_figures`, :func:`online_seconds`) compute, so both show the same numbers.

Definitions (decision 42):

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
  weighs by the time it existed (:func:`combined` for several groups together, e.g. the
  fleet). Stations are grouped by their district and site now.
- "today" (the console's overview) is from midnight in Asia/Shanghai (:func:`day_start`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Float, Integer, and_, case, func, literal, select, union_all

from kioskfleet.controller.models import AlertRow, Station, StationHistory
from kioskfleet.controller.public import (
    AlertStats,
    Availability,
    AvailabilityBy,
    AvailabilityItem,
)

_A = AlertRow.__table__  # type: ignore[attr-defined]
_S = Station.__table__  # type: ignore[attr-defined]
_H = StationHistory.__table__  # type: ignore[attr-defined]

#: resolutions that mean the problem was fixed (or went away), not folded into another alert
REPAIRED: Final = frozenset({"cleared", "by_person"})
#: the status that counts as available
AVAILABLE: Final = "online"
_SEVERITY_ORDER: Final = {"critical": 0, "warning": 1, "info": 2}
#: whose day "today" is: Wuxi's
DAY_ZONE: Final = ZoneInfo("Asia/Shanghai")


def day_start(now: float, zone: ZoneInfo = DAY_ZONE) -> float:
    """Unix seconds of the midnight that began ``now``'s day in ``zone``: where "today"
    starts for the people who read the figures."""
    local = datetime.fromtimestamp(now, zone)
    return local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def combined(items: Iterable[AvailabilityItem]) -> float | None:
    """The availability of several groups together (the fleet from its districts): their
    online seconds over their seconds in the period, as one group's is computed; None when
    no station existed in the period."""
    period = online = 0.0
    for item in items:
        period += item.period_s
        online += item.online_s
    return online / period if period > 0 else None


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
    *,
    district: str | None,
    severity: str | None,
    alerts: int,
    unresolved: int,
    to_acknowledge: Sequence[float],
    to_resolve: Sequence[float],
) -> dict[str, Any]:
    """The figures of a group of alerts: how many, how many still unresolved, and the
    durations to acknowledgement and to repair of those acknowledged and repaired."""
    resolve = durations(to_resolve)
    return {
        "district": district,
        "severity": severity,
        "alerts": alerts,
        "acknowledged": len(to_acknowledge),
        "resolved": len(to_resolve),
        "unresolved": unresolved,
        "time_to_acknowledge": durations(to_acknowledge),
        "time_to_resolve": resolve,
        "mttr_s": resolve["mean_s"],
    }


def alert_stats(
    *, conn: Connection, start: float, end: float, district: str | None = None
) -> AlertStats:
    """``GET /api/alerts/stats``: figures of the alerts opened in [``start``, ``end``), per
    (district, severity) and overall (of ``district`` only, when given).

    One pass over the period's alerts, fetched as plain tuples (district, severity,
    unresolved, time to acknowledge, time to repair) in one go: medians and percentiles need
    the values, and no dialect computes them alike. Measured against three passes (counts
    grouped in SQL, then each kind of duration) and against dicts per row: the fetch is the
    cost (decision 42).
    """
    where = [_A.c.opened_at >= start, _A.c.opened_at < end]
    if district is not None:
        where.append(_A.c.district == district)
    repaired = and_(_A.c.resolved_at.is_not(None), _A.c.resolution.in_(sorted(REPAIRED)))
    rows = conn.execute(
        select(
            _A.c.district,
            _A.c.severity,
            _A.c.state != "resolved",
            _A.c.acknowledged_at - _A.c.opened_at,
            case((repaired, _A.c.resolved_at - _A.c.opened_at), else_=None),
        ).where(*where)
    ).all()
    counts: dict[tuple[str | None, str], list[int]] = {}
    to_ack: dict[tuple[str | None, str], list[float]] = {}
    to_fix: dict[tuple[str | None, str], list[float]] = {}
    for d, sev, still_open, took_ack, took_fix in rows:
        key = (d, sev)
        if key not in counts:
            counts[key] = [0, 0]
            to_ack[key] = []
            to_fix[key] = []
        counts[key][0] += 1
        counts[key][1] += bool(still_open)
        if took_ack is not None:
            to_ack[key].append(took_ack)
        if took_fix is not None:
            to_fix[key].append(took_fix)
    ordered = sorted(counts, key=lambda k: (k[0] or "", _SEVERITY_ORDER.get(k[1], 9)))
    groups = [
        alert_figures(
            district=k[0],
            severity=k[1],
            alerts=counts[k][0],
            unresolved=counts[k][1],
            to_acknowledge=to_ack[k],
            to_resolve=to_fix[k],
        )
        for k in ordered
    ]
    overall = alert_figures(
        district=district,
        severity=None,
        alerts=sum(n for n, _ in counts.values()),
        unresolved=sum(n for _, n in counts.values()),
        to_acknowledge=[t for times in to_ack.values() for t in times],
        to_resolve=[t for times in to_fix.values() for t in times],
    )
    return AlertStats.model_validate(
        {
            "start": datetime.fromtimestamp(start, UTC),
            "end": datetime.fromtimestamp(end, UTC),
            "groups": groups,
            "overall": overall,
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
    or district (of ``district`` only, when given).

    The database adds up each station's online seconds: its status at the start (its newest
    change at or before it, one index seek per station) and its changes inside the period
    make a timeline; each entry lasts until the next (``LEAD``) and is clipped to
    [max(start, registration), end). :func:`online_seconds` is the same computation in
    Python, the reference the tests hold this one to.
    """
    status_at_start = (
        select(_H.c.status)
        .where(_H.c.station == _S.c.id, _H.c.at <= start)
        .order_by(_H.c.at.desc(), _H.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    initial = select(
        _S.c.id.label("station"),
        status_at_start.label("status"),
        literal(start, Float).label("at"),
        literal(-1, Integer).label("seq"),
    )
    inside = select(_H.c.station, _H.c.status, _H.c.at, _H.c.id.label("seq")).where(
        _H.c.at > start, _H.c.at < end
    )
    changes = union_all(initial, inside).subquery()
    timeline = select(
        changes.c.station,
        changes.c.status,
        changes.c.at,
        func.lead(changes.c.at)
        .over(partition_by=changes.c.station, order_by=(changes.c.at, changes.c.seq))
        .label("next_at"),
    ).subquery()
    t = timeline.c
    begin = case((_S.c.registered_at > start, _S.c.registered_at), else_=literal(start, Float))
    lo = case((t.at > begin, t.at), else_=begin)
    hi = case((and_(t.next_at.is_not(None), t.next_at < end), t.next_at), else_=literal(end, Float))
    online = func.sum(
        case((and_(t.status == AVAILABLE, hi > lo), hi - lo), else_=literal(0.0, Float))
    )
    where = [_S.c.registered_at < end]
    if district is not None:
        where.append(_S.c.district == district)
    rows = conn.execute(
        select(_S.c.id, _S.c.district, _S.c.site, _S.c.registered_at, online)
        .select_from(_S.join(timeline, t.station == _S.c.id))
        .where(*where)
        .group_by(_S.c.id, _S.c.district, _S.c.site, _S.c.registered_at)
    ).all()

    totals: dict[tuple[str | None, str | None, str | None], list[float]] = {}
    for station, s_district, site, registered_at, online_s in rows:
        period = end - max(start, registered_at)
        if by == "station":
            key = (s_district, site, station)
        elif by == "site":
            key = (s_district, site, None)
        else:
            key = (s_district, None, None)
        entry = totals.setdefault(key, [0, 0.0, 0.0])
        entry[0] += 1
        entry[1] += period
        entry[2] += float(online_s or 0.0)
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
