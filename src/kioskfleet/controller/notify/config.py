"""Where notifications go: the ``[alerts.receivers]`` section.

Receivers are named; teams (``[alerts.routing.teams]``) map to webhook receivers, and every
Alertmanager receives every alert that may be notified (Alertmanager routes by labels itself).
Meant to become one field of :class:`~kioskfleet.controller.alerts.config.AlertsSettings`
(``receivers: ReceiversSettings = ReceiversSettings()``).

Example::

    [alerts.receivers]
    public_url = "https://fleet.wuxi.example"
    [alerts.receivers.webhooks.binhu-wecom]
    url = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=…"
    format = "wecom"
    [alerts.receivers.webhooks.second-line-dingtalk]
    url = "https://oapi.dingtalk.com/robot/send?access_token=…"
    format = "dingtalk"
    secret = "SEC…"                   # the robot's 加签 secret
    [alerts.receivers.alertmanagers.am]
    url = "http://127.0.0.1:9093"     # its base URL; alerts go to /api/v2/alerts
    [alerts.receivers.teams]
    binhu-technicians = ["binhu-wecom"]
    wuxi-second-line = ["second-line-dingtalk"]
"""

from __future__ import annotations

import zoneinfo
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from kioskfleet.mqttclient import ReconnectPolicy

WebhookFormat = Literal["json", "wecom", "dingtalk"]

#: a receiver's name: also its key in the outbox and in the given-up counter
_Name = Annotated[str, Field(min_length=1, max_length=48, pattern=r"^[A-Za-z0-9][\w.-]*$")]
_Url = Annotated[str, Field(min_length=8, max_length=2000, pattern=r"^https?://")]
_Seconds = Annotated[float, Field(gt=0, le=7 * 86400)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Webhook(_Section):
    """An HTTP endpoint that receives one POST per notification."""

    url: _Url
    #: ``json``: the alert item of ``/api/alerts`` plus the event; ``wecom`` / ``dingtalk``:
    #: a markdown message for a WeCom (企业微信) or DingTalk (钉钉) group robot
    format: WebhookFormat = "json"
    #: DingTalk's 加签 secret (``SEC…``): each request then carries ``timestamp`` and ``sign``
    secret: SecretStr | None = None
    timeout: _Seconds = 10.0

    @model_validator(mode="after")
    def _secret_is_dingtalks(self) -> Self:
        if self.secret is not None and self.format != "dingtalk":
            raise ValueError("secret is for format = 'dingtalk' only")
        return self


class Alertmanager(_Section):
    """A Prometheus Alertmanager, fed through its v2 API (``POST /api/v2/alerts``)."""

    #: its base URL (``http://host:9093``); a URL ending in ``/api/v2`` or ``/api/v2/alerts``
    #: is taken as the same
    url: _Url
    #: every active alert is posted again this often (seconds) ...
    repost_interval: _Seconds = 60.0
    #: ... well within Alertmanager's ``resolve_timeout`` (its global setting, default 5 min),
    #: after which it takes an alert that was not posted again as resolved
    resolve_timeout: _Seconds = 300.0
    timeout: _Seconds = 10.0

    @field_validator("url")
    @classmethod
    def _base(cls, value: str) -> str:
        value = value.rstrip("/")
        for tail in ("/api/v2/alerts", "/api/v2"):
            value = value.removesuffix(tail)
        return value

    @model_validator(mode="after")
    def _reposts_in_time(self) -> Self:
        # one failed post plus its first retries must still land before the timeout
        if self.repost_interval * 2 > self.resolve_timeout:
            raise ValueError(
                f"repost_interval ({self.repost_interval:g} s) must be at most half of "
                f"Alertmanager's resolve_timeout ({self.resolve_timeout:g} s)"
            )
        return self

    @property
    def alerts_url(self) -> str:
        """Where alerts are posted (and listed)."""
        return f"{self.url}/api/v2/alerts"


class Retry(_Section):
    """How long and how often a notification a receiver did not take is tried again."""

    #: first delay after a failure (seconds); it doubles with each failure in a row ...
    first_delay: Annotated[float, Field(gt=0, le=3600)] = 5.0
    #: ... up to this (with full jitter below it)
    max_delay: Annotated[float, Field(gt=0, le=3600)] = 600.0
    #: a notification not delivered this long after it was stored is given up (and counted);
    #: at least a day, so that a receiver down overnight still gets everything
    give_up_after: Annotated[float, Field(ge=86400, le=30 * 86400)] = 86400.0

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.first_delay > self.max_delay:
            raise ValueError("first_delay must not exceed max_delay")
        return self

    @property
    def policy(self) -> ReconnectPolicy:
        """The delays as :func:`kioskfleet.mqttclient.backoff_delay` takes them."""
        return ReconnectPolicy(self.first_delay, self.max_delay)


class ReceiversSettings(_Section):
    """The ``[alerts.receivers]`` section."""

    webhooks: dict[_Name, Webhook] = Field(default_factory=dict)
    alertmanagers: dict[_Name, Alertmanager] = Field(default_factory=dict)
    #: team (as named in ``[alerts.routing.teams]``) → its webhook receivers
    teams: dict[_Name, list[_Name]] = Field(default_factory=dict)
    #: the controller's address as people reach it: links in messages, ``generatorURL``
    public_url: _Url | None = None
    #: how times are written in messages (Wuxi reads Beijing time)
    timezone: str = "Asia/Shanghai"
    retry: Retry = Retry()
    #: sent and given-up notifications are deleted after this many days
    keep_days: Annotated[float, Field(ge=1, le=3650)] = 30.0

    @field_validator("public_url")
    @classmethod
    def _no_slash(cls, value: str | None) -> str | None:
        return None if value is None else value.rstrip("/")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(f"unknown time zone {value!r}") from err
        return value

    @model_validator(mode="after")
    def _names(self) -> Self:
        both = set(self.webhooks) & set(self.alertmanagers)
        if both:
            raise ValueError(f"receiver names used twice: {sorted(both)}")
        for team, names in self.teams.items():
            unknown = [n for n in names if n not in self.webhooks]
            if unknown:
                raise ValueError(f"team {team!r} names unknown webhooks {unknown}")
        return self

    def webhooks_of(self, teams: list[str]) -> list[str]:
        """The webhook receivers of ``teams``, each once, in order."""
        seen: dict[str, None] = {}
        for team in teams:
            for name in self.teams.get(team, ()):
                seen.setdefault(name, None)
        return list(seen)
