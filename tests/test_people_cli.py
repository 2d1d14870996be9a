"""``kioskfleet accounts``: a deployment's first admin, straight in the database."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from kioskfleet.cli import main
from kioskfleet.controller import people
from kioskfleet.controller.app import create_app
from kioskfleet.controller.config import Settings
from kioskfleet.controller.db import make_engine
from kioskfleet.controller.service import Controller
from tests.test_people import bearer, call


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, object, str]:
    code = main(["accounts", *args])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def test_a_first_admin_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db_url = f"sqlite:///{tmp_path / 'c.db'}"
    monkeypatch.setenv("KIOSKFLEET_DB_URL", db_url)
    code, made, _ = run(capsys, "create", "first.admin", "--role", "admin")
    assert code == 0 and isinstance(made, dict)
    assert (made["name"], made["role"], made["districts"]) == ("first.admin", "admin", [])
    with make_engine(db_url).connect() as conn:
        assert people.check_password(conn=conn, name="first.admin", password=made["password"])
    # a password from stdin is not printed
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough secret\n"))
    code, tech, _ = run(
        capsys, "create", "tech.binhu", "--role", "technician", "--district", "Binhu",
        "--password-stdin",
    )  # fmt: skip
    assert code == 0 and tech == {
        "name": "tech.binhu",
        "role": "technician",
        "districts": ["Binhu"],
    }
    code, token, _ = run(capsys, "token", "first.admin", "--ttl", "600")
    assert code == 0 and isinstance(token, dict)
    # the token works on the controller of that database
    controller = Controller(Settings(db_url=db_url))
    app = create_app(controller.settings, controller)
    me = call(app, "GET", "/api/me", headers=bearer(token["token"]))
    assert me.json()["name"] == "first.admin" and "admin" in me.json()["roles"]
    controller.engine.dispose()
    code, listed, _ = run(capsys, "list")
    assert code == 0 and isinstance(listed, dict)
    assert [(a["name"], a["has_password"]) for a in listed["items"]] == [
        ("first.admin", True),
        ("tech.binhu", True),
    ]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["create", "a", "--role", "root"], 2, "--role must be one of"),
        (["create", "a", "--role", "technician"], 1, "needs at least one district"),
        (["create", "controller", "--role", "admin"], 1, "reserved"),
        (["token", "nobody"], 1, "no account 'nobody'"),
        (["token", "a", "--ttl", "0"], 1, "more than 0"),
    ],
)
def test_refusals_are_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    code: int,
    message: str,
) -> None:
    monkeypatch.setenv("KIOSKFLEET_DB_URL", f"sqlite:///{tmp_path / 'c.db'}")
    assert run(capsys, "create", "a", "--role", "operator")[0] == 0
    got, out, err = run(capsys, *args)
    assert (got, out) == (code, None)
    assert err.startswith("kioskfleet accounts: ") and message in err and err.count("\n") == 1
