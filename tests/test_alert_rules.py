"""Alert rules: a station's picture → the conditions active now."""

from __future__ import annotations

from typing import Any

import pytest

from kioskfleet.controller.alerts.config import AlertsSettings
from kioskfleet.controller.alerts.model import Condition
from kioskfleet.controller.alerts.rules import evaluate, offline_due
from tests.alert_book import T0, device, healthy_devices, picture

POLICY = AlertsSettings().policy(offline_alert_after=120)


def found(
    devices: dict[str, Any] | None = None, **kw: Any
) -> dict[tuple[str | None, str], Condition]:
    result = evaluate(picture(devices=devices, **kw), POLICY, T0)
    return {c.key: c for c in result.conditions}


def with_device(slot: str, status: dict[str, Any]) -> dict[str, Any]:
    devices: dict[str, Any] = healthy_devices()
    devices[slot] = status
    return devices


def test_a_healthy_station_has_no_conditions() -> None:
    result = evaluate(picture(), POLICY, T0)
    assert result.conditions == ()
    assert result.reachable


@pytest.mark.parametrize(
    ("slot", "state", "fault", "severity"),
    [
        ("printer", "user_error", "paper_out", "critical"),
        ("printer", "user_error", "paper_jam", "critical"),
        ("printer", "user_error", "cover_open", "warning"),
        ("printer", "hardware_error", "cutter_error", "critical"),
        ("printer", "hardware_error", "unrecoverable_error", "critical"),
        ("printer", "hardware_error", "recoverable_error", "warning"),
        ("cash_acceptor", "user_error", "note_jam", "critical"),
        ("cash_acceptor", "user_error", "cashbox_full", "warning"),
        ("cash_acceptor", "user_error", "cashbox_missing", "critical"),
        ("cash_acceptor", "user_error", "note_path_open", "warning"),
        ("cash_acceptor", "hardware_error", "hardware_fault", "warning"),
        ("cash_acceptor", "fraud_attempt", "fraud_attempt", "critical"),
        ("coin_acceptor", "fraud_attempt", "fraud_attempt", "critical"),
        ("card_reader", "user_error", "card_jammed", "critical"),
        ("card_reader", "hardware_error", "read_error", "warning"),
        ("id_reader", "hardware_error", "sam_fault", "critical"),
        ("printer_2", "user_error", "paper_out", "critical"),
    ],
)
def test_every_fault_is_a_condition(slot: str, state: str, fault: str, severity: str) -> None:
    kind = slot.split("_2")[0]
    conditions = found(with_device(slot, device(kind, state, [fault])))
    assert list(conditions) == [(slot, fault)]
    condition = conditions[(slot, fault)]
    assert condition.severity == severity
    assert condition.details["state"] == state
    assert slot in condition.details["summary"]
    assert fault in condition.details["summary"]


def test_several_faults_of_one_device_are_several_conditions() -> None:
    conditions = found(
        with_device(
            "printer", device("printer", "user_error", ["cover_open", "paper_out", "offline"])
        )
    )
    # ESC/POS's offline bit beside them raises nothing of its own
    assert set(conditions) == {("printer", "cover_open"), ("printer", "paper_out")}


@pytest.mark.parametrize(
    ("slot", "extra", "condition", "severity"),
    [
        ("printer", {"supplies": {"paper": "low"}}, "paper_low", "info"),
        ("cash_acceptor", {"supplies": {"cashbox": "high"}}, "cashbox_high", "info"),
        # a driver that reports the supply level only still alerts
        ("printer", {"supplies": {"paper": "out"}}, "paper_out", "critical"),
        ("cash_acceptor", {"supplies": {"cashbox": "full"}}, "cashbox_full", "warning"),
        ("card_reader", {"media": "jammed"}, "card_jammed", "critical"),
    ],
)
def test_supplies_and_media(
    slot: str, extra: dict[str, Any], condition: str, severity: str
) -> None:
    kind = slot
    conditions = found(with_device(slot, device(kind, **extra)))
    assert list(conditions) == [(slot, condition)]
    assert conditions[(slot, condition)].severity == severity


def test_a_fault_and_its_supply_level_are_one_condition() -> None:
    status = device("printer", "user_error", ["paper_out"], supplies={"paper": "out"})
    assert list(found(with_device("printer", status))) == [("printer", "paper_out")]


def test_an_error_state_without_a_fault_still_alerts() -> None:
    conditions = found(with_device("id_reader", device("id_reader", "hardware_error")))
    assert list(conditions) == [("id_reader", "hardware_error")]
    assert conditions[("id_reader", "hardware_error")].severity == "warning"


