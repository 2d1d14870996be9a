"""The lifecycle of one station's alerts: a pure state machine (no I/O, time passed in).

:func:`evaluate` takes the station's alerts that matter now — every unresolved one, every one
a person resolved while its condition was active (``awaiting_clear``), and the ones resolved
within the flapping window (:func:`keep`) — with the conditions the rules found, and returns
the transitions to apply. People's actions (:func:`acknowledge`, :func:`resolve`) are pure
too and raise :class:`~kioskfleet.controller.alerts.model.Conflict` where the state does not
allow them.

The rules it keeps:

- at most one unresolved alert per subject (station, device, condition), counting a
  ``flapping`` alert as one of the condition it flaps;
- an alert resolves by itself (``cleared``) when its condition clears, acknowledged or not;
- an alert a person resolved while its condition was active stays resolved; its subject opens
  again only after the condition has been seen clear (``rearm``) and come back;
- ``cycles`` open/clear cycles of a condition within ``window`` seconds: the last one resolves
  as ``flapping`` and one ``flapping`` alert (``of`` the condition) opens; it follows the
  condition (``flapping`` transitions) and resolves once nothing changed for ``quiet``
  seconds, a plain alert opening then if the condition is still active;
- an unreachable station's device and host alerts are held (neither opened nor cleared);
- a station in a site incident (``grouped``) has every unresolved alert resolved ``grouped``
  and opens none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from kioskfleet.controller.alerts.config import SEVERITY_RANK, Flapping
from kioskfleet.controller.alerts.model import (
    FLAPPING,
    STATION_CONDITIONS,
    Alert,
    Condition,
    Conflict,
    HistoryEntry,
    Resolution,
    Subject,
    Transition,
)
from kioskfleet.controller.alerts.rules import Evaluation

#: an alert's suppression at opening time: ``maintenance:…`` / ``silence:…`` or None
SuppressFn = Callable[[Alert], str | None]


def keep(alert: Alert, now: float, flapping: Flapping) -> bool:
    """Whether the writer must keep handing this alert to :func:`evaluate`: unresolved,
    resolved by a person and waiting for its condition to clear, or a cleared cycle that
    still counts towards flapping."""
    if alert.unresolved or alert.awaiting_clear:
        return True
    return (
        alert.resolution == "cleared"
        and alert.condition != FLAPPING
        and alert.opened_at >= now - flapping.window
    )


def evaluate(
    *,
    station: str,
    district: str | None,
    site: str | None,
    alerts: Iterable[Alert],
    evaluation: Evaluation,
    now: float,
    flapping: Flapping,
    new_id: Callable[[], str],
    grouped: bool = False,
    suppressed_by: SuppressFn | None = None,
) -> list[Transition]:
    """The transitions that bring ``station``'s alerts in line with ``evaluation`` at ``now``.

    Args:
        alerts: the station's alerts :func:`keep` keeps (others are ignored).
        evaluation: what :func:`~kioskfleet.controller.alerts.rules.evaluate` found.
        grouped: the station is a member of an unresolved site incident and down.
        new_id: a fresh alert id per call.
        suppressed_by: marks an opening alert as under maintenance or silenced.
    """
    unresolved: dict[Subject, Alert] = {}
    latched: dict[Subject, Alert] = {}
    opened: dict[Subject, list[float]] = {}
    for known in alerts:
        if known.station != station:
            continue
        if known.unresolved:
            unresolved[known.subject] = known
        elif known.awaiting_clear:
            latched[known.subject] = known
        elif known.resolution == "cleared" and known.condition != FLAPPING:
            opened.setdefault(known.subject, []).append(known.opened_at)

    out: list[Transition] = []
    if grouped:
        # the site incident speaks for the station; what it said before it went down is
        # closed rather than left to go stale
        return [_resolve(alert, now, "grouped") for alert in unresolved.values()]

    active: dict[Subject, Condition] = {
        (station, c.device, c.condition): c for c in evaluation.conditions
    }
    subjects = list(unresolved)
    subjects.extend(s for s in latched if s not in unresolved)
    subjects.extend(s for s in active if s not in unresolved and s not in latched)
    for subject in subjects:
        device, name = subject[1], subject[2]
        if not evaluation.reachable and not (device is None and name in STATION_CONDITIONS):
            continue  # held: what an unreachable station last said is stale, not cleared
        condition = active.get(subject)
        latch = latched.get(subject)
        if latch is not None and condition is None:
            out.append(
                _change("rearm", latch, dataclasses.replace(latch, awaiting_clear=False), now)
            )
            latch = None
        alert = unresolved.get(subject)
        if alert is None:
            if condition is not None and latch is None:
                out.append(_open(station, district, site, condition, now, new_id(), suppressed_by))
        elif alert.condition == FLAPPING:
            out.extend(
                _flapping(
                    alert, condition, now, flapping, station, district, site, new_id, suppressed_by
                )
            )
        elif condition is None:
            cycles = 1 + sum(t >= now - flapping.window for t in opened.get(subject, ()))
            if cycles < flapping.cycles:
                out.append(_resolve(alert, now, "cleared"))
            else:
                out.append(_resolve(alert, now, "flapping"))
                out.append(_open_flapping(alert, cycles, now, new_id(), suppressed_by))
        elif condition.severity != alert.severity:
            after = dataclasses.replace(
                alert, severity=condition.severity, details=condition.details
            )
            out.append(
                _change(
                    "severity",
                    alert,
                    after,
                    now,
                    {"from": alert.severity, "to": condition.severity},
                )
            )
    return out


def _flapping(
    alert: Alert,
    condition: Condition | None,
    now: float,
    settings: Flapping,
    station: str,
    district: str | None,
    site: str | None,
    new_id: Callable[[], str],
    suppressed_by: SuppressFn | None,
) -> list[Transition]:
    details = alert.details
    active = condition is not None
    if active != bool(details.get("active")):
        severity = alert.severity
        if condition is not None and SEVERITY_RANK[condition.severity] > SEVERITY_RANK[severity]:
            severity = condition.severity
        after = dataclasses.replace(
            alert,
            severity=severity,
            details={
                **details,
                "active": active,
                "last_change": now,
                "changes": int(details.get("changes", 0)) + 1,
            },
        )
        return [_change("flapping", alert, after, now, {"active": active})]
    if now - float(details.get("last_change", alert.opened_at)) < settings.quiet:
        return []
    out = [_resolve(alert, now, "cleared")]
    if condition is not None:
        # quiet, but steadily failing: that is a plain alert again
        out.append(_open(station, district, site, condition, now, new_id(), suppressed_by))
    return out


def _open(
    station: str,
    district: str | None,
    site: str | None,
    condition: Condition,
    now: float,
    alert_id: str,
    suppressed_by: SuppressFn | None,
) -> Transition:
    alert = Alert(
        id=alert_id,
        district=district,
        site=site,
        station=station,
        device=condition.device,
        condition=condition.condition,
        severity=condition.severity,
        state="open",
        opened_at=now,
        details=condition.details,
    )
    return opening(alert, suppressed_by)


def _open_flapping(
    cleared: Alert, cycles: int, now: float, alert_id: str, suppressed_by: SuppressFn | None
) -> Transition:
    where = cleared.device or cleared.station
    alert = Alert(
        id=alert_id,
        district=cleared.district,
        site=cleared.site,
        station=cleared.station,
        device=cleared.device,
        condition=FLAPPING,
        of=cleared.condition,
        severity=cleared.severity,
        state="open",
        opened_at=now,
        details={
            "summary": f"{where}: {cleared.condition} flapping",
            "cycles": cycles,
            "active": False,
            "last_change": now,
            "changes": 0,
        },
    )
    return opening(alert, suppressed_by)


def opening(alert: Alert, suppressed_by: SuppressFn | None = None) -> Transition:
    """The ``open`` transition of a new alert (marked suppressed where it is)."""
    if suppressed_by is not None:
        alert = dataclasses.replace(alert, suppressed_by=suppressed_by(alert))
    details: dict[str, Any] = {"severity": alert.severity}
    if alert.suppressed_by is not None:
        details["suppressed_by"] = alert.suppressed_by
    return Transition(
        "open", alert, None, HistoryEntry(alert.id, alert.opened_at, "open", details=details)
    )


def _resolve(alert: Alert, now: float, resolution: Resolution) -> Transition:
    after = dataclasses.replace(alert, state="resolved", resolved_at=now, resolution=resolution)
    return _change("resolve", alert, after, now, {"resolution": resolution})


def _change(
    kind: Any,
    before: Alert,
    after: Alert,
    now: float,
    details: dict[str, Any] | None = None,
    *,
    by: str | None = None,
    note: str | None = None,
) -> Transition:
    return Transition(
        kind, after, before, HistoryEntry(after.id, now, kind, by, note, details or {})
    )


def acknowledge(alert: Alert, *, by: str, now: float, note: str | None = None) -> Transition:
    """A person takes the alert on.

    Raises:
        Conflict: the alert is not open (already acknowledged, or resolved).
    """
    if alert.state != "open":
        raise Conflict(f"alert {alert.id} is {alert.state}: only an open alert is acknowledged")
    after = dataclasses.replace(
        alert, state="acknowledged", acknowledged_at=now, acknowledged_by=by
    )
    return _change("acknowledge", alert, after, now, by=by, note=note)


def resolve(alert: Alert, *, by: str, now: float, note: str | None = None) -> Transition:
    """A person resolves the alert. Its subject opens nothing again until the condition has
    been seen clear (the lifecycle's ``rearm``), so a resolved, still-failing printer does not
    page again at the next telemetry.

    Raises:
        Conflict: the alert is already resolved.
    """
    if not alert.unresolved:
        raise Conflict(f"alert {alert.id} is already resolved")
    after = dataclasses.replace(
        alert,
        state="resolved",
        resolved_at=now,
        resolution="by_person",
        resolved_by=by,
        awaiting_clear=True,
    )
    return _change("resolve", alert, after, now, {"resolution": "by_person"}, by=by, note=note)
