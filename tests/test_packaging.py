"""A kiosk installs `pip install kioskfleet`: agent, drivers, local service, update client —
and none of the controller's stack (pyproject's `controller` and `demo` extras)."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: what only `kioskfleet[controller]` / `kioskfleet[demo]` bring
EXTRAS_ONLY = (
    "pydantic_settings",
    "sqlalchemy",
    "sqlmodel",
    "alembic",
    "psycopg",
    "prometheus_client",
    "amqtt",
)


def _without_extras(body: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh interpreter where the extras' packages cannot be imported
    (``sys.modules[name] = None`` makes both ``import`` and ``find_spec`` see them missing)."""
    code = f"import sys\nfor name in {EXTRAS_ONLY!r}:\n    sys.modules[name] = None\n" + (
        textwrap.dedent(body)
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )


def test_the_kiosk_side_imports_without_the_controller_stack() -> None:
    out = _without_extras(
        """
        import kioskfleet.agent.service, kioskfleet.fleetsim.fleet, kioskfleet.drivers.registry
        import kioskfleet.agent.config, kioskfleet.mqttclient
        print("ok")
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("command", ["controller", "demo"])
def test_controller_commands_name_the_extra_they_need(command: str) -> None:
    out = _without_extras(
        """
        from kioskfleet.cli import main
        sys.exit(main(sys.argv[1:]))
        """,
        command,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert f"pip install 'kioskfleet[{command}]'" in lines[0]
    assert "Traceback" not in out.stderr


def test_an_agent_config_error_needs_no_controller_stack(tmp_path: Path) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text('station = "wx-binhu-01"\ntelemetry_interval = "fast"\n', encoding="utf-8")
    out = _without_extras(
        """
        from kioskfleet.cli import main
        sys.exit(main(sys.argv[1:]))
        """,
        "agent",
        "--config",
        str(bad),
    )
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr


def test_an_agent_whose_local_service_port_is_taken_says_so_in_one_line(tmp_path: Path) -> None:
    """Not a traceback: the operator reads one line and exit code 1 (a runtime refusal)."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    config = tmp_path / "agent.toml"
    config.write_text(
        'station = "wx-binhu-sub-09"\ndistrict = "Binhu"\nsite = "Taihu Square Metro Station"\n'
        'site_type = "subway_station"\nprofile = "estation-gen2"\n'
        'broker = "mqtt://127.0.0.1:9"\nuse_profile_devices = false\n'  # nothing listens on 9
        f'state_dir = "{tmp_path / "state"}"\nlocal_service = "127.0.0.1:{port}"\n',
        encoding="utf-8",
    )
    try:
        out = subprocess.run(
            [sys.executable, "-m", "kioskfleet.cli", "agent", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        taken.close()
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    line = [x for x in out.stderr.splitlines() if x.startswith("kioskfleet agent: ")]
    assert len(line) == 1 and f"127.0.0.1:{port}" in line[0], out.stderr
