"""Sites, not kiosks: one ``site_offline`` incident when a site drops (pure, no I/O).

Kiosks are grouped by (district, site). When ``min_stations`` kiosks of a site — or every
kiosk of a site of at least ``whole_site_min`` — go offline or silent within a sliding window
(``sites.window``, shortened to ``offline_alert_after`` when that is smaller), they make one
incident listing them. The decision for a kiosk is taken when its own alert would fall due
(``offline_alert_after`` after it went down), never before: a blip shorter than that pages
nobody. Because the window is never longer than ``offline_alert_after``, every kiosk that can
share a window with it has gone down by then, so the decision is final when taken: either the
incident opens (and the kiosk never gets an alert of its own) or the kiosk's own alert opens.

While the incident is unresolved, any kiosk of the site that goes down after the incident's
first member joins it; every member that is down is *grouped* (its station lifecycle resolves
its own alerts ``grouped`` and opens none). It resolves when every member is back. Kiosks that
went down before the incident began keep their own alerts: a kiosk broken for days must not
keep the incident of a power cut open.

Run :func:`evaluate` for a site before the stations of that site: the stations need its
``grouped`` answer.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from kioskfleet.controller.alerts.config import AlertPolicy
from kioskfleet.controller.alerts.lifecycle import SuppressFn, opening
from kioskfleet.controller.alerts.model import SITE_OFFLINE, Alert, HistoryEntry, Transition
from kioskfleet.protocol.stations import StationStatus


@dataclass(frozen=True, slots=True)
class Member:
    """One kiosk of the site: its status and, when down, since when it is unreachable."""

    station: str
    status: StationStatus
    since: float

    @property
    def down(self) -> bool:
        """Offline or silent."""
        return self.status in ("offline", "silent")


@dataclass(frozen=True, slots=True)
class SiteDecision:
    """What :func:`evaluate` decided: transitions of the site's incident, and the stations
    that the incident speaks for now (down members: no alerts of their own)."""

    transitions: list[Transition]
    grouped: frozenset[str]


def evaluate(
    *,
    district: str | None,
    site: str | None,
    members: Sequence[Member],
    incidents: Iterable[Alert],
    policy: AlertPolicy,
    now: float,
    new_id: Callable[[], str],
    suppressed_by: SuppressFn | None = None,
) -> SiteDecision:
    """Decide the site's incident at ``now``.

    Args:
        members: every kiosk of (district, site).
        incidents: the site's ``site_offline`` alerts that are unresolved, or resolved by a
            person while members were still down (``awaiting_clear``); others are ignored.
    """
    settings = policy.settings.sites
    if not settings.enabled:
        return SiteDecision([], frozenset())
    down = {m.station: m for m in members if m.down}
    grouped: set[str] = set()
    out: list[Transition] = []
    incident: Alert | None = None
    for alert in incidents:
        if alert.condition != SITE_OFFLINE:
            continue
        if alert.unresolved:
            incident = alert
        elif alert.awaiting_clear:
            # resolved by a person: its members that are still down stay quiet until back
            still_down = [s for s in alert.stations if s in down]
            if still_down:
                grouped.update(still_down)
            else:
                after = dataclasses.replace(alert, awaiting_clear=False)
                out.append(Transition("rearm", after, alert, HistoryEntry(alert.id, now, "rearm")))

    if incident is not None:
        if not any(s in down for s in incident.stations):
            after = dataclasses.replace(
                incident, state="resolved", resolved_at=now, resolution="cleared"
            )
            out.append(
                Transition(
                    "resolve",
                    after,
                    incident,
                    HistoryEntry(incident.id, now, "resolve", details={"resolution": "cleared"}),
                )
            )
        else:
            joined_from = float(incident.details.get("from", incident.opened_at))
            joiners = sorted(
                s
                for s, m in down.items()
                if s not in incident.stations and s not in grouped and m.since >= joined_from
            )
            if joiners:
                after = dataclasses.replace(
                    incident,
                    stations=(*incident.stations, *joiners),
                    details={
                        **incident.details,
                        "summary": _summary(len(incident.stations) + len(joiners), site),
                    },
                )
                out.append(
                    Transition(
                        "join",
                        after,
                        incident,
                        HistoryEntry(incident.id, now, "join", details={"stations": joiners}),
                    )
                )
            grouped.update(s for s in (*incident.stations, *joiners) if s in down)
            return SiteDecision(out, frozenset(grouped))

    # no incident: decide for the kiosks whose own alert is due now
    candidates = {s: m for s, m in down.items() if s not in grouped}
    after_s = policy.offline_alert_after
    due = sorted(m.since for m in candidates.values() if m.since + after_s <= now)
    if not due:
        return SiteDecision(out, frozenset(grouped))
    times = sorted(m.since for m in candidates.values())
    start = _cluster_start(
        due, times, policy.site_window, len(members), settings.min_stations, settings.whole_site_min
    )
    if start is None:
        return SiteDecision(out, frozenset(grouped))
    stations = tuple(sorted(s for s, m in candidates.items() if m.since >= start))
    alert = Alert(
        id=new_id(),
        district=district,
        site=site,
        station=None,
        device=None,
        condition=SITE_OFFLINE,
        severity=settings.severity,
        state="open",
        opened_at=now,
        details={"summary": _summary(len(stations), site), "from": start, "since": start},
        stations=stations,
    )
    out.append(opening(alert, suppressed_by))
    grouped.update(stations)
    return SiteDecision(out, frozenset(grouped))


def _cluster_start(
    due: Sequence[float],
    times: Sequence[float],
    window: float,
    site_size: int,
    min_stations: int,
    whole_site_min: int,
) -> float | None:
    """The earliest start of a window of ``window`` seconds holding enough of ``times`` (down
    since, sorted) and one of the ``due`` kiosks, or None."""
    for x in due:
        lo = bisect.bisect_left(times, x - window)
        hi = bisect.bisect_right(times, x)
        # windows [t, t + window] starting at a down time t ≤ x that still reach x
        for i in range(lo, hi):
            begin = times[i]
            count = bisect.bisect_right(times, begin + window) - i
            if count >= min_stations or (site_size >= whole_site_min and count >= site_size):
                return begin
    return None


def _summary(count: int, site: str | None) -> str:
    return f"{count} kiosks of {site} offline or silent"
