"""What a notification says, per receiver format (pure: no clock, no I/O).

A :class:`Notice` is one thing to tell about one alert; the functions here turn it into the
body a receiver takes: :func:`json_body` (our own JSON), :func:`wecom_body` and
:func:`dingtalk_body` (group robots' markdown messages, in Chinese with the English condition
codes), :func:`alertmanager_alerts` (Alertmanager v2 ``postableAlerts``). Every message says
what failed, where, since when, and how bad.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, get_args

from kioskfleet.controller.alerts.model import SITE_OFFLINE, Alert

NotificationKind = Literal[
    "opened", "acknowledged", "resolved", "escalated", "reposted", "suppressed"
]
NOTIFICATION_KINDS: Final[tuple[NotificationKind, ...]] = get_args(NotificationKind)

SEVERITY_TEXT: Final[Mapping[str, str]] = {"critical": "严重", "warning": "警告", "info": "提示"}
KIND_TEXT: Final[Mapping[str, str]] = {
    "opened": "新告警",
    "acknowledged": "已确认",
    "resolved": "已恢复",
    "escalated": "告警升级",
    "reposted": "告警更新",
    "suppressed": "告警屏蔽",
}
RESOLUTION_TEXT: Final[Mapping[str, str]] = {
    "cleared": "故障已消除，自动恢复",
    "by_person": "人工关闭",
    "grouped": "并入站点离线告警",
    "flapping": "反复出现，转为抖动告警",
}
#: WeCom's markdown content is limited to 4,096 bytes, DingTalk's text to about 20,000
WECOM_MAX_BYTES: Final = 4000
DINGTALK_MAX_BYTES: Final = 18000
#: member stations a message names before "… N 台"
_MAX_STATIONS_LISTED: Final = 20


@dataclass(frozen=True, slots=True)
class Notice:
    """One thing to tell about one alert: ``alert`` is its state after the change at ``at``.

    ``by``/``note``: who acknowledged or resolved it and why; ``team``/``level``: whom it
    escalated to; ``previous``: the alert as Alertmanager last saw it when its labels changed
    (a new severity is a new alert there, the old one ends).
    """

    kind: NotificationKind
    alert: Alert
    at: float
    by: str | None = None
    note: str | None = None
    team: str | None = None
    level: int | None = None
    previous: Alert | None = None


@dataclass(frozen=True, slots=True)
class Style:
    """What formatting needs from the configuration."""

    timezone: str = "Asia/Shanghai"
    #: the controller's public address, for links (None: no links)
    public_url: str | None = None


def iso(ts: float) -> str:
    """UTC ISO 8601 with ``Z``, as the API writes times."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def alert_item(alert: Alert) -> dict[str, Any]:
    """The alert as ``GET /api/alerts`` lists it (CONTRACT §4)."""
    item: dict[str, Any] = {
        "id": alert.id,
        "state": alert.state,
        "severity": alert.severity,
        "condition": alert.condition,
        "district": alert.district,
        "site": alert.site,
        "station": alert.station,
        "device": alert.device,
        "opened_at": iso(alert.opened_at),
    }
    if alert.of is not None:
        item["of"] = alert.of
    if alert.condition == SITE_OFFLINE:
        item["stations"] = list(alert.stations)
    if alert.acknowledged_at is not None:
        item["acknowledged_at"] = iso(alert.acknowledged_at)
        item["acknowledged_by"] = alert.acknowledged_by
    if alert.resolved_at is not None:
        item["resolved_at"] = iso(alert.resolved_at)
        item["resolution"] = alert.resolution
        if alert.resolved_by is not None:
            item["resolved_by"] = alert.resolved_by
    item["details"] = dict(alert.details)
    return item


def json_body(notice: Notice) -> dict[str, Any]:
    """Our plain JSON webhook body: the alert item plus ``event`` and ``event_at`` (and who,
    why, or whom it escalated to, where the event has them)."""
    body = alert_item(notice.alert)
    body["event"] = notice.kind
    body["event_at"] = iso(notice.at)
    if notice.by is not None:
        body["by"] = notice.by
    if notice.note:
        body["note"] = notice.note
    if notice.kind == "escalated":
        body["escalation"] = {"level": notice.level, "team": notice.team}
    return body


