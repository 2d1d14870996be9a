"""Agent configuration: clear errors, and devices from the station profile."""

from __future__ import annotations

from pathlib import Path

import pytest

from kioskfleet.agent.config import ConfigError, agent_config_from_dict, load_agent_config

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
    with pytest.raises(ConfigError, match=r"devices.printer needs driver and port"):
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
        ({"district": 3}, "'district' must be a str"),
        ({"devices": {"printer": "ttyS0"}}, "must be a table"),
        ({"devices": {"printer": {"baudrate": "fast"}}}, "devices.printer"),
    ],
)
def test_bad_configurations_get_clear_errors(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        agent_config_from_dict({**BASE, **change})


def test_missing_field_and_bad_toml_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('station = "wx-binhu-sub-03"\n')
    with pytest.raises(ConfigError, match=r"agent\.toml: missing '(broker|district)'"):
        load_agent_config(path)
    path.write_text("station = \n")
    with pytest.raises(ConfigError, match=r"agent\.toml"):
        load_agent_config(path)


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
