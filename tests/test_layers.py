"""The import layers of PRODUCT.md: imports point down; agent and controller never meet."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "kioskfleet"

# package (or module) → kioskfleet packages and modules it must never import
FORBIDDEN: dict[str, set[str]] = {
    "protocol": {
        "updates",
        "drivers",
        "agent",
        "controller",
        "fleetsim",
        "firmware_profiles",
        "mqttclient",
        "cli",
        "demo",
    },
    "firmware_profiles": {
        "drivers",
        "agent",
        "controller",
        "fleetsim",
        "mqttclient",
        "cli",
        "demo",
    },
    "drivers": {"agent", "controller", "fleetsim", "mqttclient", "updates", "cli", "demo"},
    # builds the paho clients of both sides: above the protocol, below agent and controller
    "mqttclient": {
        "drivers",
        "firmware_profiles",
        "agent",
        "controller",
        "fleetsim",
        "cli",
        "demo",
    },
    # signed updates, the part both sides share (target names, the TUF client)
    "updates": {
        "drivers",
        "firmware_profiles",
        "agent",
        "controller",
        "fleetsim",
        "mqttclient",
        "cli",
        "demo",
    },
    "agent": {"controller", "fleetsim", "cli", "demo"},
    "controller": {"agent", "drivers", "fleetsim", "cli", "demo"},
    "fleetsim": {"controller", "cli", "demo"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {
        name.split(".")[1]
        for name in found
        if name.startswith("kioskfleet.") and name.count(".") >= 1
    }


def _sources(package: str) -> list[Path]:
    module = PKG / f"{package}.py"
    paths = [module] if module.is_file() else sorted((PKG / package).rglob("*.py"))
    assert paths, f"kioskfleet.{package} not found"
    return paths


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_down(package: str) -> None:
    offenders = [
        f"{path.relative_to(PKG)} imports kioskfleet.{target}"
        for path in _sources(package)
        for target in _imports(path) & FORBIDDEN[package]
    ]
    assert not offenders, "\n".join(offenders)


# what only kioskfleet.mqttclient may do with paho: build clients and set up their connection
_PAHO_SETUP = {
    "tls_set",
    "tls_set_context",
    "tls_insecure_set",
    "username_pw_set",
    "will_set",
    "reconnect_delay_set",
    "max_inflight_messages_set",
    "connect_async",
}


def _paho_client_builds(path: Path) -> list[str]:
    """Where ``path`` builds a paho client or sets one up: calls of ``paho.mqtt.client.Client``
    under any import spelling, and of paho's connection set-up methods."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules = {"paho.mqtt.client"}  # dotted names bound to paho.mqtt.client
    classes: set[str] = set()  # names bound to paho.mqtt.client.Client
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "paho.mqtt.client" and alias.asname:
                    modules.add(alias.asname)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if node.module == "paho.mqtt" and alias.name == "client":
                    modules.add(alias.asname or "client")
                if node.module == "paho.mqtt.client" and alias.name == "Client":
                    classes.add(alias.asname or "Client")
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in classes:
            found.append(f"{path.relative_to(PKG)}:{node.lineno} {func.id}(")
        elif isinstance(func, ast.Attribute):
            owner = ast.unparse(func.value)
            if (func.attr == "Client" and owner in modules) or func.attr in _PAHO_SETUP:
                found.append(f"{path.relative_to(PKG)}:{node.lineno} {owner}.{func.attr}(")
    return found


def test_only_mqttclient_builds_paho_clients() -> None:
    factory = PKG / "mqttclient.py"
    # the check sees the one place that does build them, or it could not see any other
    assert any("Client(" in hit for hit in _paho_client_builds(factory))
    offenders = [
        hit
        for path in sorted(PKG.rglob("*.py"))
        if path != factory
        for hit in _paho_client_builds(path)
    ]
    assert not offenders, "\n".join(offenders)


def test_protocol_does_no_io() -> None:
    io_modules = {"socket", "sqlite3", "serial", "paho", "time", "os", "subprocess", "asyncio"}
    for path in (PKG / "protocol").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            assert not set(names) & io_modules, f"{path.name} imports {names}"


# what the alert rules may import: they decide, the writer and the API do the I/O (STYLE 1)
_ALERTS_MAY_IMPORT = {
    "__future__",
    "bisect",
    "collections",
    "dataclasses",
    "functools",
    "itertools",
    "re",
    "typing",
    "pydantic",
    "kioskfleet.protocol",
    "kioskfleet.controller.alerts",
}


def test_the_alert_rules_do_no_io() -> None:
    paths = sorted((PKG / "controller" / "alerts").rglob("*.py"))
    assert len(paths) > 5
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert any(
                    name == allowed or name.startswith(allowed + ".")
                    for allowed in _ALERTS_MAY_IMPORT
                ), f"{path.name} imports {name}"


def test_agent_does_not_load_the_controller_stack() -> None:
    """The agent (local device service included: FastAPI and uvicorn are allowed since the
    service runs on them) never loads the controller's database, metrics or broker stack."""
    import subprocess
    import sys

    code = (
        "import sys, kioskfleet.cli, kioskfleet.agent.service, kioskfleet.fleetsim,"
        " kioskfleet.agent.localservice, kioskfleet.updates.client, kioskfleet.updates.tufcli;"
        "assert 'fastapi' in sys.modules and 'uvicorn' in sys.modules;"
        "heavy = [m for m in ('sqlalchemy', 'sqlmodel', 'alembic', 'psycopg',"
        " 'prometheus_client', 'amqtt', 'kioskfleet.controller') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