# --- the robots' markdown -------------------------------------------------------------------


def _local(ts: float, style: Style) -> str:
    moment = datetime.fromtimestamp(ts, zoneinfo.ZoneInfo(style.timezone))
    offset = moment.strftime("%z")
    return f"{moment:%Y-%m-%d %H:%M:%S} (UTC{offset[:3]}:{offset[3:]})"


def _duration(seconds: float) -> str:
    minutes = max(int(seconds // 60), 0)
    if minutes < 1:
        return "不到 1 分钟"
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    parts = [f"{days} 天" if days else "", f"{hours} 小时" if hours else "", f"{mins} 分钟"]
    return " ".join(p for p in parts if p and p != "0 分钟")


def _since(alert: Alert) -> float:
    since = alert.details.get("since")
    return float(since) if isinstance(since, int | float) else alert.opened_at


def _what(alert: Alert) -> str:
    if alert.of is not None:
        return f"{alert.of} 反复出现（flapping）"
    summary = alert.details.get("summary")
    if alert.condition == SITE_OFFLINE:
        return f"site_offline：站点 {len(alert.stations)} 台终端离线"
    if isinstance(summary, str) and summary:
        return f"{alert.condition}（{summary}）"
    return alert.condition


def _where(alert: Alert) -> str:
    parts = [
        f"区 {alert.district or '未知'}",
        f"站点 {alert.site or '未知'}",
    ]
    if alert.station is not None:
        parts.append(f"终端 {alert.station}")
    if alert.device is not None:
        parts.append(f"设备 {alert.device}")
    return " · ".join(parts)


def _stations(alert: Alert) -> str | None:
    if alert.condition != SITE_OFFLINE or not alert.stations:
        return None
    shown = ", ".join(alert.stations[:_MAX_STATIONS_LISTED])
    more = len(alert.stations) - _MAX_STATIONS_LISTED
    return shown + (f" 等共 {len(alert.stations)} 台" if more > 0 else "")


def title(notice: Notice) -> str:
    """One line: event, severity, subject (a robot's notification preview shows it)."""
    alert = notice.alert
    subject = " ".join(
        p
        for p in (
            alert.station or alert.site or alert.district,
            alert.device,
            alert.of or alert.condition,
        )
        if p
    )
    return f"【{KIND_TEXT[notice.kind]}】{SEVERITY_TEXT[alert.severity]} · {subject}"


def lines(notice: Notice, style: Style) -> list[tuple[str, str]]:
    """(label, text) rows of a robot message: what, where, since when, how bad, then the
    event's own facts."""
    alert = notice.alert
    rows = [
        ("故障", _what(alert)),
        ("位置", _where(alert)),
    ]
    members = _stations(alert)
    if members is not None:
        rows.append(("终端", members))
    since = _since(alert)
    rows.append(("开始", _local(since, style)))
    rows.append(("级别", f"{SEVERITY_TEXT[alert.severity]}（{alert.severity}）"))
    if notice.kind == "opened":
        rows.append(("已持续", _duration(notice.at - since)))
    elif notice.kind == "acknowledged":
        who = notice.by or alert.acknowledged_by or "未知"
        rows.append(("确认", f"{who}，{_local(notice.at, style)}"))
    elif notice.kind == "resolved":
        reason = RESOLUTION_TEXT.get(alert.resolution or "", alert.resolution or "")
        if alert.resolution == "by_person" and (notice.by or alert.resolved_by):
            reason = f"{reason}（{notice.by or alert.resolved_by}）"
        rows.append(("恢复", f"{_local(notice.at, style)}，{reason}"))
        rows.append(("持续", _duration(notice.at - since)))
    elif notice.kind == "escalated":
        rows.append(
            (
                "升级",
                f"{_duration(notice.at - alert.opened_at)}内无人确认，"
                f"升级至第 {(notice.level or 0) + 1} 级：{notice.team or '未配置'}",
            )
        )
    if notice.note:
        rows.append(("备注", notice.note))
    link = f"{style.public_url}/?alert={alert.id}" if style.public_url else None
    rows.append(("编号", f"[{alert.id}]({link})" if link else alert.id))
    return rows


def _clip(text: str, max_bytes: int) -> str:
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    return data[: max_bytes - 3].decode(errors="ignore") + "…"


_WECOM_COLOR: Final[Mapping[str, str]] = {
    "critical": "warning",
    "warning": "warning",
    "info": "comment",
}


def wecom_body(notice: Notice, style: Style) -> dict[str, Any]:
    """A WeCom group robot markdown message (``msgtype: markdown``)."""
    color = "info" if notice.kind == "resolved" else _WECOM_COLOR[notice.alert.severity]
    head = f'**<font color="{color}">{title(notice)}</font>**'
    body = "\n".join([head, *(f"> {label}：{text}" for label, text in lines(notice, style))])
    return {"msgtype": "markdown", "markdown": {"content": _clip(body, WECOM_MAX_BYTES)}}


def dingtalk_body(notice: Notice, style: Style) -> dict[str, Any]:
    """A DingTalk group robot markdown message (``msgtype: markdown``, ``title`` + ``text``)."""
    heading = title(notice)
    # DingTalk's markdown needs a blank line between paragraphs to break them
    text = "\n\n".join(
        [f"#### {heading}", *(f"- **{label}**：{value}" for label, value in lines(notice, style))]
    )
    return {
        "msgtype": "markdown",
        "markdown": {"title": heading, "text": _clip(text, DINGTALK_MAX_BYTES)},
    }


# --- Alertmanager ---------------------------------------------------------------------------


def am_labels(alert: Alert) -> dict[str, str]:
    """The alert's identity in Alertmanager. The labels silences and routes match; missing
    ones (no device, no station on a site incident) are left out, as Alertmanager treats an
    empty label as absent."""
    labels = {
        "alertname": alert.condition,
        "district": alert.district,
        "site": alert.site,
        "station": alert.station,
        "device": alert.device,
        "severity": alert.severity,
        # a flapping alert is about the condition it flaps (as our own silences see it)
        "condition": alert.of or alert.condition,
    }
    return {k: v for k, v in labels.items() if v}


def am_alert(alert: Alert, style: Style, *, ends_at: float | None = None) -> dict[str, Any]:
    """One ``postableAlert``; ``ends_at`` None leaves it firing (Alertmanager holds it for its
    ``resolve_timeout`` after each post)."""
    rows = lines(Notice("reposted", alert, alert.opened_at), style)
    description = "\n".join(f"{label}：{text}" for label, text in rows[:-1])
    annotations = {
        "summary": f"{SEVERITY_TEXT[alert.severity]} · {_what(alert)} · {_where(alert)}",
        "description": description,
        "alert_id": alert.id,
    }
    if alert.acknowledged_by is not None:
        annotations["acknowledged_by"] = alert.acknowledged_by
    posted: dict[str, Any] = {
        "labels": am_labels(alert),
        "annotations": annotations,
        "startsAt": iso(alert.opened_at),
    }
    if ends_at is not None:
        posted["endsAt"] = iso(ends_at)
    if style.public_url:
        posted["generatorURL"] = f"{style.public_url}/?alert={alert.id}"
    return posted


def alertmanager_alerts(notice: Notice, style: Style) -> list[dict[str, Any]]:
    """The body of ``POST /api/v2/alerts`` for ``notice``: the alert firing, or ended at the
    event's time when it was resolved or suppressed; when its labels changed, the previous
    labels end first."""
    alert = notice.alert
    out: list[dict[str, Any]] = []
    previous = notice.previous
    if previous is not None and am_labels(previous) != am_labels(alert):
        out.append(am_alert(previous, style, ends_at=notice.at))
    if notice.kind == "resolved":
        ended = alert.resolved_at if alert.resolved_at is not None else notice.at
        out.append(am_alert(alert, style, ends_at=ended))
    elif notice.kind == "suppressed":
        out.append(am_alert(alert, style, ends_at=notice.at))
    else:
        out.append(am_alert(alert, style))
    return out


def firing(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries of a stored Alertmanager body that leave an alert firing (to post again)."""
    return [a for a in alerts if "endsAt" not in a]
