"""The import layers of PRODUCT.md: imports point down; agent and controller never meet."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "kioskfleet"

# package → kioskfleet packages it must never import
FORBIDDEN: dict[str, set[str]] = {
    "protocol": {"drivers", "agent", "controller", "fleetsim", "firmware_profiles", "cli", "demo"},
    "firmware_profiles": {"drivers", "agent", "controller", "fleetsim", "cli", "demo"},
    "drivers": {"agent", "controller", "fleetsim", "cli", "demo"},
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


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_down(package: str) -> None:
    offenders = [
        f"{path.relative_to(PKG)} imports kioskfleet.{target}"
        for path in sorted((PKG / package).rglob("*.py"))
        for target in _imports(path) & FORBIDDEN[package]
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


def test_agent_does_not_load_the_controller_stack() -> None:
    """The agent (local device service included: FastAPI and uvicorn are allowed since the
    service runs on them) never loads the controller's database, metrics or broker stack."""
    import subprocess
    import sys

    code = (
        "import sys, kioskfleet.cli, kioskfleet.agent.service, kioskfleet.fleetsim,"
        " kioskfleet.agent.localservice;"
        "assert 'fastapi' in sys.modules and 'uvicorn' in sys.modules;"
        "heavy = [m for m in ('sqlalchemy', 'sqlmodel', 'alembic', 'psycopg',"
        " 'prometheus_client', 'amqtt', 'kioskfleet.controller') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
