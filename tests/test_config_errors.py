"""Every configuration error is one line on stderr and exit code 2, never a traceback
(CONTRACT §2): the real command line, in a subprocess, over a table of broken inputs.

Each case fails before anything heavy is imported or started, so the table stays cheap.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
# one Python process per case, tens of seconds for the table: make test runs it, make unit
# does not
pytestmark = [pytest.mark.slow]
# Should a broken input ever be accepted, what starts must touch nothing: no broker listens
# on the discard port, the local service is off, state stays in the test's folder.
GOOD_AGENT = """\
station = "wx-binhu-sub-03"
district = "Binhu"
site = "Taihu Square Metro Station"
site_type = "subway_station"
profile = "estation-gen2"
broker = "mqtt://127.0.0.1:9"
state_dir = "state"
local_service = false
"""
#: for the controller and the demo, likewise (the cases override these where they test them)
HARMLESS_ENV = {"KIOSKFLEET_MQTT_URL": "mqtt://127.0.0.1:9", "KIOSKFLEET_LISTEN": "127.0.0.1:9"}
HARMLESS_DEMO = ("--stations", "1", "--duration", "1", "--broker", "mqtt://127.0.0.1:9")


@dataclass(frozen=True)
class Case:
    """One broken input and what its one line must say."""

    id: str
    command: str  # agent | controller | demo
    file: str | None = None  # the TOML file's text (None: no --config)
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    #: every fragment must be in the line (``{file}`` stands for the file's path)
    says: tuple[str, ...] = ()


def agent(id: str, text: str, *says: str) -> Case:
    return Case(id, "agent", text, says=("{file}", *says))


def controller(id: str, text: str, *says: str, env: dict[str, str] | None = None) -> Case:
    return Case(id, "controller", text, env=env or {}, says=says or ("{file}",))


def missing_file(command: str) -> Case:
    return Case(
        f"{command} missing file",
        command,
        None,
        args=("--config", "{missing}"),
        says=("{missing}", "cannot read: No such file"),
    )


CASES = [
    # -- kioskfleet agent --config
    agent(
        "agent unknown key",
        GOOD_AGENT + "telemetry_intervall = 5\n",
        "telemetry_intervall: unknown key (allowed: ",
    ),
    agent(
        "agent wrong type",
        GOOD_AGENT + 'telemetry_interval = "fast"\n',
        "telemetry_interval: must be a number from 0.1 to 86400 (got 'fast')",
    ),
    agent(
        "agent bad value",
        GOOD_AGENT + "telemetry_interval = 0\n",
        "telemetry_interval: must be a number from 0.1",
    ),
    agent(
        "agent bad site type",
        GOOD_AGENT.replace("subway_station", "mall"),
        "site_type: must be one of 'government_service_center'",
    ),
    agent("agent bad toml", GOOD_AGENT + "keepalive = \n", "not valid TOML"),
    agent(
        "agent bad window",
        GOOD_AGENT + 'maintenance_window = "1-5"\n',
        "maintenance_window: must be 'HH:MM-HH:MM'",
    ),
    agent(
        "agent window wraps",
        GOOD_AGENT + 'maintenance_window = "25:00-01:00"\n',
        "maintenance_window: must be",
    ),
    agent(
        "agent bad station id",
        GOOD_AGENT.replace("wx-binhu-sub-03", "WX 03"),
        "station: must be a station id",
    ),
    agent(
        "agent reserved station id",
        GOOD_AGENT.replace("wx-binhu-sub-03", "controller"),
        "station: must be a station id",
    ),
    agent(
        "agent missing key",
        GOOD_AGENT.replace('broker = "mqtt://127.0.0.1:9"\n', ""),
        "broker: missing (required: an mqtt:// or mqtts:// URL)",
    ),
    agent(
        "agent bad broker",
        GOOD_AGENT.replace("mqtt://127", "http://127"),
        "broker: the URL must start with mqtt://",
    ),
    agent(
        "agent bad driver",
        GOOD_AGENT + '[devices.printer]\ndriver = "zpl"\n',
        "devices.printer.driver: must be one of 'escpos'",
    ),
    agent(
        "agent bad baudrate",
        GOOD_AGENT + '[devices.printer]\nbaudrate = "fast"\n',
        "devices.printer.baudrate: must be a whole number",
    ),
    agent(
        "agent bad slot",
        GOOD_AGENT + '[devices.scanner]\ndriver = "escpos"\nport = "x"\n',
        "devices.scanner: must be a slot name",
    ),
    agent(
        "agent bad local service",
        GOOD_AGENT.replace("local_service = false", "local_service = true"),
        "local_service: must be 'host:port'",
    ),
    missing_file("agent"),
    # -- kioskfleet controller [--config]
    controller(
        "controller unknown key",
        "retention_dayz = 3\n",
        "{file}",
        "retention_dayz: unknown key (allowed: ",
    ),
    controller(
        "controller wrong type",
        'batch_size = "many"\n',
        "{file}",
        "batch_size: must be a whole number from 1",
    ),
    controller(
        "controller bad value",
        'writer = "fork"\n',
        "{file}",
        "writer: must be one of 'process', 'thread'",
    ),
    controller("controller bad toml", "listen = [\n", "{file}", "not valid TOML"),
    missing_file("controller"),
    Case(
        "controller bad env number",
        "controller",
        env={"KIOSKFLEET_OFFLINE_ALERT_AFTER": "soon"},
        says=("KIOSKFLEET_OFFLINE_ALERT_AFTER", "offline_alert_after: must be a number", "'soon'"),
    ),
    controller(
        "controller env wins and is wrong",
        "retention_days = 3\n",
        "KIOSKFLEET_RETENTION_DAYS",
        "retention_days: must be a number greater than 0",
        env={"KIOSKFLEET_RETENTION_DAYS": "-1"},
    ),
    Case(
        "controller bad env url",
        "controller",
        env={"KIOSKFLEET_MQTT_URL": "tcp://kf:s3cret@broker:1883"},
        says=("KIOSKFLEET_MQTT_URL", "mqtt_url: the URL must start with mqtt://"),
    ),
    Case(
        "controller short bootstrap token",
        "controller",
        env={"KIOSKFLEET_BOOTSTRAP_TOKEN": "s3cret"},
        says=("KIOSKFLEET_BOOTSTRAP_TOKEN", "bootstrap_token: must be 16 to 512"),
    ),
    Case(
        "controller bad listen",
        "controller",
        env={"KIOSKFLEET_LISTEN": "127.0.0.1:http"},
        says=("KIOSKFLEET_LISTEN", "listen: must be 'host:port'"),
    ),
    # -- kioskfleet demo
    Case(
        "demo bad broker",
        "demo",
        args=("--broker", "http://x"),
        says=("--broker", "mqtt_url: the URL"),
    ),
    Case("demo bad port", "demo", args=("--port", "70000"), says=("--port", "listen: must be")),
    # -- the [tls] section, in both
    agent(
        "agent tls without mqtts",
        GOOD_AGENT + "[tls]\n",  # the system's CAs
        "needs an mqtts:// broker URL",
    ),
    agent(
        "agent tls missing ca file",
        GOOD_AGENT.replace("mqtt://127.0.0.1:9", "mqtts://127.0.0.1:9")
        + '[tls]\nca = "/nonexistent/ca.pem"\n',
        "tls",
        "cannot load the CA file /nonexistent/ca.pem",
    ),
    agent(
        "agent tls key without cert",
        GOOD_AGENT.replace("mqtt://127.0.0.1:9", "mqtts://127.0.0.1:9")
        + '[tls]\nkey = "/nonexistent/key.pem"\n',
        "tls",
        "key needs its certificate",
    ),
    agent(
        "agent tls unknown key",
        GOOD_AGENT.replace("mqtt://127.0.0.1:9", "mqtts://127.0.0.1:9")
        + '[tls]\ncafile = "/nonexistent/ca.pem"\n',
        "tls.cafile: unknown key",
    ),
    controller(
        "controller tls missing cert file",
        'mqtt_url = "mqtts://127.0.0.1:9"\n[tls]\ncert = "/nonexistent/c.pem"\n',
        "{file}",
        "cannot load the client certificate /nonexistent/c.pem",
    ),
    controller(
        "controller tls without mqtts",
        "[tls]\n",
        "{file}",
        "needs an mqtts:// mqtt_url",
        env={"KIOSKFLEET_MQTT_URL": "mqtt://127.0.0.1:9"},
    ),
    Case(
        "controller tls env missing ca",
        "controller",
        env={"KIOSKFLEET_MQTT_URL": "mqtts://127.0.0.1:9", "KIOSKFLEET_TLS__CA": "/no/ca.pem"},
        says=("KIOSKFLEET_TLS", "cannot load the CA file /no/ca.pem"),
    ),
    Case(
        "demo bad env",
        "demo",
        env={"KIOSKFLEET_WRITER": "fork"},
        says=("KIOSKFLEET_WRITER", "writer: must be one of"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_config_error_is_one_line_and_exit_2(case: Case, tmp_path: Path) -> None:
    path = tmp_path / f"{case.command}.toml"
    missing = tmp_path / "no-such.toml"
    args = [a.format(missing=missing) for a in case.args]
    if case.file is not None:
        path.write_text(case.file, encoding="utf-8")
        args = ["--config", str(path), *args]
    if case.command == "demo":
        args = [*HARMLESS_DEMO, *args]  # argparse: the case's flags come last and win
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIOSKFLEET_")}
    # this checkout's code, whatever is installed (the subprocess runs in another folder)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])])
    if case.command == "controller":
        env.update(HARMLESS_ENV)
    run = subprocess.run(
        [sys.executable, "-m", "kioskfleet.cli", case.command, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**env, **case.env},
        cwd=tmp_path,  # nothing may be created next to the tests (a SQLite file, say)
    )
    lines = run.stderr.splitlines()
    assert run.returncode == 2, run.stderr
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert run.stdout == ""
    line = lines[0]
    assert line.startswith(f"kioskfleet {case.command}: "), line
    for fragment in case.says:
        assert fragment.format(file=path, missing=missing) in line, line
    assert "s3cret" not in line  # neither a token nor a URL's password is echoed
    assert list(tmp_path.iterdir()) == ([path] if case.file is not None else [])
