"""Who may do what (CONTRACT §6): roles, a technician's districts, API tokens, accounts, the
anonymous role, the bootstrap token. Through the whole ASGI app, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from kioskfleet.controller import people
from kioskfleet.controller.api.deps import api_routes
from kioskfleet.controller.app import create_app
from kioskfleet.controller.config import Settings
from kioskfleet.controller.db import migrate
from kioskfleet.controller.models import Account, ApiToken, Audit
from kioskfleet.controller.service import Controller
from kioskfleet.controller.store import FleetStore
from tests.conftest import AUTH, TEST_TOKEN
from tests.test_alert_api import make_alert, put
from tests.test_api import _birth, fill

ACCOUNT = Account.__table__  # type: ignore[attr-defined]
TOKEN = ApiToken.__table__  # type: ignore[attr-defined]
AUDIT = Audit.__table__  # type: ignore[attr-defined]

XINWU_STATION = "wx-xinwu-gov-01"
#: the people of these tests: name → (role, districts)
PEOPLE: dict[str, tuple[people.Role, list[str]]] = {
    "admin.wang": ("admin", []),
    "operator.li": ("operator", []),
    "rm.zhao": ("release_manager", []),
    "tech.binhu": ("technician", ["Binhu"]),
    "tech.xinwu": ("technician", ["Xinwu"]),
}
PASSWORD = "correct horse battery"


def make_app(db_url: str, **settings: Any) -> tuple[FastAPI, Controller]:
    controller = Controller(Settings(bootstrap_token=TEST_TOKEN, db_url=db_url, **settings))
    migrate(controller.engine)  # never started: no broker
    return create_app(controller.settings, controller), controller


def call(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request through the whole ASGI app, with no credentials unless given."""

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://controller") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(run())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def world(db_url: str) -> Iterator[tuple[FastAPI, Controller, dict[str, dict[str, str]]]]:
    """The fleet of tests.test_api plus a Xinwu station, an open alert in Binhu and one in
    Xinwu, and one account per role with a token each (made through the API)."""
    app, controller = make_app(db_url)
    fill(controller.engine)
    FleetStore(controller.engine).apply([_birth(XINWU_STATION, "Xinwu")], now=time.time())
    put(controller.engine, make_alert("binhu-1", device="coin_acceptor"))
    put(
        controller.engine,
        make_alert("xinwu-1", district="Xinwu", site="Xinwu Center", station=XINWU_STATION),
    )
    headers: dict[str, dict[str, str]] = {}
    for name, (role, districts) in PEOPLE.items():
        body: dict[str, Any] = {"name": name, "role": role, "districts": districts}
        if name == "tech.binhu":  # argon2 is slow on purpose: one password is enough here
            body["password"] = PASSWORD
        assert call(app, "POST", "/api/accounts", json=body, headers=AUTH).status_code == 201
        made = call(app, "POST", "/api/tokens", json={"account": name}, headers=AUTH)
        assert made.status_code == 201
        headers[name] = bearer(made.json()["token"])
    yield app, controller, headers
    controller.engine.dispose()


def _path(path: str) -> str:
    """A route's path with a value for each parameter."""
    return (
        path.replace("{path:path}", "x")
        .replace("{station_id}", "wx-binhu-gov-01")
        .replace("{alert_id}", "binhu-1")
        .replace("{", "")
        .replace("}", "")
    )


def _writes(app: FastAPI) -> list[tuple[str, str]]:
    """Every write route but the kiosks' own enrolment (open: they carry a one-time token)
    and signing in and out (open: docs/login.md)."""
    return sorted(
        (method, route.path)
        for route in api_routes(app)
        for method in route.methods
        if method in {"POST", "PUT", "PATCH", "DELETE"}
        and not route.path.startswith(("/api/enrol", "/login", "/logout"))
    )


# -- who is asking -----------------------------------------------------------------------------


@pytest.mark.parametrize("anonymous_role", [None, "operator"])
def test_every_write_without_credentials_is_401(tmp_path: Any, anonymous_role: Any) -> None:
    app, controller = make_app(f"sqlite:///{tmp_path / 'c.db'}", anonymous_role=anonymous_role)
    fill(controller.engine)
    writes = _writes(app)
    assert len(writes) >= 19  # every write of alerts, commands, releases, rollouts, people
    for method, path in writes:
        for headers in ({}, bearer("not-a-token"), {"Authorization": "Basic eDp5"}):
            answer = call(app, method, _path(path), json={}, headers=headers)
            assert answer.status_code == 401, (method, path, headers, answer.text)
            assert answer.headers["www-authenticate"] == "Bearer"
    with controller.engine.connect() as conn:
        assert conn.execute(select(AUDIT)).all() == []


