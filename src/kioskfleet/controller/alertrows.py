"""Alerts as rows: the one mapping between :class:`~kioskfleet.controller.alerts.model.Alert`
and the ``alert`` / ``alert_history`` tables, and the one way a transition is written.

The writer (transitions it decides) and the API (people's acknowledge and resolve) both call
:func:`write_transition` inside their own transaction (decision 27): an ``open`` is an insert;
anything else is an update of that one row conditioned on the state it was decided from, so a
change made in between (a person acknowledged, the writer resolved) turns it into a no-op
that the caller sees (``False``) instead of an overwrite.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, cast

from sqlalchemy import Connection, and_, insert, update

from kioskfleet.controller.alerts.config import Severity
from kioskfleet.controller.alerts.model import (
    SITE_OFFLINE,
    Alert,
    AlertState,
    HistoryEntry,
    Resolution,
    Transition,
)
from kioskfleet.controller.models import AlertHistory, AlertRow

ALERT: Final = AlertRow.__table__  # type: ignore[attr-defined]
HISTORY: Final = AlertHistory.__table__  # type: ignore[attr-defined]

#: separates the parts of a subject key (never in a station id, slot or condition)
_SEP: Final = "\x1f"

#: what a conditional update compares with the row: the columns a transition is decided from
_COMPARED: Final = (
    "state",
    "severity",
    "acknowledged_at",
    "awaiting_clear",
    "suppressed_by",
)


def subject_key(alert: Alert) -> str:
    """The ``subject`` column: unique among unresolved alerts (a partial unique index)."""
    if alert.condition == SITE_OFFLINE and alert.station is None:
        return _SEP.join(("site", alert.district or "", alert.site or ""))
    station, device, condition = alert.subject
    return _SEP.join((station or "", device or "", condition))


def alert_values(alert: Alert, now: float) -> dict[str, Any]:
    """Every column an alert's state decides, for an insert or a full update."""
    return {
        "id": alert.id,
        "subject": subject_key(alert),
        "district": alert.district,
        "site": alert.site,
        "station": alert.station,
        "device": alert.device,
        "condition": alert.condition,
        "of": alert.of,
        "severity": alert.severity,
        "state": alert.state,
        "opened_at": alert.opened_at,
        "details": dict(alert.details),
        "stations": list(alert.stations),
        "acknowledged_at": alert.acknowledged_at,
        "acknowledged_by": alert.acknowledged_by,
        "resolved_at": alert.resolved_at,
        "resolution": alert.resolution,
        "resolved_by": alert.resolved_by,
        "suppressed_by": alert.suppressed_by,
        "awaiting_clear": alert.awaiting_clear,
        "updated_at": now,
    }


def alert_of(row: Mapping[str, Any]) -> Alert:
    """The alert a row (a mapping of its columns) holds."""
    return Alert(
        id=row["id"],
        district=row["district"],
        site=row["site"],
        station=row["station"],
        device=row["device"],
        condition=row["condition"],
        severity=cast(Severity, row["severity"]),
        state=cast(AlertState, row["state"]),
        opened_at=row["opened_at"],
        details=dict(row["details"] or {}),
        of=row["of"],
        stations=tuple(row["stations"] or ()),
        acknowledged_at=row["acknowledged_at"],
        acknowledged_by=row["acknowledged_by"],
        resolved_at=row["resolved_at"],
        resolution=cast("Resolution | None", row["resolution"]),
        resolved_by=row["resolved_by"],
        suppressed_by=row["suppressed_by"],
        awaiting_clear=bool(row["awaiting_clear"]),
    )


def history_values(entry: HistoryEntry) -> dict[str, Any]:
    """The ``alert_history`` row of one transition."""
    return {
        "alert_id": entry.alert,
        "at": entry.at,
        "action": entry.action,
        "by": entry.by,
        "note": entry.note,
        "details": dict(entry.details),
    }


def write_transition(conn: Connection, transition: Transition, now: float, **extra: Any) -> bool:
    """Write ``transition`` and its history line in the caller's transaction.

    An ``open`` is inserted (the partial unique index refuses a second unresolved alert for
    its subject: that is a bug, and it raises). Any other kind updates the row only if it
    still holds ``transition.before`` in the compared columns; returns False (and writes no
    history) when it does not — someone changed it since it was read.

    Args:
        extra: further columns to set with it (the writer's routing: ``team``, ``level``,
            ``next_escalation_at``; ``site_type``).
    """
    values = {**alert_values(transition.alert, now), **extra}
    if transition.kind == "open" or transition.before is None:
        conn.execute(insert(ALERT).values({"level": 0, **values}))
    else:
        before = alert_values(transition.before, now)
        matches = [ALERT.c.id == transition.before.id]
        for name in _COMPARED:
            matches.append(ALERT.c[name].is_not_distinct_from(before[name]))
        values.pop("id")
        done = conn.execute(update(ALERT).where(and_(*matches)).values(**values))
        if done.rowcount != 1:
            return False
    conn.execute(insert(HISTORY).values(**history_values(transition.entry)))
    return True
