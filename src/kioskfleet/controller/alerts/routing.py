"""Routing and escalation: which team an alert is for now, and when that changes (pure).

Each district has an ordered list of teams (``[alerts.routing.teams]``): the first is its own
technicians, the next ones whom an alert escalates to. An alert nobody acknowledges within its
severity's ``ack_within`` goes to the next team, and again after as long, up to the last team.
Acknowledging (or resolving) stops the clock; an ``info`` alert (no limit) never escalates, and
neither does a suppressed one, since no notification leaves for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from kioskfleet.controller.alerts.config import Routing
from kioskfleet.controller.alerts.model import Alert


@dataclass(frozen=True, slots=True)
class Route:
    """Where an alert goes at a given time."""

    #: None when no team is configured for its district
    team: str | None
    #: 0 for the district's own team, 1 after the first escalation, …
    level: int
    #: when it escalates next if still unacknowledged, or None
    next_escalation_at: float | None


def teams_for(district: str | None, routing: Routing) -> list[str]:
    """The ordered teams of ``district`` (the default teams when it has none listed)."""
    if district is not None and district in routing.teams:
        return routing.teams[district]
    return routing.default_teams


def route(alert: Alert, now: float, routing: Routing, *, clock_from: float | None = None) -> Route:
    """Which team ``alert`` is for at ``now`` and when it escalates next.

    Args:
        clock_from: when its escalation clock started, if later than its opening (the end of
            the maintenance or silence it opened under), so that an alert never skips teams
            because it was suppressed for hours.
    """
    teams = teams_for(alert.district, routing)
    if not teams:
        return Route(None, 0, None)
    limit = routing.ack_within.get(alert.severity)
    if limit is None or alert.suppressed_by is not None:
        return Route(teams[0], 0, None)
    start = alert.opened_at if clock_from is None else max(alert.opened_at, clock_from)
    stopped = alert.acknowledged_at if alert.acknowledged_at is not None else alert.resolved_at
    until = now if stopped is None else min(now, stopped)
    level = min(max(int((until - start) // limit), 0), len(teams) - 1)
    next_at = None
    if stopped is None and level + 1 < len(teams):
        next_at = start + (level + 1) * limit
    return Route(teams[level], level, next_at)