@pytest.mark.parametrize(
    ("anonymous_role", "status"),
    [(None, 401), ("operator", 200)],
)
def test_anonymous_reads_only_where_the_deployment_grants_it(
    tmp_path: Any, anonymous_role: Any, status: int
) -> None:
    app, controller = make_app(f"sqlite:///{tmp_path / 'c.db'}", anonymous_role=anonymous_role)
    fill(controller.engine)
    for path in ("/api/stations", "/api/fleet/summary", "/api/alerts", "/", "/alerts"):
        assert call(app, "GET", path).status_code == status, path
    # the people's matters are never anonymous
    assert call(app, "GET", "/api/accounts").status_code == 401
    assert call(app, "GET", "/api/tokens").status_code == 401
    assert call(app, "GET", "/api/audit").status_code == 401
    # and a wrong token is refused, never read as anonymous
    assert call(app, "GET", "/api/stations", headers=bearer("wrong")).status_code == 401


def test_anonymous_role_allows_operator_only() -> None:
    with pytest.raises(ValueError, match="anonymous_role"):
        Settings(anonymous_role="admin")  # type: ignore[arg-type]


def test_healthz_tuf_and_metrics_are_open_unless_a_scrape_token_is_set(tmp_path: Any) -> None:
    app, _ = make_app(f"sqlite:///{tmp_path / 'a.db'}")
    assert call(app, "GET", "/metrics").status_code == 200
    assert call(app, "GET", "/tuf/metadata/1.root.json").status_code == 404  # no repository
    app, _ = make_app(f"sqlite:///{tmp_path / 'b.db'}", metrics_token="scrape-0123456789abcdef")
    assert call(app, "GET", "/metrics").status_code == 401
    assert call(app, "GET", "/metrics", headers=AUTH).status_code == 401
    scraped = call(app, "GET", "/metrics", headers=bearer("scrape-0123456789abcdef"))
    assert scraped.status_code == 200 and "kioskfleet" in scraped.text


# -- roles and districts -----------------------------------------------------------------------

ACK = ("POST", "/api/alerts/{}/ack")


@pytest.mark.parametrize(
    ("person", "alert", "status"),
    [
        ("tech.binhu", "xinwu-1", 403),
        ("tech.binhu", "binhu-1", 200),
        ("tech.xinwu", "xinwu-1", 200),
        ("tech.xinwu", "binhu-1", 403),
        ("operator.li", "binhu-1", 403),
        ("rm.zhao", "binhu-1", 403),
        ("admin.wang", "xinwu-1", 200),
    ],
)
def test_who_may_acknowledge_which_alert(
    world: tuple[FastAPI, Controller, dict[str, dict[str, str]]],
    person: str,
    alert: str,
    status: int,
) -> None:
    app, controller, headers = world
    answer = call(
        app,
        "POST",
        f"/api/alerts/{alert}/ack",
        json={"by": "someone else"},
        headers=headers[person],
    )
    assert answer.status_code == status, answer.text
    state = call(app, "GET", f"/api/alerts/{alert}", headers=headers["operator.li"]).json()
    if status == 200:
        # the person the token belongs to acted; the body's `by` is ignored
        assert state["acknowledged_by"] == person
        with controller.engine.connect() as conn:
            (audit,) = conn.execute(select(AUDIT).where(AUDIT.c.action == "alert.ack")).all()
        assert (audit.actor, audit.target, audit.outcome) == (person, alert, "acknowledged")
    else:
        assert state["state"] == "open"


@pytest.mark.parametrize(
    ("person", "station", "status"),
    [
        ("operator.li", "wx-binhu-gov-01", 403),
        ("rm.zhao", "wx-binhu-gov-01", 403),
        ("tech.binhu", XINWU_STATION, 403),
        ("tech.binhu", "wx-liangxi-gov-01", 403),
        ("tech.binhu", "wx-binhu-gov-01", 201),
        ("tech.binhu", "wx-unknown-01", 404),
        ("admin.wang", XINWU_STATION, 201),
    ],
)
def test_who_may_send_a_command_where(
    world: tuple[FastAPI, Controller, dict[str, dict[str, str]]],
    person: str,
    station: str,
    status: int,
) -> None:
    app, _, headers = world
    answer = call(
        app,
        "POST",
        f"/api/stations/{station}/commands",
        json={"name": "print_test"},
        headers=headers[person],
    )
    assert answer.status_code == status, answer.text
    if status == 201:
        sent = call(
            app,
            "GET",
            f"/api/stations/{station}/commands/{answer.json()['id']}",
            headers=headers["operator.li"],
        )
        assert sent.json()["created_by"] == person


