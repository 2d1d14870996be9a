"""Notification bodies, exactly: our JSON, the WeCom and DingTalk robots' markdown, and
Alertmanager v2 alerts (what failed, where, since when, how bad)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from kioskfleet.controller.alerts.model import Alert
from kioskfleet.controller.notify.formats import (
    Notice,
    Style,
    alertmanager_alerts,
    dingtalk_body,
    firing,
    json_body,
    wecom_body,
)

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z, 16:00 in Wuxi

PAPER_OUT = Alert(
    id="a-1",
    district="binhu",
    site="市民中心",
    station="kiosk-001",
    device="printer",
    condition="paper_out",
    severity="critical",
    state="open",
    opened_at=T0 + 60,
    details={"summary": "printer: paper_out (user_error)", "state": "user_error", "since": T0},
)
RESOLVED = dataclasses.replace(
    PAPER_OUT, state="resolved", resolved_at=T0 + 3723, resolution="cleared"
)
SITE = Alert(
    id="s-1",
    district="binhu",
    site="市民中心",
    station=None,
    device=None,
    condition="site_offline",
    severity="critical",
    state="open",
    opened_at=T0 + 120,
    details={"summary": "3 kiosks offline", "from": T0, "since": T0},
    stations=("k1", "k2", "k3"),
)
LINKED = Style(public_url="https://fleet.example")


def test_json_is_the_alert_item_plus_the_event() -> None:
    assert json_body(Notice("opened", PAPER_OUT, T0 + 60)) == {
        "id": "a-1",
        "state": "open",
        "severity": "critical",
        "condition": "paper_out",
        "district": "binhu",
        "site": "市民中心",
        "station": "kiosk-001",
        "device": "printer",
        "opened_at": "2027-01-15T08:01:00Z",
        "details": {
            "summary": "printer: paper_out (user_error)",
            "state": "user_error",
            "since": T0,
        },
        "event": "opened",
        "event_at": "2027-01-15T08:01:00Z",
    }


def test_json_of_a_resolved_site_incident_names_its_stations_and_resolution() -> None:
    alert = dataclasses.replace(
        SITE,
        state="resolved",
        resolved_at=T0 + 600,
        resolution="by_person",
        resolved_by="王工",
        acknowledged_at=T0 + 300,
        acknowledged_by="王工",
    )
    body = json_body(Notice("resolved", alert, T0 + 600, by="王工", note="市电恢复"))
    assert body == {
        "id": "s-1",
        "state": "resolved",
        "severity": "critical",
        "condition": "site_offline",
        "district": "binhu",
        "site": "市民中心",
        "station": None,
        "device": None,
        "opened_at": "2027-01-15T08:02:00Z",
        "stations": ["k1", "k2", "k3"],
        "acknowledged_at": "2027-01-15T08:05:00Z",
        "acknowledged_by": "王工",
        "resolved_at": "2027-01-15T08:10:00Z",
        "resolution": "by_person",
        "resolved_by": "王工",
        "details": {"summary": "3 kiosks offline", "from": T0, "since": T0},
        "event": "resolved",
        "event_at": "2027-01-15T08:10:00Z",
        "by": "王工",
        "note": "市电恢复",
    }


def test_json_of_an_escalation_names_the_team() -> None:
    body = json_body(Notice("escalated", SITE, T0 + 1020, team="wuxi-second-line", level=1))
    assert body["event"] == "escalated"
    assert body["escalation"] == {"level": 1, "team": "wuxi-second-line"}


def test_wecom_markdown() -> None:
    assert wecom_body(Notice("opened", PAPER_OUT, T0 + 60), LINKED) == {
        "msgtype": "markdown",
        "markdown": {
            "content": (
                '**<font color="warning">【新告警】严重 · kiosk-001 printer paper_out</font>**\n'
                "> 故障：paper_out（printer: paper_out (user_error)）\n"
                "> 位置：区 binhu · 站点 市民中心 · 终端 kiosk-001 · 设备 printer\n"
                "> 开始：2027-01-15 16:00:00 (UTC+08:00)\n"
                "> 级别：严重（critical）\n"
                "> 已持续：1 分钟\n"
                "> 编号：[a-1](https://fleet.example/?alert=a-1)"
            )
        },
    }


def test_wecom_escalation_of_a_site_incident_lists_its_kiosks_and_the_team() -> None:
    notice = Notice("escalated", SITE, T0 + 1020, team="wuxi-second-line", level=1)
    assert wecom_body(notice, Style())["markdown"]["content"] == (
        '**<font color="warning">【告警升级】严重 · 市民中心 site_offline</font>**\n'
        "> 故障：site_offline：站点 3 台终端离线\n"
        "> 位置：区 binhu · 站点 市民中心\n"
        "> 终端：k1, k2, k3\n"
        "> 开始：2027-01-15 16:00:00 (UTC+08:00)\n"
        "> 级别：严重（critical）\n"
        "> 升级：15 分钟内无人确认，升级至第 2 级：wuxi-second-line\n"
        "> 编号：s-1"
    )


def test_wecom_stays_within_its_4096_bytes() -> None:
    many = dataclasses.replace(SITE, stations=tuple(f"kiosk-{i:03d}" for i in range(500)))
    huge = dataclasses.replace(many, details={**SITE.details, "summary": "x" * 10_000})
    content = wecom_body(Notice("opened", huge, T0 + 200, note="说明" * 3000), Style())
    text = content["markdown"]["content"]
    assert len(text.encode()) <= 4096
    assert "等共 500 台" in text


def test_dingtalk_markdown() -> None:
    notice = Notice("resolved", RESOLVED, T0 + 3723)
    assert dingtalk_body(notice, Style()) == {
        "msgtype": "markdown",
        "markdown": {
            "title": "【已恢复】严重 · kiosk-001 printer paper_out",
            "text": (
                "#### 【已恢复】严重 · kiosk-001 printer paper_out\n\n"
                "- **故障**：paper_out（printer: paper_out (user_error)）\n\n"
                "- **位置**：区 binhu · 站点 市民中心 · 终端 kiosk-001 · 设备 printer\n\n"
                "- **开始**：2027-01-15 16:00:00 (UTC+08:00)\n\n"
                "- **级别**：严重（critical）\n\n"
                "- **恢复**：2027-01-15 17:02:03 (UTC+08:00)，故障已消除，自动恢复\n\n"
                "- **持续**：1 小时 2 分钟\n\n"
                "- **编号**：a-1"
            ),
        },
    }


def test_dingtalk_acknowledgement_says_who_and_why() -> None:
    acked = dataclasses.replace(
        PAPER_OUT, state="acknowledged", acknowledged_at=T0 + 300, acknowledged_by="李工"
    )
    text = dingtalk_body(
        Notice("acknowledged", acked, T0 + 300, by="李工", note="带纸过去"), Style()
    )
    assert "- **确认**：李工，2027-01-15 16:05:00 (UTC+08:00)" in text["markdown"]["text"]
    assert "- **备注**：带纸过去" in text["markdown"]["text"]


def _am(**extra: Any) -> dict[str, Any]:
    return {
        "labels": {
            "alertname": "paper_out",
            "district": "binhu",
            "site": "市民中心",
            "station": "kiosk-001",
            "device": "printer",
            "severity": "critical",
            "condition": "paper_out",
        },
        "annotations": {
            "summary": (
                "严重 · paper_out（printer: paper_out (user_error)） · "
                "区 binhu · 站点 市民中心 · 终端 kiosk-001 · 设备 printer"
            ),
            "description": (
                "故障：paper_out（printer: paper_out (user_error)）\n"
                "位置：区 binhu · 站点 市民中心 · 终端 kiosk-001 · 设备 printer\n"
                "开始：2027-01-15 16:00:00 (UTC+08:00)\n"
                "级别：严重（critical）"
            ),
            "alert_id": "a-1",
        },
        "startsAt": "2027-01-15T08:01:00Z",
        **extra,
        "generatorURL": "https://fleet.example/?alert=a-1",
    }


def test_alertmanager_firing_has_no_end() -> None:
    assert alertmanager_alerts(Notice("opened", PAPER_OUT, T0 + 60), LINKED) == [_am()]


def test_alertmanager_resolved_ends_at_the_resolve_time() -> None:
    posted = alertmanager_alerts(Notice("resolved", RESOLVED, T0 + 3723), LINKED)
    assert posted == [_am(endsAt="2027-01-15T09:02:03Z")]
    assert firing(posted) == []


def test_alertmanager_new_severity_ends_the_old_labels() -> None:
    worse = dataclasses.replace(PAPER_OUT, severity="warning")
    posted = alertmanager_alerts(Notice("reposted", PAPER_OUT, T0 + 100, previous=worse), Style())
    assert [p["labels"]["severity"] for p in posted] == ["warning", "critical"]
    assert posted[0]["endsAt"] == "2027-01-15T08:01:40Z"
    assert "endsAt" not in posted[1]
    assert firing(posted) == [posted[1]]
    assert "generatorURL" not in posted[1]


def test_alertmanager_labels_of_a_flapping_alert_and_a_site_incident() -> None:
    flapping = dataclasses.replace(PAPER_OUT, condition="flapping", of="paper_out")
    [posted] = alertmanager_alerts(Notice("opened", flapping, T0), Style())
    assert posted["labels"]["alertname"] == "flapping"
    assert posted["labels"]["condition"] == "paper_out"
    [site] = alertmanager_alerts(Notice("opened", SITE, T0), Style())
    assert site["labels"] == {
        "alertname": "site_offline",
        "district": "binhu",
        "site": "市民中心",
        "severity": "critical",
        "condition": "site_offline",
    }
    assert "终端：k1, k2, k3" in site["annotations"]["description"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(30, "不到 1 分钟"), (60, "1 分钟"), (3600, "1 小时"), (90_061, "1 天 1 小时 1 分钟")],
)
def test_durations_in_messages(seconds: float, text: str) -> None:
    body = dingtalk_body(Notice("opened", PAPER_OUT, T0 + seconds), Style())
    assert f"- **已持续**：{text}\n" in body["markdown"]["text"]
