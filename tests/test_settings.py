"""Controller settings: defaults < TOML file < KIOSKFLEET_* variables < explicit overrides."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from kioskfleet.controller.config import Settings, SettingsError, load_settings

TOKEN = "b00tstrap-t0ken-0123456789"


def test_defaults_without_file_or_environment() -> None:
    settings = load_settings(None, {})
    assert settings == Settings()
    assert settings.db_url == "sqlite:///kioskfleet.db"
    assert settings.host_port == ("127.0.0.1", 8000)
    assert settings.broker.port == 1883
    assert settings.offline_alert_after == 120.0
    assert settings.bootstrap_token is None


def test_the_contract_names_work_and_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "controller.toml"
    path.write_text(
        'db_url = "sqlite:///from-file.db"\nlisten = "0.0.0.0:9000"\nretention_days = 3\n'
        'writer = "thread"\n'
    )
    settings = load_settings(
        path,
        {
            "KIOSKFLEET_DB_URL": "postgresql+psycopg://kf@db/kioskfleet",
            "KIOSKFLEET_MQTT_URL": "mqtts://broker.example:8883?version=5",
            "KIOSKFLEET_OFFLINE_ALERT_AFTER": "300",
            "KIOSKFLEET_RETENTION_DAYS": "7",
            "KIOSKFLEET_BOOTSTRAP_TOKEN": TOKEN,
            # not a setting of the controller (the CLI tools' token): left alone
            "KIOSKFLEET_TOKEN": "x",
        },
    )
    assert settings.db_url == "postgresql+psycopg://kf@db/kioskfleet"
    assert (settings.broker.host, settings.broker.tls, settings.broker.version) == (
        "broker.example",
        True,
        "5",
    )
    assert settings.offline_alert_after == 300.0
    assert settings.retention_days == 7.0
    assert settings.host_port == ("0.0.0.0", 9000)  # from the file, no variable
    assert settings.writer == "thread"
    assert settings.bootstrap_token is not None
    assert settings.bootstrap_token.get_secret_value() == TOKEN
    assert TOKEN not in repr(settings)


def test_overrides_win_over_the_environment() -> None:
    settings = load_settings(
        None, {"KIOSKFLEET_LISTEN": "127.0.0.1:1"}, overrides={"listen": "127.0.0.1:2"}
    )
    assert settings.host_port == ("127.0.0.1", 2)


def test_settings_built_directly_read_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # the environment is the process's, not our code: setting it is no mock of ours
    monkeypatch.setenv("KIOSKFLEET_DB_URL", "sqlite:///from-env.db")
    assert Settings().db_url == "sqlite:///kioskfleet.db"
    assert load_settings().db_url == "sqlite:///from-env.db"


def test_settings_cross_a_process_boundary() -> None:
    settings = load_settings(None, {"KIOSKFLEET_BOOTSTRAP_TOKEN": TOKEN})
    copy = pickle.loads(pickle.dumps(settings))
    assert copy == settings
    assert copy.bootstrap_token is not None
    assert copy.bootstrap_token.get_secret_value() == TOKEN


@pytest.mark.parametrize(
    ("file", "env", "message"),
    [
        ("bogus = 1\n", {}, "controller.toml: bogus: unknown key (allowed: ack_interval, "),
        ("retention_days = 'x'\n", {}, "controller.toml: retention_days: must be a number"),
        ("writer = 'fork'\n", {}, "controller.toml: writer: must be one of 'process', 'thread'"),
        ("listen = 'nowhere'\n", {}, "controller.toml: listen: must be 'host:port'"),
        (
            "[alerts]\nafter = 1\n",
            {},
            "controller.toml: alerts.after: unknown key (allowed: device_offline",
        ),
        (
            "",
            {"KIOSKFLEET_OFFLINE_ALERT_AFTER": "soon"},
            "environment variable KIOSKFLEET_OFFLINE_ALERT_AFTER: offline_alert_after: must be",
        ),
        (
            "",
            {"KIOSKFLEET_MQTT_URL": "http://kf:s3cret@broker"},
            "KIOSKFLEET_MQTT_URL: mqtt_url: the URL must start with mqtt:// or mqtts://",
        ),
        ("", {"KIOSKFLEET_BOOTSTRAP_TOKEN": "s3cret"}, "bootstrap_token: must be 16 to 512"),
        ("bootstrap_token = 's3cret s3cret s3cret'\n", {}, "controller.toml: bootstrap_token"),
        ("", {"KIOSKFLEET_TUNE_GC": "maybe"}, "KIOSKFLEET_TUNE_GC: tune_gc: must be true or false"),
    ],
)
def test_bad_settings_are_one_line(
    tmp_path: Path, file: str, env: dict[str, str], message: str
) -> None:
    path = tmp_path / "controller.toml"
    path.write_text(file)
    with pytest.raises(SettingsError) as caught:
        load_settings(path, env)
    text = str(caught.value)
    assert message in text
    assert "\n" not in text
    assert "s3cret" not in text  # neither a token nor a URL's password is echoed
