"""Agent configuration: clear errors, and devices from the station profile."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from kioskfleet.agent.config import (
    ConfigError,
    MaintenanceWindow,
    agent_config_from_dict,
    load_agent_config,
)

BASE = {
    "station": "wx-binhu-sub-03",
    "district": "Binhu",
    "site": "Taihu Square Metro Station",
    "site_type": "subway_station",
    "profile": "estation-gen2",
    "broker": "mqtt://127.0.0.1:1883",
}


def test_devices_come_from_the_station_profile_and_the_file_overrides_them() -> None:
    config = agent_config_from_dict({**BASE, "devices": {"printer": {"port": "/dev/ttyUSB3"}}})
    slots = {d.slot: d for d in config.devices}
    assert set(slots) == {"printer", "cash_acceptor", "coin_acceptor", "id_reader", "card_reader"}
    assert slots["printer"].port == "/dev/ttyUSB3"
    assert slots["printer"].driver == "escpos"
    assert slots["printer"].profile == "snbc-btt080"
    assert slots["cash_acceptor"].driver == "ssp"
    assert "coin_acceptor" not in config.required_devices  # coins are optional
    assert "printer" in config.required_devices


def test_an_unknown_profile_needs_its_devices_spelled_out() -> None:
    config = agent_config_from_dict(
        {
            **BASE,
            "profile": "custom-1",
            "devices": {"printer": {"driver": "escpos", "port": "/dev/ttyS0"}},
        }
    )
    assert [d.slot for d in config.devices] == ["printer"]
    with pytest.raises(ConfigError, match=r"devices\.printer\.driver: missing"):
        agent_config_from_dict(
            {**BASE, "profile": "custom-1", "devices": {"printer": {"port": "x"}}}
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"station": "Not Valid"}, "station id"),
        ({"station": "controller"}, "station id"),
        ({"broker": "http://x"}, "mqtt://"),
        ({"telemetry_interval": 0}, "telemetry_interval"),
        ({"district": 3}, "district: must be a non-empty string"),
        ({"devices": {"printer": "ttyS0"}}, "must be a table"),
        ({"devices": {"printer": {"baudrate": "fast"}}}, "devices.printer.baudrate"),
    ],
)
def test_bad_configurations_get_clear_errors(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        agent_config_from_dict({**BASE, **change})


def test_missing_field_and_bad_toml_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('station = "wx-binhu-sub-03"\n')
    with pytest.raises(ConfigError, match=r"agent\.toml: (broker|district): missing"):
        load_agent_config(path)
    path.write_text("station = \n")
    with pytest.raises(ConfigError, match=r"agent\.toml"):
        load_agent_config(path)


def test_settings_the_contract_lists_are_accepted_and_parsed(tmp_path: Path) -> None:
    config = agent_config_from_dict(
        {
            **BASE,
            "maintenance_window": "01:00-05:00",
            "update_root": str(tmp_path / "root.json"),
            "local_service": False,
            "local_service_token_file": str(tmp_path / "token"),
            "local_service_group": "kiosk",
        }
    )
    assert config.maintenance_window == MaintenanceWindow(start=time(1, 0), end=time(5, 0))
    assert str(config.maintenance_window) == "01:00-05:00"
    # the birth states it (issue 11), as written
    from kioskfleet.agent.service import identity_of

    assert identity_of(config).maintenance_window == "01:00-05:00"
    assert config.update_root == tmp_path / "root.json"
    assert config.local_service is None
    assert config.local_service_token_file == tmp_path / "token"
    assert config.local_service_group == "kiosk"
    defaults = agent_config_from_dict(BASE)
    assert defaults.maintenance_window is None
    assert identity_of(defaults).maintenance_window is None
    assert defaults.local_service == "127.0.0.1:8765"
    assert defaults.local_service_token_file is None


def test_the_configuration_is_frozen() -> None:
    config = agent_config_from_dict(BASE)
    with pytest.raises(ValidationError):
        config.station = "other-station"  # type: ignore[misc]


SHANGHAI = timezone(timedelta(hours=8))


def at(hour: int, minute: int = 0, tz: timezone = SHANGHAI) -> datetime:
    return datetime(2026, 3, 14, hour, minute, tzinfo=tz)


@pytest.mark.parametrize(
    ("window", "inside", "outside"),
    [
        ("01:00-05:00", [at(1), at(3, 30), at(4, 59)], [at(0, 59), at(5), at(12), at(23)]),
        # wraps midnight
        ("23:00-02:00", [at(23), at(23, 59), at(0), at(1, 59)], [at(2), at(12), at(22, 59)]),
        # 03:00 Shanghai is 19:00 UTC the day before
        ("02:00-04:00", [at(19, 0, UTC), at(18, 30, UTC)], [at(3, 0, UTC), at(20, 0, UTC)]),
    ],
)
def test_maintenance_window_contains(
    window: str, inside: list[datetime], outside: list[datetime]
) -> None:
    parsed = MaintenanceWindow.parse(window)
    assert all(parsed.contains(moment) for moment in inside)
    assert not any(parsed.contains(moment) for moment in outside)


def test_maintenance_window_needs_an_aware_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        MaintenanceWindow.parse("01:00-05:00").contains(datetime(2026, 3, 14, 2, 0))


@pytest.mark.parametrize(
    "text", ["1:00-5:00", "01:00", "01:00-24:00", "25:00-01:00", "01:60-02:00", "01:00-01:00", ""]
)
def test_bad_maintenance_windows(text: str) -> None:
    with pytest.raises(ConfigError, match=r"maintenance_window: .*HH:MM-HH:MM"):
        agent_config_from_dict({**BASE, "maintenance_window": text})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"site_type": "mall"}, "site_type: must be one of 'government_service_center'"),
        ({"telemetry_interval": "fast"}, "telemetry_interval: must be a number from 0.1 to 86400"),
        ({"local_service": True}, "local_service: must be 'host:port'"),
        ({"local_service": "127.0.0.1:99999"}, "local_service: must be 'host:port'"),
        ({"update_root": 3}, "update_root: must be a path"),
        ({"bogus": 1}, "bogus: unknown key (allowed: broker, "),
        ({"devices": {"printer": {"driver": "zpl"}}}, "devices.printer.driver: must be one of"),
        ({"devices": {"printer": {"address": "2"}}}, "devices.printer.address: must be a whole"),
        ({"devices": {"scanner": {"driver": "escpos", "port": "x"}}}, "devices.scanner: must be"),
        ({"devices": {"printer": {"slot": "id_reader"}}}, "devices.printer.slot: unknown key"),
        ({"required_devices": ["printer_2"]}, "required_devices: 'printer_2' is not a device"),
        ({"broker": "mqtt://kiosk:s3cret@h:1883?version=4"}, "broker: the URL version must be"),
    ],
)
def test_one_line_errors_name_the_key_and_what_it_allows(change: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        agent_config_from_dict({**BASE, **change}, source="agent.toml")
    text = str(caught.value)
    assert text.startswith("agent.toml: ")
    assert message in text
    assert "\n" not in text
    assert "s3cret" not in text


def test_the_local_service_token_file_and_group() -> None:
    default = agent_config_from_dict(BASE)
    assert default.local_service_token_file is None  # the agent uses <state_dir>/...
    assert default.local_service_group is None
    config = agent_config_from_dict(
        {
            **BASE,
            "local_service_token_file": "/etc/kioskfleet/local-service.token",
            "local_service_group": "kioskapp",
        }
    )
    assert config.local_service_token_file == Path("/etc/kioskfleet/local-service.token")
    assert config.local_service_group == "kioskapp"


def test_the_soak_policy_is_configurable_and_defaults_to_the_updaters() -> None:
    from kioskfleet.agent.updater import SoakPolicy

    assert agent_config_from_dict(BASE).updates.soak_policy() == SoakPolicy()
    config = agent_config_from_dict(
        {
            **BASE,
            "updates": {
                "soak_s": 300,
                "probe_interval_s": 10,
                "health_timeout_s": 1800,
                "max_failed_probes": 3,
                "max_starts": 2,
                "check_interval_s": 600,
            },
        }
    )
    assert config.updates.soak_policy() == SoakPolicy(
        soak=300.0, interval=10.0, timeout=1800.0, max_failures=3, max_starts=2
    )
    assert config.updates.check_interval_s == 600.0


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        ({"soak_s": -1}, r"updates\.soak_s: must be .*0"),
        ({"soak_s": "2m"}, r"updates\.soak_s: must be a number"),
        ({"probe_interval_s": 0}, r"updates\.probe_interval_s"),
        ({"max_starts": 0}, r"updates\.max_starts"),
        ({"max_failed_probes": 1.5}, r"updates\.max_failed_probes"),
        ({"check_interval_s": 0.5}, r"updates\.check_interval_s"),
        ({"soak_s": 900, "health_timeout_s": 600}, r"soak_s \(900\) must be shorter than"),
        ({"soak": 60}, r"updates\.soak"),
    ],
)
def test_bad_soak_settings_are_refused_in_one_line(
    updates: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        agent_config_from_dict({**BASE, "updates": updates})
    assert "\n" not in str(err.value)