@pytest.mark.parametrize(
    ("matchers", "status"),
    [
        ([{"label": "district", "value": "Binhu"}], 201),
        ([{"label": "district", "value": "Binhu"}, {"label": "severity", "value": "info"}], 201),
        ([{"label": "station", "value": "wx-binhu-gov-02"}], 201),
        ([{"label": "district", "value": "Xinwu"}], 403),
        ([{"label": "district", "op": "!=", "value": "Xinwu"}], 403),
        ([{"label": "district", "op": "=~", "value": "Binhu"}], 403),
        ([{"label": "station", "value": XINWU_STATION}], 403),
        ([{"label": "station", "value": "wx-unknown-01"}], 403),
        ([{"label": "severity", "value": "critical"}], 403),
    ],
)
def test_a_technicians_silence_stays_in_their_districts(
    world: tuple[FastAPI, Controller, dict[str, dict[str, str]]],
    matchers: list[dict[str, str]],
    status: int,
) -> None:
    app, _, headers = world
    body = {"matchers": matchers, "reason": "works", "duration_s": 600}
    answer = call(app, "POST", "/api/silences", json=body, headers=headers["tech.binhu"])
    assert answer.status_code == status, answer.text
    if status == 201:
        assert answer.json()["author"] == "tech.binhu"
        ended = call(
            app, "DELETE", f"/api/silences/{answer.json()['id']}", headers=headers["tech.xinwu"]
        )
        assert ended.status_code == 403  # another district's technician cannot end it
    # an admin silences anything, and may end it; a technician of the district may not
    wide = call(app, "POST", "/api/silences", json=body, headers=headers["admin.wang"])
    assert wide.status_code == 201
    ended = call(app, "DELETE", f"/api/silences/{wide.json()['id']}", headers=headers["tech.binhu"])
    assert ended.status_code == (200 if status == 201 else 403)


def test_maintenance_in_a_technicians_own_districts_only(
    world: tuple[FastAPI, Controller, dict[str, dict[str, str]]],
) -> None:
    app, _, headers = world
    tech = headers["tech.binhu"]
    body = {"duration_s": 600}
    own = call(app, "POST", "/api/stations/wx-binhu-gov-01/maintenance", json=body, headers=tech)
    assert own.status_code == 201 and own.json()["by"] == "tech.binhu"
    other = call(app, "POST", f"/api/stations/{XINWU_STATION}/maintenance", json=body, headers=tech)
    assert other.status_code == 403
    started = call(
        app,
        "POST",
        f"/api/stations/{XINWU_STATION}/maintenance",
        json=body,
        headers=headers["tech.xinwu"],
    )
    assert started.status_code == 201
    ending = call(app, "DELETE", f"/api/stations/{XINWU_STATION}/maintenance", headers=tech)
    assert ending.status_code == 403
    ended = call(app, "DELETE", "/api/stations/wx-binhu-gov-01/maintenance", headers=tech)
    assert ended.status_code == 200


def test_release_work_needs_the_release_manager(
    world: tuple[FastAPI, Controller, dict[str, dict[str, str]]],
) -> None:
    app, _, headers = world
    body = {"release": "software-r1", "target": {}}
    for person, status in (
        ("operator.li", 403),
        ("tech.binhu", 403),
        ("rm.zhao", 404),  # allowed; this controller has no update repository
        ("admin.wang", 404),
    ):
        answer = call(app, "POST", "/api/rollouts", json=body, headers=headers[person])
        assert answer.status_code == status, (person, answer.text)
    # reading is for everyone
    for person in PEOPLE:
        assert call(app, "GET", "/api/alerts", headers=headers[person]).status_code == 200


# -- tokens ------------------------------------------------------------------------------------


def test_expired_revoked_and_unknown_tokens_are_401(
    world: tuple[FastAPI, Controller, dict[str, dict[str, str]]],
) -> None:
    app, controller, headers = world
    with controller.engine.begin() as conn:
        expired = people.issue_token(
            conn=conn, account="tech.binhu", ttl_s=60, actor="test", now=time.time() - 61
        )
    assert call(app, "GET", "/api/me", headers=bearer(expired.token)).status_code == 401
    # revoked by its owner: useless at once
    mine = call(app, "GET", "/api/tokens", headers=headers["tech.binhu"]).json()["items"]
    (current,) = [t for t in mine if t["id"] != expired.id]
    revoked = call(app, "DELETE", f"/api/tokens/{current['id']}", headers=headers["tech.binhu"])
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    answer = call(app, "GET", "/api/me", headers=headers["tech.binhu"])
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    for unknown in ("x" * 43, TEST_TOKEN + "x", ""):
        assert call(app, "GET", "/api/me", headers=bearer(unknown)).status_code == 401


