"""The ``[alerts]`` section: defaults a technician expects, overrides, refusals."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kioskfleet.controller.alerts.config import AlertsSettings, Threshold
from kioskfleet.protocol.devices import CARD_FAULTS, CASH_FAULTS, DEVICE_KINDS, PRINTER_FAULTS


def test_every_contract_fault_has_a_severity() -> None:
    rules = AlertsSettings().policy(offline_alert_after=120).rules_for(None, None)
    for code in (*PRINTER_FAULTS, *CASH_FAULTS, *CARD_FAULTS):
        if code == "offline":  # ESC/POS's offline bit: the faults beside it alert
            assert rules.fault(code) == "off"
            continue
        assert code in rules.severities, code
        assert rules.fault(code) in ("warning", "critical"), code
    assert rules.fault("fraud_attempt") == "critical"
    assert rules.condition("paper_low") == "info"
    assert rules.condition("cashbox_high") == "info"
    assert rules.condition("offline") == "critical"
    assert rules.condition("silent") == "critical"
    # a code some driver adds later still alerts
    assert rules.fault("lamp_broken") == "warning"


def test_a_missing_printer_or_id_reader_stops_service() -> None:
    rules = AlertsSettings().policy(offline_alert_after=120).rules_for(None, None)
    assert set(rules.device_offline) == set(DEVICE_KINDS)
    assert rules.device_offline["printer"] == "critical"
    assert rules.device_offline["id_reader"] == "critical"
    assert rules.device_offline["cash_acceptor"] == "warning"


def test_host_thresholds_have_two_levels() -> None:
    rules = AlertsSettings().policy(offline_alert_after=120).rules_for(None, None)
    disk = next(r for r in rules.host if r.condition == "disk").threshold
    assert disk.severity(50) is None
    assert disk.severity(85) == "warning"
    assert disk.severity(99) == "critical"
    assert {r.condition for r in rules.host} == {
        "disk",
        "memory",
        "temperature",
        "clock_skew",
        "update_metadata_expired",
    }


def test_given_keys_update_the_defaults() -> None:
    settings = AlertsSettings.model_validate(
        {"severities": {"cover_open": "critical", "paper_low": "off"}, "device_offline": {}}
    )
    rules = settings.policy(offline_alert_after=120).rules_for("binhu", "subway_station")
    assert rules.fault("cover_open") == "critical"
    assert rules.condition("paper_low") == "off"
    assert rules.fault("paper_out") == "critical"  # untouched default
    assert rules.device_offline["printer"] == "critical"


OVERRIDES: list[dict[str, Any]] = [
    {"site_type": "subway_station", "severities": {"paper_low": "warning", "cover_open": "info"}},
    {"district": "binhu", "severities": {"paper_low": "critical"}},
    {
        "district": "binhu",
        "site_type": "subway_station",
        "severities": {"cover_open": "critical"},
        "host": {"temperature_c": {"warning": 65}},
    },
]


@pytest.mark.parametrize(
    ("district", "site_type", "paper_low", "cover_open", "temp_warning"),
    [
        (None, None, "info", "warning", 75.0),
        ("liangxi", "public_place", "info", "warning", 75.0),
        ("liangxi", "subway_station", "warning", "info", 75.0),  # site type only
        ("binhu", "public_place", "critical", "warning", 75.0),  # district only
        # district beats site type for paper_low; district + site type beats both
        ("binhu", "subway_station", "critical", "critical", 65.0),
    ],
)
def test_the_most_specific_override_wins(
    district: str | None,
    site_type: str | None,
    paper_low: str,
    cover_open: str,
    temp_warning: float,
) -> None:
    settings = AlertsSettings.model_validate({"overrides": OVERRIDES})
    rules = settings.policy(offline_alert_after=120).rules_for(district, site_type)
    assert rules.condition("paper_low") == paper_low
    assert rules.fault("cover_open") == cover_open
    temperature = next(r for r in rules.host if r.condition == "temperature").threshold
    # a partial threshold keeps the other level
    assert temperature == Threshold(warning=temp_warning, critical=85.0)


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"severities": {"paper_out": "urgent"}}, "paper_out"),
        ({"overrides": [{"severities": {}}]}, "district, a site_type or both"),
        ({"overrides": [{"district": "binhu"}, {"district": "binhu"}]}, "two overrides"),
        ({"overrides": [{"site_type": "airport"}]}, "site_type"),
        ({"host": {"disk_percent": {"warning": 90, "critical": 80}}}, "below warning"),
        (
            {"overrides": [{"district": "binhu", "host": {"disk_percent": {"warning": 99}}}]},
            "below warning",
        ),
        ({"flapping": {"cycles": 1}}, "cycles"),
        ({"routing": {"ack_within": {"critical": 0}}}, "ack_within"),
        ({"unknown_key": 1}, "unknown_key"),
        ({"device_offline": {"scanner": "info"}}, "scanner"),
    ],
)
def test_mistakes_are_refused(values: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        AlertsSettings.model_validate(values)


def test_settings_are_frozen() -> None:
    settings = AlertsSettings()
    with pytest.raises(ValidationError):
        settings.unknown_fault = "info"  # type: ignore[misc]


def test_the_site_window_never_outlasts_offline_alert_after() -> None:
    settings = AlertsSettings()
    assert settings.policy(offline_alert_after=120).site_window == 30
    assert settings.policy(offline_alert_after=10).site_window == 10


def test_ack_limits_per_severity() -> None:
    routing = AlertsSettings.model_validate({"routing": {"ack_within": {"warning": 600}}}).routing
    assert routing.ack_within == {"critical": 900.0, "warning": 600.0, "info": None}
