"""What to put in the notification outbox for an alert change (pure: no clock, no I/O).

The writer calls :func:`notifications_for` for each :class:`~kioskfleet.controller.alerts.model.
Transition` it applies (and the API for people's changes; the sweep for an
:class:`Escalation` from :func:`escalation_due`) and inserts the rows **in the same
transaction** as the alert change, so a notification exists exactly when its change does; the
sender (:mod:`.sender`) delivers them later. Each row's ``payload`` is the finished request
body, so what is sent does not depend on when.

Who hears what:

- webhooks of the teams the alert has reached (its district's first team, and each team it
  escalated to): ``opened`` (also when a maintenance window or silence ends on a still active
  alert), ``acknowledged``, ``resolved``; an :class:`Escalation` goes to the new team;
- every Alertmanager: each change of what it should hold (firing, ended, new severity or
  members, acknowledged); the sender posts active alerts again before its resolve timeout;
- nothing for a suppressed alert (``suppressed_by``), except that an Alertmanager is told the
  alert ended when the suppression starts, so that it stops holding (and re-notifying) it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kioskfleet.controller.alerts.config import Routing
from kioskfleet.controller.alerts.model import Alert, Transition
from kioskfleet.controller.alerts.routing import route, teams_for
from kioskfleet.controller.notify.config import ReceiversSettings
from kioskfleet.controller.notify.formats import (
    Notice,
    NotificationKind,
    Style,
    alertmanager_alerts,
    dingtalk_body,
    json_body,
    wecom_body,
)


@dataclass(frozen=True, slots=True)
class Escalation:
    """Nobody acknowledged ``alert`` in time: it now goes to ``team`` (``level`` ≥ 1)."""

    alert: Alert
    level: int
    team: str
    at: float


@dataclass(frozen=True, slots=True)
class NotificationRow:
    """One outbox row to insert (``notification`` table)."""

    alert_id: str
    kind: NotificationKind
    receiver: str
    payload: Any
    created_at: float

    def values(self) -> dict[str, Any]:
        """Column values for an insert: due at once, never tried."""
        return {
            "alert_id": self.alert_id,
            "kind": self.kind,
            "receiver": self.receiver,
            "payload": self.payload,
            "created_at": self.created_at,
            "next_attempt_at": self.created_at,
            "attempts": 0,
        }


def style_of(receivers: ReceiversSettings) -> Style:
    """What the formats need from the configuration."""
    return Style(timezone=receivers.timezone, public_url=receivers.public_url)


def escalation_due(
    alert: Alert,
    now: float,
    routing: Routing,
    *,
    notified_level: int,
    clock_from: float | None = None,
) -> Escalation | None:
    """An :class:`Escalation` when ``alert`` has reached a team past ``notified_level`` (the
    level the writer last notified, kept with the alert) at ``now``, else None."""
    where = route(alert, now, routing, clock_from=clock_from)
    if where.team is None or where.level <= notified_level or not alert.unresolved:
        return None
    return Escalation(alert, where.level, where.team, now)


def notifications_for(
    event: Transition | Escalation,
    receivers: ReceiversSettings,
    routing: Routing,
    *,
    clock_from: float | None = None,
) -> list[NotificationRow]:
    """The outbox rows for one alert change.

    Args:
        event: a transition the writer or the API applies, or an escalation the sweep found.
        clock_from: as for :func:`~kioskfleet.controller.alerts.routing.route` (when the
            alert's escalation clock started, if later than its opening): decides which
            teams it has reached.
    """
    if isinstance(event, Escalation):
        if event.alert.suppressed_by is not None:
            return []
        notice = Notice("escalated", event.alert, event.at, team=event.team, level=event.level)
        return _webhooks(notice, receivers.webhooks_of([event.team]), receivers)
    alert, before, at = event.alert, event.before, event.entry.at
    webhook_kind, am_kind = _kinds(event)
    notice_by = event.entry.by
    note = event.entry.note
    rows: list[NotificationRow] = []
    if webhook_kind is not None:
        notice = Notice(webhook_kind, alert, at, by=notice_by, note=note)
        level = route(alert, at, routing, clock_from=clock_from).level
        reached = teams_for(alert.district, routing)[: level + 1]
        rows.extend(_webhooks(notice, receivers.webhooks_of(reached), receivers))
    if am_kind is not None and receivers.alertmanagers:
        previous = before if event.kind == "severity" else None
        notice = Notice(am_kind, alert, at, by=notice_by, note=note, previous=previous)
        payload = alertmanager_alerts(notice, style_of(receivers))
        rows.extend(
            NotificationRow(alert.id, am_kind, name, payload, at)
            for name in receivers.alertmanagers
        )
    return rows


def _kinds(event: Transition) -> tuple[NotificationKind | None, NotificationKind | None]:
    """(what webhooks hear, what Alertmanager hears) of a transition; None: nothing."""
    alert, before = event.alert, event.before
    if event.kind == "suppression":
        was = before.suppressed_by if before is not None else None
        if alert.suppressed_by is None and was is not None and alert.unresolved:
            return "opened", "opened"
        if alert.suppressed_by is not None and was is None and alert.unresolved:
            return None, "suppressed"
        return None, None
    if alert.suppressed_by is not None:
        return None, None
    match event.kind:
        case "open":
            return "opened", "opened"
        case "acknowledge":
            return "acknowledged", "acknowledged"
        case "resolve":
            return "resolved", "resolved"
        case "severity" | "join":
            # Alertmanager shows the new severity (a new alert there) or the new members
            return None, "reposted"
        case _:
            return None, None


def _webhooks(
    notice: Notice, names: list[str], receivers: ReceiversSettings
) -> list[NotificationRow]:
    style = style_of(receivers)
    rows: list[NotificationRow] = []
    for name in names:
        fmt = receivers.webhooks[name].format
        if fmt == "wecom":
            payload = wecom_body(notice, style)
        elif fmt == "dingtalk":
            payload = dingtalk_body(notice, style)
        else:
            payload = json_body(notice)
        rows.append(NotificationRow(notice.alert.id, notice.kind, name, payload, notice.at))
    return rows