def test_a_disabled_or_deleted_accounts_tokens_are_401(
    world: tuple[FastAPI, Controller, dict[str, dict[str, str]]],
) -> None:
    app, _, headers = world
    me = call(app, "GET", "/api/me", headers=headers["tech.binhu"])
    assert me.json() == {
        "name": "tech.binhu",
        "kind": "token",
        "roles": ["operator", "technician"],
        "districts": ["Binhu"],
    }
    off = call(app, "PATCH", "/api/accounts/tech.binhu", json={"disabled": True}, headers=AUTH)
    assert off.status_code == 200 and off.json()["disabled"] is True
    assert call(app, "GET", "/api/me", headers=headers["tech.binhu"]).status_code == 401
    on = call(app, "PATCH", "/api/accounts/tech.binhu", json={"disabled": False}, headers=AUTH)
    assert on.status_code == 200
    assert call(app, "GET", "/api/me", headers=headers["tech.binhu"]).status_code == 200
    assert call(app, "DELETE", "/api/accounts/tech.binhu", headers=AUTH).status_code == 204
    assert call(app, "GET", "/api/me", headers=headers["tech.binhu"]).status_code == 401
    # a new account of the same name does not inherit the old tokens
    body = {"name": "tech.binhu", "role": "technician", "districts": ["Binhu"]}
    assert call(app, "POST", "/api/accounts", json=body, headers=AUTH).status_code == 201
    assert call(app, "GET", "/api/me", headers=headers["tech.binhu"]).status_code == 401


def test_tokens_are_stored_as_sha256_only(
    world: tuple[FastAPI, Controller, dict[str, dict[str, str]]],
) -> None:
    app, controller, headers = world
    made = call(app, "POST", "/api/tokens", json={"ttl_s": 600}, headers=headers["rm.zhao"])
    assert made.status_code == 201
    token = made.json()["token"]
    assert len(token) >= 43  # 32 random bytes
    with controller.engine.connect() as conn:
        row = conn.execute(select(TOKEN).where(TOKEN.c.id == made.json()["id"])).one()
        everything = str(conn.execute(select(TOKEN)).all())
    assert row.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    assert token not in everything
    assert row.account == "rm.zhao" and row.created_by == "rm.zhao"
    assert row.expires_at - row.created_at == pytest.approx(600)
    # and no answer shows a digest
    listed = call(app, "GET", "/api/tokens", headers=AUTH)
    assert "token_sha256" not in listed.text and row.token_sha256 not in listed.text


def test_passwords_are_stored_as_argon2_and_checked(
    world: tuple[FastAPI, Controller, dict[str, dict[str, str]]],
) -> None:
    app, controller, _ = world
    with controller.engine.begin() as conn:
        stored = conn.execute(
            select(ACCOUNT.c.password_hash).where(ACCOUNT.c.name == "tech.binhu")
        ).scalar_one()
        assert stored.startswith("$argon2id$") and PASSWORD not in stored
        found = people.check_password(conn=conn, name="tech.binhu", password=PASSWORD)
        assert found == people.Principal(
            "tech.binhu", frozenset({"operator", "technician"}), frozenset({"Binhu"}), "account"
        )
        assert people.check_password(conn=conn, name="tech.binhu", password="wrong") is None
        assert people.check_password(conn=conn, name="nobody", password=PASSWORD) is None
        assert people.load_principal(conn=conn, name="rm.zhao") is not None
    answers = [
        call(app, "GET", "/api/accounts", headers=AUTH).text,
        call(app, "GET", "/api/accounts/tech.binhu", headers=AUTH).text,
    ]
    assert not any("argon2" in a or "password_hash" in a for a in answers)


