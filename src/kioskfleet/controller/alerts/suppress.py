"""Maintenance mode and silences: which alerts no notification may leave for (pure).

Alerts are still opened and resolved as usual; a suppressed one is marked ``suppressed_by``
(``maintenance:<station>`` or ``silence:<id>``). Both end by themselves: whether one applies is
a function of ``now``, and :func:`changes` tells the sweep which unresolved alerts lost (or
gained) their suppression, so that an alert still firing when a maintenance window ends is
notified then (Alertmanager does not re-send in that case, prometheus/alertmanager#3367).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kioskfleet.controller.alerts.model import Alert, HistoryEntry, Transition

#: what a matcher can look at
Label = Literal["district", "site", "station", "device", "condition", "severity"]
_Text = Annotated[str, Field(min_length=1, max_length=500)]


class Maintenance(BaseModel):
    """A technician on site: ``station``'s alerts are not notified until ``until``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    station: _Text
    until: float
    by: _Text
    reason: str = Field(default="", max_length=500)
    starts_at: float | None = None

    def active(self, now: float) -> bool:
        """In force at ``now``: it ends by itself at ``until``."""
        return (self.starts_at is None or self.starts_at <= now) and now < self.until


class Matcher(BaseModel):
    """One label test, as in Alertmanager: ``=``, ``!=``, ``=~`` (a full regex match),
    ``!~``. A missing label (no station on a site incident, no device) is the empty string."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: Label
    op: Literal["=", "!=", "=~", "!~"] = "="
    value: Annotated[str, Field(max_length=500)]

    @model_validator(mode="after")
    def _compiles(self) -> Self:
        if self.op in ("=~", "!~"):
            try:
                re.compile(self.value)
            except re.error as err:
                raise ValueError(f"not a regular expression: {err}") from err
        return self

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        return re.compile(self.value)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` pass this test."""
        value = labels.get(self.label, "")
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        found = self._pattern.fullmatch(value) is not None
        return found if self.op == "=~" else not found


class Silence(BaseModel):
    """Alerts matching every matcher are not notified from ``starts_at`` until
    ``expires_at``; who asked and why are required, like Alertmanager's author and comment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: _Text
    matchers: Annotated[list[Matcher], Field(min_length=1, max_length=32)]
    author: _Text
    reason: _Text
    starts_at: float
    expires_at: float

    @model_validator(mode="after")
    def _ends_after_it_starts(self) -> Self:
        if self.expires_at <= self.starts_at:
            raise ValueError("expires_at must be after starts_at")
        return self

    def active(self, now: float) -> bool:
        """In force at ``now``: it ends by itself at ``expires_at``."""
        return self.starts_at <= now < self.expires_at

    def matches(self, alert: Alert) -> bool:
        """Whether every matcher passes on ``alert``'s labels."""
        labels = labels_of(alert)
        return all(m.matches(labels) for m in self.matchers)


def labels_of(alert: Alert) -> dict[str, str]:
    """The labels matchers see. A flapping alert's ``condition`` is the condition it flaps,
    so silencing ``paper_out`` silences its flapping too."""
    return {
        "district": alert.district or "",
        "site": alert.site or "",
        "station": alert.station or "",
        "device": alert.device or "",
        "condition": alert.of or alert.condition,
        "severity": alert.severity,
    }


def suppressed_by(
    alert: Alert,
    now: float,
    maintenance: Iterable[Maintenance] = (),
    silences: Iterable[Silence] = (),
) -> str | None:
    """What suppresses ``alert`` at ``now``, or None. A site incident is under maintenance
    only when every member station is."""
    in_maintenance = {m.station for m in maintenance if m.active(now)}
    if alert.station is not None:
        if alert.station in in_maintenance:
            return f"maintenance:{alert.station}"
    elif alert.stations and all(s in in_maintenance for s in alert.stations):
        return f"maintenance:{alert.stations[0]}"
    for silence in silences:
        if silence.active(now) and silence.matches(alert):
            return f"silence:{silence.id}"
    return None


def changes(
    alerts: Iterable[Alert],
    now: float,
    maintenance: Sequence[Maintenance] = (),
    silences: Sequence[Silence] = (),
) -> list[Transition]:
    """``suppression`` transitions for the unresolved alerts whose suppression is not what
    it should be at ``now`` (a window began or ended, a silence was added or expired)."""
    out: list[Transition] = []
    for alert in alerts:
        if not alert.unresolved:
            continue
        now_by = suppressed_by(alert, now, maintenance, silences)
        if now_by != alert.suppressed_by:
            after = dataclasses.replace(alert, suppressed_by=now_by)
            entry = HistoryEntry(
                alert.id, now, "suppression", details={"from": alert.suppressed_by, "to": now_by}
            )
            out.append(Transition("suppression", after, alert, entry))
    return out


def next_change(
    now: float, maintenance: Iterable[Maintenance] = (), silences: Iterable[Silence] = ()
) -> float | None:
    """The next time after ``now`` at which a maintenance window or a silence begins or ends
    (when the sweep should call :func:`changes`), or None."""
    times = [t for m in maintenance for t in (m.starts_at, m.until) if t is not None and t > now]
    times.extend(t for s in silences for t in (s.starts_at, s.expires_at) if t > now)
    return min(times, default=None)
