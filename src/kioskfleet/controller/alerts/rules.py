"""Alert rules: pure functions of a station's resulting picture, not of single events.

The writer hands over what it knows of a station after applying a batch (or in its sweep):
status and since when, every device's §5 status by slot, the latest host metrics, and where
the station is. :func:`evaluate` answers with the conditions active now. A station that is
offline or silent is not *reachable*: what its devices and host last said is stale, so it
raises only its own ``offline`` / ``silent`` condition, once that has lasted
``offline_alert_after`` seconds; its device and host alerts are neither opened nor cleared
meanwhile (the lifecycle holds them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from kioskfleet.controller.alerts.config import AlertPolicy, Level, ResolvedRules, Severity
from kioskfleet.controller.alerts.model import Condition
from kioskfleet.protocol.devices import slot_kind
from kioskfleet.protocol.stations import StationStatus

DEVICE_OFFLINE: Final = "device_offline"
#: device states in which a device does not answer at all: its faults are stale
_UNREACHABLE_DEVICE: Final = frozenset({"offline", "no_device"})
#: supply levels → the condition they are (the fault a driver may also report)
_PAPER: Final[Mapping[str, str]] = {"low": "paper_low", "out": "paper_out", "jammed": "paper_jam"}
_CASHBOX: Final[Mapping[str, str]] = {
    "high": "cashbox_high",
    "full": "cashbox_full",
    "missing": "cashbox_missing",
}
_ERROR_STATES: Final = frozenset({"hardware_error", "user_error"})


@dataclass(frozen=True, slots=True)
class StationPicture:
    """What the controller knows of one station now."""

    station: str
    status: StationStatus
    #: when the current status began (Unix seconds)
    since: float
    district: str | None = None
    site: str | None = None
    site_type: str | None = None
    #: slot → §5 status as stored (``state``, ``faults``, ``supplies``, ``media``, ``info``)
    devices: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: slot → when that device's status last changed, where known
    device_since: Mapping[str, float] = field(default_factory=dict)
    #: the latest telemetry's ``host`` metrics
    host: Mapping[str, float] = field(default_factory=dict)
    #: when it stopped being reachable, if it went silent and then offline (or back): the
    #: offline alert is due ``offline_alert_after`` after this, not after the latest change;
    #: None means ``since``
    down_since: float | None = None

    @property
    def reachable(self) -> bool:
        """Online or degraded: its devices and host metrics are current."""
        return self.status in ("online", "degraded")

    @property
    def unreachable_since(self) -> float:
        """When it became offline or silent (meaningful only when not :attr:`reachable`)."""
        return self.since if self.down_since is None else self.down_since


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The conditions active on a station now, and whether its device and host conditions
    are known (False while it is offline or silent)."""

    conditions: tuple[Condition, ...]
    reachable: bool


def _severity(level: Level) -> Severity | None:
    return None if level == "off" else level


def offline_due(picture: StationPicture, policy: AlertPolicy) -> float | None:
    """When an unreachable station's own ``offline`` / ``silent`` alert falls due (None while
    it is reachable); the sweep evaluates it again then."""
    if picture.reachable:
        return None
    return picture.unreachable_since + policy.offline_alert_after


def evaluate(picture: StationPicture, policy: AlertPolicy, now: float) -> Evaluation:
    """Every condition active on ``picture``'s station at ``now``."""
    rules = policy.rules_for(picture.district, picture.site_type)
    if not picture.reachable:
        due = picture.unreachable_since + policy.offline_alert_after
        severity = _severity(rules.condition(picture.status))
        if now < due or severity is None:
            return Evaluation((), reachable=False)
        return Evaluation(
            (
                Condition(
                    None,
                    picture.status,
                    severity,
                    {
                        "summary": f"station {picture.status}",
                        "since": picture.unreachable_since,
                    },
                ),
            ),
            reachable=False,
        )
    found: dict[tuple[str | None, str], Condition] = {}
    for slot, status in picture.devices.items():
        _device_conditions(slot, status, picture.device_since.get(slot), rules, found)
    for rule in rules.host:
        value = picture.host.get(rule.metric)
        if value is None:
            continue
        host_severity = rule.severity(value)
        if host_severity is not None:
            limit = getattr(rule.threshold, host_severity)
            measured = rule.measure(value)
            label = rule.metric if measured == value else f"|{rule.metric}|"
            found[(None, rule.condition)] = Condition(
                None,
                rule.condition,
                host_severity,
                {
                    "summary": f"{label} {measured:g} ≥ {limit:g}",
                    "metric": rule.metric,
                    "value": value,
                    "threshold": limit,
                },
            )
    return Evaluation(tuple(found.values()), reachable=True)


def _device_conditions(
    slot: str,
    status: Mapping[str, Any],
    since: float | None,
    rules: ResolvedRules,
    found: dict[tuple[str | None, str], Condition],
) -> None:
    state = status.get("state")
    if state in _UNREACHABLE_DEVICE:
        kind = _kind(slot, status)
        severity = _severity(rules.device_offline.get(kind, rules.unknown_fault))
        if severity is not None:
            found[(slot, DEVICE_OFFLINE)] = Condition(
                slot, DEVICE_OFFLINE, severity, _details(slot, DEVICE_OFFLINE, status, since)
            )
        return
    # a fault code, or what a supply level, the media or the state says on its own (a driver
    # may report one without the other)
    codes: list[str] = list(status.get("faults") or ())
    supplies = status.get("supplies") or {}
    paper = _PAPER.get(supplies.get("paper", ""))
    if paper is not None:
        codes.append(paper)
    cashbox = _CASHBOX.get(supplies.get("cashbox", ""))
    if cashbox is not None:
        codes.append(cashbox)
    if status.get("media") == "jammed":
        codes.append("card_jammed")
    if state == "fraud_attempt":
        codes.append("fraud_attempt")
    elif state in _ERROR_STATES and not codes:
        codes.append(state)
    for code in codes:
        if (slot, code) in found:
            continue
        severity = _severity(rules.fault(code))
        if severity is not None:
            found[(slot, code)] = Condition(
                slot, code, severity, _details(slot, code, status, since)
            )


def _kind(slot: str, status: Mapping[str, Any]) -> str:
    try:
        return slot_kind(slot)
    except ValueError:
        return str(status.get("device", ""))


def _details(
    slot: str, condition: str, status: Mapping[str, Any], since: float | None
) -> dict[str, Any]:
    info = status.get("info") or {}
    details: dict[str, Any] = {
        "summary": f"{slot}: {condition} ({status.get('state')})",
        "state": status.get("state"),
        "driver": status.get("driver"),
        "model": info.get("model"),
    }
    if since is not None:
        details["since"] = since
    return details