def test_a_person_makes_tokens_for_themselves_an_admin_for_anyone(
    world: tuple[FastAPI, Controller, dict[str, dict[str, str]]],
) -> None:
    app, controller, headers = world
    op = headers["operator.li"]
    own = call(app, "POST", "/api/tokens", json={"account": "operator.li"}, headers=op)
    assert own.status_code == 201
    other = call(app, "POST", "/api/tokens", json={"account": "rm.zhao"}, headers=op)
    assert other.status_code == 403
    listed = call(app, "GET", "/api/tokens", headers=op).json()
    assert {t["account"] for t in listed["items"]} == {"operator.li"} and listed["total"] == 2
    assert call(app, "GET", "/api/tokens?account=rm.zhao", headers=op).status_code == 403
    everyone = call(app, "GET", "/api/tokens", headers=headers["admin.wang"]).json()
    assert everyone["total"] == len(PEOPLE) + 1
    # someone else's token: as if it did not exist; an admin revokes it
    theirs = next(t["id"] for t in everyone["items"] if t["account"] == "rm.zhao")
    assert call(app, "DELETE", f"/api/tokens/{theirs}", headers=op).status_code == 404
    assert call(app, "DELETE", f"/api/tokens/{theirs}", headers=AUTH).status_code == 200
    assert call(app, "GET", "/api/me", headers=headers["rm.zhao"]).status_code == 401
    # the bootstrap admin has no account of its own
    assert call(app, "POST", "/api/tokens", json={}, headers=AUTH).status_code == 422
    with controller.engine.connect() as conn:
        actions = conn.execute(select(AUDIT.c.actor, AUDIT.c.action, AUDIT.c.outcome)).all()
    assert ("operator.li", "token.create", "created") in actions
    assert ("bootstrap", "token.revoke", "revoked") in actions


# -- accounts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"role": "operator"}, "name"),
        ({"name": "", "role": "operator"}, "name"),
        ({"name": "a b", "role": "operator"}, "name"),
        ({"name": "x" * 65, "role": "operator"}, "name"),
        ({"name": "controller", "role": "operator"}, "name"),
        ({"name": "Bootstrap", "role": "admin"}, "name"),
        ({"name": "ok", "role": "root"}, "role"),
        ({"name": "ok"}, "role"),
        ({"name": "ok", "role": "technician"}, "districts"),
        ({"name": "ok", "role": "technician", "districts": [""]}, "districts"),
        ({"name": "ok", "role": "operator", "districts": ["Binhu"]}, "districts"),
        ({"name": "ok", "role": "operator", "password": "short"}, "password"),
        ({"name": "ok", "role": "operator", "password": "x" * 257}, "password"),
        ({"name": "ok", "role": "operator", "colour": "red"}, "colour"),
    ],
)
def test_bad_accounts_are_422_naming_the_field(
    world: tuple[FastAPI, Controller, dict[str, dict[str, str]]], body: Any, loc: str
) -> None:
    app, _, _ = world
    answer = call(app, "POST", "/api/accounts", json=body, headers=AUTH)
    assert answer.status_code == 422, answer.text
    assert any(loc in e["loc"] and e["msg"] for e in answer.json()["detail"]), answer.text


def test_accounts_are_for_admins_and_audited(
    world: tuple[FastAPI, Controller, dict[str, dict[str, str]]],
) -> None:
    app, controller, headers = world
    body = {"name": "tech.new", "role": "technician", "districts": ["Xishan"]}
    for person in ("operator.li", "tech.binhu", "rm.zhao"):
        assert (
            call(app, "POST", "/api/accounts", json=body, headers=headers[person]).status_code
            == 403
        )
        assert call(app, "GET", "/api/accounts", headers=headers[person]).status_code == 403
    made = call(app, "POST", "/api/accounts", json=body, headers=headers["admin.wang"])
    assert made.status_code == 201 and made.json()["has_password"] is False
    again = call(app, "POST", "/api/accounts", json=body, headers=headers["admin.wang"])
    assert again.status_code == 409
    # leaving technician drops the districts
    moved = call(
        app, "PATCH", "/api/accounts/tech.new", json={"role": "operator"}, headers=AUTH
    ).json()
    assert (moved["role"], moved["districts"]) == ("operator", [])
    assert call(app, "PATCH", "/api/accounts/nobody", json={}, headers=AUTH).status_code == 404
    bad = call(app, "PATCH", "/api/accounts/tech.new", json={"role": None}, headers=AUTH)
    assert bad.status_code == 422
    listed = call(app, "GET", "/api/accounts", headers=AUTH).json()
    assert listed["total"] == len(PEOPLE) + 1
    assert [a["name"] for a in listed["items"]] == sorted([*PEOPLE, "tech.new"])
    with controller.engine.connect() as conn:
        rows = conn.execute(
            select(AUDIT.c.actor, AUDIT.c.action, AUDIT.c.target).where(
                AUDIT.c.target == "tech.new"
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("admin.wang", "account.create", "tech.new"),
        ("bootstrap", "account.update", "tech.new"),
    ]
