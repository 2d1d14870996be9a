"""Alerts as plain data: what the rules find, what an alert is, and what changes it.

Nothing here does I/O. The lifecycle (:mod:`.lifecycle`, :mod:`.sites`) and people's actions
return :class:`Transition` values; the writer (or the API) turns each into one insert or one
targeted, conditional update of an alert row plus its history row, in the transaction that
caused it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

from kioskfleet.controller.alerts.config import Severity

AlertState = Literal["open", "acknowledged", "resolved"]
ALERT_STATES: Final[tuple[AlertState, ...]] = get_args(AlertState)
#: why a resolved alert is resolved (CONTRACT §4)
Resolution = Literal["cleared", "by_person", "grouped", "flapping"]
RESOLUTIONS: Final[tuple[Resolution, ...]] = get_args(Resolution)

#: conditions that describe the station as a whole being unreachable
STATION_CONDITIONS: Final = frozenset({"offline", "silent"})
FLAPPING: Final = "flapping"
SITE_OFFLINE: Final = "site_offline"

#: what an alert is about: (station, device, condition) — for a flapping alert the condition
#: it flaps (its ``of``), so a condition never has a plain and a flapping alert unresolved at
#: once. A site incident's subject is (None, None, ``site_offline``) within its site.
Subject = tuple[str | None, str | None, str]


@dataclass(frozen=True, slots=True)
class Condition:
    """A problem the rules find active now: ``condition`` on ``device`` (a slot; None for the
    station or its host), how bad, and ``details`` (what failed, since when)."""

    device: str | None
    condition: str
    severity: Severity
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str | None, str]:
        """(device, condition): unique among one station's conditions."""
        return (self.device, self.condition)


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert as stored (CONTRACT §4 ``/api/alerts`` items, plus what the lifecycle
    needs to remember)."""

    id: str
    district: str | None
    site: str | None
    station: str | None
    device: str | None
    condition: str
    severity: Severity
    state: AlertState
    opened_at: float
    details: Mapping[str, Any] = field(default_factory=dict)
    #: the condition a ``flapping`` alert is about
    of: str | None = None
    #: a ``site_offline`` incident's member stations
    stations: tuple[str, ...] = ()
    acknowledged_at: float | None = None
    acknowledged_by: str | None = None
    resolved_at: float | None = None
    resolution: Resolution | None = None
    resolved_by: str | None = None
    #: ``maintenance:<station>`` or ``silence:<id>`` while no notification may leave for it
    suppressed_by: str | None = None
    #: resolved by a person while its condition was still active: nothing opens again for
    #: its subject until the condition has been seen clear
    awaiting_clear: bool = False

    @property
    def subject(self) -> Subject:
        """What the alert is about (see :data:`Subject`)."""
        return (self.station, self.device, self.of or self.condition)

    @property
    def unresolved(self) -> bool:
        """Open or acknowledged."""
        return self.state != "resolved"


TransitionKind = Literal[
    # a new alert (insert)
    "open",
    # state → resolved with a resolution
    "resolve",
    # an unresolved alert's severity changed (its condition got worse or better)
    "severity",
    # a flapping alert saw its condition change again: ``details`` updated
    "flapping",
    # a site incident got a new member
    "join",
    # a manually resolved alert's condition was seen clear: its subject may alert again
    "rearm",
    # a person acknowledged it
    "acknowledge",
    # maintenance or a silence began or ended for it
    "suppression",
]


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One line of an alert's history: every transition writes one."""

    alert: str
    at: float
    action: TransitionKind
    #: a person, or None for the controller itself
    by: str | None = None
    note: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Transition:
    """A change to apply: ``alert`` is the alert's whole new state (an insert for ``open``,
    a targeted update of the row otherwise), ``before`` its state when decided (None for
    ``open``; the update's condition, so a concurrent change makes it a no-op or a 409),
    and ``entry`` its history line."""

    kind: TransitionKind
    alert: Alert
    before: Alert | None
    entry: HistoryEntry


class Conflict(Exception):
    """A person's change that the alert's state does not allow (HTTP 409)."""
