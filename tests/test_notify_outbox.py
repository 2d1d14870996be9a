"""What goes into the outbox for each alert change: whom, which kind, and nothing for a
suppressed alert."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from kioskfleet.controller.alerts import lifecycle, suppress
from kioskfleet.controller.alerts.config import Routing
from kioskfleet.controller.alerts.model import Alert, HistoryEntry, Transition
from kioskfleet.controller.notify.config import Alertmanager, ReceiversSettings
from kioskfleet.controller.notify.formats import Notice, Style, json_body, wecom_body
from kioskfleet.controller.notify.outbox import (
    Escalation,
    escalation_due,
    notifications_for,
)

T0 = 1_800_000_000.0

ROUTING = Routing(
    teams={"binhu": ["binhu-tech", "second-line", "vendor"]},
    default_teams=["city-ops"],
)
RECEIVERS = ReceiversSettings.model_validate(
    {
        "webhooks": {
            "binhu-wecom": {"url": "http://127.0.0.1:1/wecom", "format": "wecom"},
            "binhu-json": {"url": "http://127.0.0.1:1/json"},
            "second-ding": {
                "url": "http://127.0.0.1:1/ding",
                "format": "dingtalk",
                "secret": "SECabc",
            },
            "ops-json": {"url": "http://127.0.0.1:1/ops"},
        },
        "alertmanagers": {"am": {"url": "http://127.0.0.1:9093/api/v2"}},
        "teams": {
            "binhu-tech": ["binhu-wecom", "binhu-json"],
            "second-line": ["second-ding", "binhu-json"],
            "city-ops": ["ops-json"],
        },
    }
)


def _alert(**changes: object) -> Alert:
    base = Alert(
        id="a-1",
        district="binhu",
        site="市民中心",
        station="kiosk-001",
        device="printer",
        condition="paper_out",
        severity="critical",
        state="open",
        opened_at=T0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _who(rows: list) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return [(r.receiver, r.kind) for r in rows]


def test_an_opened_alert_goes_to_its_district_team_and_every_alertmanager() -> None:
    rows = notifications_for(lifecycle.opening(_alert()), RECEIVERS, ROUTING)
    assert _who(rows) == [("binhu-wecom", "opened"), ("binhu-json", "opened"), ("am", "opened")]
    assert {r.alert_id for r in rows} == {"a-1"}
    assert {r.created_at for r in rows} == {T0}
    notice = Notice("opened", _alert(), T0)
    assert rows[0].payload == wecom_body(notice, Style())
    assert rows[1].payload == json_body(notice)
    assert rows[2].values()["next_attempt_at"] == T0
    assert rows[2].values()["attempts"] == 0


def test_a_district_without_teams_uses_the_default_teams() -> None:
    rows = notifications_for(lifecycle.opening(_alert(district="xishan")), RECEIVERS, ROUTING)
    assert _who(rows) == [("ops-json", "opened"), ("am", "opened")]


def test_a_suppressed_alert_is_not_notified() -> None:
    maintenance = suppress.Maintenance(station="kiosk-001", until=T0 + 3600, by="王工")
    opened = lifecycle.opening(_alert(), lambda a: suppress.suppressed_by(a, T0, [maintenance], []))
    assert opened.alert.suppressed_by == "maintenance:kiosk-001"
    assert notifications_for(opened, RECEIVERS, ROUTING) == []
    acked = lifecycle.acknowledge(opened.alert, by="王工", now=T0 + 60)
    assert notifications_for(acked, RECEIVERS, ROUTING) == []
    resolved = lifecycle.resolve(acked.alert, by="王工", now=T0 + 120)
    assert notifications_for(resolved, RECEIVERS, ROUTING) == []
    escalation = Escalation(opened.alert, 1, "second-line", T0 + 900)
    assert notifications_for(escalation, RECEIVERS, ROUTING) == []


def test_the_end_of_a_maintenance_window_notifies_a_still_active_alert() -> None:
    maintenance = suppress.Maintenance(station="kiosk-001", until=T0 + 600, by="王工")
    opened = _alert(suppressed_by="maintenance:kiosk-001")
    [ended] = suppress.changes([opened], T0 + 600, [maintenance], [])
    rows = notifications_for(ended, RECEIVERS, ROUTING)
    assert _who(rows) == [("binhu-wecom", "opened"), ("binhu-json", "opened"), ("am", "opened")]


def test_a_silence_starting_only_tells_alertmanager_that_the_alert_ended() -> None:
    silence = suppress.Silence(
        id="s1",
        matchers=[suppress.Matcher(label="station", value="kiosk-001")],
        author="王工",
        reason="换打印机",
        starts_at=T0 + 100,
        expires_at=T0 + 3600,
    )
    [started] = suppress.changes([_alert()], T0 + 100, [], [silence])
    rows = notifications_for(started, RECEIVERS, ROUTING)
    assert _who(rows) == [("am", "suppressed")]
    assert rows[0].payload[0]["endsAt"] == "2027-01-15T08:01:40Z"


def test_acknowledge_and_resolve_go_to_every_team_the_alert_reached() -> None:
    alert = _alert()
    # acknowledged at 20 min: critical escalates after 15, so the second line knows it too
    acked = lifecycle.acknowledge(alert, by="李工", now=T0 + 1200, note="路上")
    rows = notifications_for(acked, RECEIVERS, ROUTING)
    assert _who(rows) == [
        ("binhu-wecom", "acknowledged"),
        ("binhu-json", "acknowledged"),
        ("second-ding", "acknowledged"),
        ("am", "acknowledged"),
    ]
    assert rows[1].payload["by"] == "李工"
    assert rows[1].payload["note"] == "路上"
    # the same, acknowledged within 15 min: only its own team
    early = lifecycle.acknowledge(alert, by="李工", now=T0 + 600)
    assert _who(notifications_for(early, RECEIVERS, ROUTING))[:2] == [
        ("binhu-wecom", "acknowledged"),
        ("binhu-json", "acknowledged"),
    ]
    assert len(notifications_for(early, RECEIVERS, ROUTING)) == 3
    resolved = lifecycle.resolve(acked.alert, by="李工", now=T0 + 1800)
    assert [k for _, k in _who(notifications_for(resolved, RECEIVERS, ROUTING))] == ["resolved"] * 4


def test_escalation_goes_to_the_new_team_only() -> None:
    alert = _alert()
    assert escalation_due(alert, T0 + 899, ROUTING, notified_level=0) is None
    escalation = escalation_due(alert, T0 + 900, ROUTING, notified_level=0)
    assert escalation == Escalation(alert, 1, "second-line", T0 + 900)
    assert escalation_due(alert, T0 + 1000, ROUTING, notified_level=1) is None
    rows = notifications_for(escalation, RECEIVERS, ROUTING)
    assert _who(rows) == [("second-ding", "escalated"), ("binhu-json", "escalated")]
    assert rows[1].payload["escalation"] == {"level": 1, "team": "second-line"}
    acked = dataclasses.replace(alert, state="acknowledged", acknowledged_at=T0 + 100)
    assert escalation_due(acked, T0 + 5000, ROUTING, notified_level=0) is None


def test_severity_and_membership_changes_only_update_alertmanager() -> None:
    before = _alert(severity="warning")
    after = _alert()
    change = Transition("severity", after, before, HistoryEntry("a-1", T0 + 50, "severity"))
    rows = notifications_for(change, RECEIVERS, ROUTING)
    assert _who(rows) == [("am", "reposted")]
    assert [a["labels"]["severity"] for a in rows[0].payload] == ["warning", "critical"]
    rearm = Transition("rearm", after, after, HistoryEntry("a-1", T0 + 50, "rearm"))
    assert notifications_for(rearm, RECEIVERS, ROUTING) == []


def test_no_alertmanager_no_alertmanager_rows() -> None:
    only_hooks = RECEIVERS.model_copy(update={"alertmanagers": {}})
    rows = notifications_for(lifecycle.opening(_alert()), only_hooks, ROUTING)
    assert [r.receiver for r in rows] == ["binhu-wecom", "binhu-json"]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"teams": {"t": ["nope"]}}, "unknown webhooks"),
        ({"webhooks": {"x": {"url": "http://h/", "secret": "s"}}}, "dingtalk"),
        ({"webhooks": {"x": {"url": "ftp://h/"}}}, "pattern"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone"),
        (
            {
                "webhooks": {"x": {"url": "http://h/"}},
                "alertmanagers": {"x": {"url": "http://h:9093"}},
            },
            "used twice",
        ),
        ({"alertmanagers": {"am": {"url": "http://h", "repost_interval": 200}}}, "half"),
        ({"retry": {"give_up_after": 3600}}, "greater than or equal"),
    ],
)
def test_bad_receivers_config_is_refused(section: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ReceiversSettings.model_validate(section)


def test_alertmanager_url_is_its_base() -> None:
    for url in (
        "http://h:9093",
        "http://h:9093/",
        "http://h:9093/api/v2",
        "http://h:9093/api/v2/alerts",
    ):
        assert Alertmanager(url=url).alerts_url == "http://h:9093/api/v2/alerts"
