"""Routing and escalation: which team, and when the next one is told."""

from __future__ import annotations

import dataclasses

import pytest

from kioskfleet.controller.alerts.config import AlertsSettings
from kioskfleet.controller.alerts.model import Alert
from kioskfleet.controller.alerts.routing import Route, route

ROUTING = AlertsSettings.model_validate(
    {
        "routing": {
            "teams": {"binhu": ["binhu-tech", "wuxi-l2", "vendor"], "liangxi": ["liangxi-tech"]},
            "default_teams": ["wuxi-l2"],
        }
    }
).routing
T0 = 1_800_000_000.0


def alert(severity: str = "critical", district: str | None = "binhu") -> Alert:
    return Alert(
        id="a1",
        district=district,
        site="hall-1",
        station="kiosk-001",
        device="printer",
        condition="paper_out",
        severity=severity,  # type: ignore[arg-type]
        state="open",
        opened_at=T0,
    )


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (0, Route("binhu-tech", 0, T0 + 900)),
        (899, Route("binhu-tech", 0, T0 + 900)),
        (900, Route("wuxi-l2", 1, T0 + 1800)),
        (1800, Route("vendor", 2, None)),  # the last team: nowhere further
        (86400, Route("vendor", 2, None)),
    ],
)
def test_an_unacknowledged_critical_alert_escalates_every_15_minutes(
    after: float, expected: Route
) -> None:
    assert route(alert(), T0 + after, ROUTING) == expected


def test_a_warning_waits_two_hours() -> None:
    assert route(alert("warning"), T0 + 7199, ROUTING) == Route("binhu-tech", 0, T0 + 7200)
    assert route(alert("warning"), T0 + 7200, ROUTING).team == "wuxi-l2"


def test_info_never_escalates() -> None:
    assert route(alert("info"), T0 + 10**6, ROUTING) == Route("binhu-tech", 0, None)


def test_acknowledging_stops_the_clock() -> None:
    acked = dataclasses.replace(
        alert(), state="acknowledged", acknowledged_at=T0 + 1000, acknowledged_by="wang"
    )
    assert route(acked, T0 + 5000, ROUTING) == Route("wuxi-l2", 1, None)


def test_a_resolved_alert_does_not_escalate() -> None:
    done = dataclasses.replace(alert(), state="resolved", resolved_at=T0 + 10, resolution="cleared")
    assert route(done, T0 + 5000, ROUTING) == Route("binhu-tech", 0, None)


def test_districts_without_teams_use_the_default() -> None:
    assert route(alert(district="xishan"), T0, ROUTING) == Route("wuxi-l2", 0, None)
    assert route(alert(district=None), T0, ROUTING).team == "wuxi-l2"
    assert route(alert(district="liangxi"), T0 + 5000, ROUTING) == Route("liangxi-tech", 0, None)
    nobody = AlertsSettings().routing
    assert route(alert(), T0, nobody) == Route(None, 0, None)


def test_a_suppressed_alert_does_not_escalate_and_restarts_its_clock_after() -> None:
    muted = dataclasses.replace(alert(), suppressed_by="maintenance:kiosk-001")
    assert route(muted, T0 + 5000, ROUTING) == Route("binhu-tech", 0, None)
    # maintenance ended at T0 + 5000: counting starts there, not at the opening
    unmuted = dataclasses.replace(muted, suppressed_by=None)
    assert route(unmuted, T0 + 5100, ROUTING, clock_from=T0 + 5000) == Route(
        "binhu-tech", 0, T0 + 5900
    )