@pytest.mark.parametrize("state", ["offline", "no_device"])
@pytest.mark.parametrize(
    ("slot", "severity"),
    [
        ("printer", "critical"),
        ("id_reader", "critical"),
        ("cash_acceptor", "warning"),
        ("coin_acceptor", "warning"),
        ("card_reader", "warning"),
    ],
)
def test_a_device_that_does_not_answer(slot: str, severity: str, state: str) -> None:
    # its last faults are stale: only device_offline
    conditions = found(with_device(slot, device(slot, state, ["note_jam"])))
    assert list(conditions) == [(slot, "device_offline")]
    assert conditions[(slot, "device_offline")].severity == severity
    assert conditions[(slot, "device_offline")].details["state"] == state


def test_busy_is_no_problem() -> None:
    assert found(with_device("printer", device("printer", "busy"))) == {}


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ({"disk_percent": 84.9}, {}),
        ({"disk_percent": 85.0}, {"disk": "warning"}),
        ({"disk_percent": 96.0}, {"disk": "critical"}),
        ({"memory_percent": 91.0}, {"memory": "warning"}),
        ({"memory_percent": 97.0}, {"memory": "critical"}),
        (
            {"temperature_c": 76.0, "disk_percent": 99.0},
            {"temperature": "warning", "disk": "critical"},
        ),
        ({"temperature_c": 90.0}, {"temperature": "critical"}),
        # the kiosk's clock off the controller's, either way (issue 11: 5 minutes)
        ({"clock_skew_s": 299.9}, {}),
        ({"clock_skew_s": -299.9}, {}),
        ({"clock_skew_s": 3600.0}, {"clock_skew": "warning"}),
        ({"clock_skew_s": -301.0}, {"clock_skew": "warning"}),
        ({"update_metadata_expired": 0.0}, {}),
        ({"update_metadata_expired": 1.0}, {"update_metadata_expired": "warning"}),
        ({}, {}),  # no metrics reported: nothing to judge
    ],
)
def test_host_thresholds(host: dict[str, float], expected: dict[str, str]) -> None:
    conditions = found(host=host)
    assert {k[1]: c.severity for k, c in conditions.items()} == expected
    for (device_slot, _), condition in conditions.items():
        assert device_slot is None
        assert condition.details["value"] == host[condition.details["metric"]]


def test_a_clock_behind_says_so_by_its_size() -> None:
    (condition,) = found(host={"clock_skew_s": -3600.0}).values()
    assert condition.details["summary"] == "|clock_skew_s| 3600 ≥ 300"
    assert condition.details["value"] == -3600.0  # as reported: behind


@pytest.mark.parametrize("status", ["offline", "silent"])
def test_an_unreachable_station_alerts_only_after_offline_alert_after(status: str) -> None:
    broken = with_device("printer", device("printer", "user_error", ["paper_out"]))
    pic = picture(status=status, since=T0, devices=broken, host={"disk_percent": 99.0})
    assert offline_due(pic, POLICY) == T0 + 120
    early = evaluate(pic, POLICY, T0 + 119.9)
    assert early.conditions == ()
    assert not early.reachable
    late = evaluate(pic, POLICY, T0 + 120)
    assert [(c.device, c.condition, c.severity) for c in late.conditions] == [
        (None, status, "critical")
    ]
    assert late.conditions[0].details["since"] == T0
    assert not late.reachable


def test_offline_after_silent_counts_from_when_it_went_quiet() -> None:
    pic = picture(status="offline", since=T0 + 100, down_since=T0)
    assert [c.condition for c in evaluate(pic, POLICY, T0 + 120).conditions] == ["offline"]


def test_a_reachable_station_has_no_offline_due() -> None:
    assert offline_due(picture(status="degraded"), POLICY) is None


def test_overrides_apply_by_place() -> None:
    policy = AlertsSettings.model_validate(
        {
            "overrides": [
                {
                    "district": "binhu",
                    "site_type": "subway_station",
                    "severities": {"paper_low": "warning", "offline": "warning"},
                },
                {"district": "liangxi", "device_offline": {"cash_acceptor": "critical"}},
            ]
        }
    ).policy(offline_alert_after=60)
    low = with_device("printer", device("printer", supplies={"paper": "low"}))
    assert evaluate(picture(devices=low), policy, T0).conditions[0].severity == "warning"
    elsewhere = picture(devices=low, site_type="public_place")
    assert evaluate(elsewhere, policy, T0).conditions[0].severity == "info"
    gone = with_device("cash_acceptor", device("cash_acceptor", "offline"))
    assert (
        evaluate(picture(devices=gone, district="liangxi"), policy, T0).conditions[0].severity
        == "critical"
    )
    down = picture(status="offline", since=T0)
    assert evaluate(down, policy, T0 + 60).conditions[0].severity == "warning"


def test_a_condition_switched_off_raises_nothing() -> None:
    policy = AlertsSettings.model_validate(
        {"severities": {"paper_low": "off", "silent": "off"}}
    ).policy(offline_alert_after=0)
    low = with_device("printer", device("printer", supplies={"paper": "low"}))
    assert evaluate(picture(devices=low), policy, T0).conditions == ()
    assert evaluate(picture(status="silent"), policy, T0 + 1).conditions == ()
