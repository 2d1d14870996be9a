"""Console sign-in: password logins through the form, the session cookie and its flags, CSRF
on every state-changing call the cookie authenticates, logout, expiry (idle and absolute),
disabled accounts, the audit of logins, and the people pages (tests/test_oidc.py: logins
through an identity provider; tests/e2e/test_login.py: in Chromium)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from kioskfleet.controller import people, websession
from kioskfleet.controller.api.routes.login import COOKIE, CSRF_HEADER
from kioskfleet.controller.app import create_app
from kioskfleet.controller.config import Settings, WebSettings
from kioskfleet.controller.db import migrate
from kioskfleet.controller.models import Audit, WebSession
from kioskfleet.controller.service import Controller
from tests.test_alert_api import make_alert, put
from tests.test_api import fill

BOOTSTRAP = "login-test-bootstrap-token"
PASSWORD = "correct horse battery"
ACCOUNTS = {
    "li.binhu": ("technician", ["Binhu"]),
    "wang.ops": ("operator", []),
    "zhao.admin": ("admin", []),
}


def make_app(tmp_path: Path, **settings: Any) -> FastAPI:
    values: dict[str, Any] = {
        "db_url": f"sqlite:///{tmp_path / 'controller.db'}",
        "anonymous_role": "operator",
        "bootstrap_token": BOOTSTRAP,
        **settings,
    }
    config = Settings(**values)
    controller = Controller(config)  # never started: no broker, no ingest
    migrate(controller.engine)
    fill(controller.engine)
    with controller.engine.begin() as conn:
        for name, (role, districts) in ACCOUNTS.items():
            people.create_account(
                conn=conn,
                name=name,
                role=role,  # type: ignore[arg-type]
                districts=districts,
                password=PASSWORD,
                actor="test",
                now=time.time(),
            )
    put(controller.engine, make_alert("binhu-1", condition="cover_open"))
    put(controller.engine, make_alert("xinwu-1", district="Xinwu", station="wx-xinwu-sub-01"))
    return create_app(config, controller)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[FastAPI]:
    app = make_app(tmp_path)
    yield app
    app.state.controller.engine.dispose()


class Browser:
    """A client that keeps its cookies across calls, as a browser does, over the app's ASGI
    interface (Starlette's TestClient warns on httpx, and warnings are errors here)."""

    def __init__(self, app: FastAPI, base: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)
        self.cookies = self._client.cookies

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self._loop.run_until_complete(self._client.request(method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def patch(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", url, **kwargs)

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()


_OPEN: list[Browser] = []


@pytest.fixture(autouse=True)
def _close_browsers() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def client(app: FastAPI, base: str = "http://controller") -> Browser:
    browser = Browser(app, base)
    _OPEN.append(browser)
    return browser


def sign_in(browser: Browser, name: str, password: str = PASSWORD) -> str:
    """Sign in through the form; the page's CSRF token (as the console reads it)."""
    answer = browser.post("/login", data={"name": name, "password": password, "next": "/alerts"})
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/alerts"
    return csrf_of(browser.get("/alerts").text)


def csrf_of(html: str) -> str:
    found = re.search(r'data-csrf="([^"]*)"', html)
    assert found is not None
    return found.group(1)


def audit_rows(app: FastAPI, action: str) -> list[Any]:
    audit = Audit.__table__  # type: ignore[attr-defined]
    with app.state.controller.engine.connect() as conn:
        return list(conn.execute(select(audit).where(audit.c.action == action)).all())


def test_the_login_page_speaks_both_languages(app: FastAPI) -> None:
    browser = client(app)
    zh = browser.get("/login")
    assert zh.status_code == 200 and "用户名" in zh.text and "密码" in zh.text
    browser.cookies.set("lang", "en")
    en = browser.get("/login?next=/alerts")
    assert "Password" in en.text and 'name="next" value="/alerts"' in en.text
    assert 'id="login-oidc"' not in en.text  # no identity provider configured


def test_a_password_login_sets_a_safe_cookie_and_names_the_person(app: FastAPI) -> None:
    browser = client(app)
    answer = browser.post("/login", data={"name": "li.binhu", "password": PASSWORD})
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie  # plain http, cookie_secure "auto"
    assert browser.get("/api/me").json()["name"] == "li.binhu"
    page = browser.get("/")
    assert 'data-me="li.binhu"' in page.text and 'id="logout"' in page.text
    # only the SHA-256 of the cookie's value is stored
    value = browser.cookies[COOKIE]
    table = WebSession.__table__  # type: ignore[attr-defined]
    with app.state.controller.engine.connect() as conn:
        keys = conn.execute(select(table.c.id_sha256)).scalars().all()
    assert len(keys) == 1 and value not in keys[0] and len(keys[0]) == 64
    [row] = audit_rows(app, "login")
    assert row.actor == "li.binhu" and row.details == {"via": "password"}
    # signing in again gives a new session id and ends the old one (no fixation)
    browser.post("/login", data={"name": "wang.ops", "password": PASSWORD})
    assert browser.cookies[COOKIE] != value
    with app.state.controller.engine.connect() as conn:
        assert websession.sessions_of(conn=conn, account="li.binhu") == 0
    assert browser.get("/api/me").json()["name"] == "wang.ops"


@pytest.mark.parametrize(
    ("base", "setting", "secure"),
    [
        ("https://controller", "auto", True),  # TLS (its own or a trusted proxy's)
        ("http://controller", "true", True),  # behind a TLS proxy that speaks http to us
        ("https://controller", "false", False),
        ("http://controller", "auto", False),  # the demo's plain-http loopback
    ],
)
def test_the_cookie_is_secure_over_tls_or_when_the_setting_says_so(
    tmp_path: Path, base: str, setting: str, secure: bool
) -> None:
    app = make_app(tmp_path, web=WebSettings(cookie_secure=setting))  # type: ignore[arg-type]
    answer = client(app, base).post("/login", data={"name": "wang.ops", "password": PASSWORD})
    assert ("; Secure" in answer.headers["set-cookie"]) is secure
    app.state.controller.engine.dispose()


@pytest.mark.parametrize(
    ("back", "goes_to"),
    [
        ("/stations?district=Binhu", "/stations?district=Binhu"),
        ("//evil.example/", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("", "/"),
    ],
)
def test_after_a_login_the_browser_goes_back_within_the_console_only(
    app: FastAPI, back: str, goes_to: str
) -> None:
    form = {"name": "wang.ops", "password": PASSWORD, "next": back}
    answer = client(app).post("/login", data=form)
    assert answer.status_code == 303 and answer.headers["location"] == goes_to


@pytest.mark.parametrize(
    "headers",
    [{"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}],
)
def test_a_login_form_posted_from_another_site_is_refused(
    app: FastAPI, headers: dict[str, str]
) -> None:
    browser = client(app)
    form = {"name": "li.binhu", "password": PASSWORD}
    assert browser.post("/login", data=form, headers=headers).status_code == 403
    assert COOKIE not in browser.cookies
    same = {"Origin": "http://controller", "Sec-Fetch-Site": "same-origin"}
    assert browser.post("/login", data=form, headers=same).status_code == 303


@pytest.mark.parametrize(
    ("name", "password"),
    [("li.binhu", "wrong password!"), ("nobody", PASSWORD), ("li.binhu", ""), ("", "")],
)
def test_a_failed_login_is_refused_and_audited(app: FastAPI, name: str, password: str) -> None:
    browser = client(app)
    answer = browser.post("/login", data={"name": name, "password": password})
    assert answer.status_code in (401, 422)
    assert COOKIE not in browser.cookies
    if answer.status_code == 401:
        assert 'id="login-failed"' in answer.text
        [row] = audit_rows(app, "login_failed")
        assert row.actor == name and row.outcome == "refused"


def test_a_cookie_write_needs_the_sessions_csrf_token(app: FastAPI) -> None:
    browser = client(app)
    csrf = sign_in(browser, "li.binhu")
    assert len(csrf) >= 32
    ack = "/api/alerts/binhu-1/ack"
    assert browser.post(ack, json={}).status_code == 403
    assert browser.post(ack, json={}, headers={CSRF_HEADER: "x" + csrf[1:]}).status_code == 403
    done = browser.post(ack, json={"note": "on my way"}, headers={CSRF_HEADER: csrf})
    assert done.status_code == 200 and done.json()["state"] == "acknowledged"
    assert done.json()["acknowledged_by"] == "li.binhu"
    # the scope still holds: a Binhu technician acknowledging a Xinwu alert
    other = browser.post("/api/alerts/xinwu-1/ack", json={}, headers={CSRF_HEADER: csrf})
    assert other.status_code == 403


def test_a_bearer_token_needs_no_csrf_token(app: FastAPI) -> None:
    # a script's credential is not sent by a browser on its own: nothing to forge
    script = client(app)
    answer = script.post(
        "/api/alerts/binhu-1/ack", json={}, headers={"Authorization": f"Bearer {BOOTSTRAP}"}
    )
    assert answer.status_code == 200


def test_without_a_session_a_write_is_401_and_a_page_asks_to_sign_in(tmp_path: Path) -> None:
    app = make_app(tmp_path, anonymous_role=None)
    browser = client(app)
    assert browser.post("/api/alerts/binhu-1/ack", json={}).status_code == 401
    page = browser.get("/alerts?state=open", headers={"Accept": "text/html"})
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=%2Falerts%3Fstate%3Dopen"
    assert browser.get("/api/alerts").status_code == 401  # the API stays JSON
    sign_in(browser, "wang.ops")
    assert browser.get("/alerts").status_code == 200
    app.state.controller.engine.dispose()


def test_logout_ends_the_session_and_needs_the_csrf_token(app: FastAPI) -> None:
    browser = client(app)
    csrf = sign_in(browser, "li.binhu")
    cookie = browser.cookies[COOKIE]
    assert browser.post("/logout").status_code == 403
    assert browser.post("/logout", headers={CSRF_HEADER: csrf}).status_code == 204
    # the same cookie, kept by someone, is worth nothing now
    replay = client(app)
    replay.cookies.set(COOKIE, cookie)
    assert replay.get("/api/me").status_code == 401
    assert (
        replay.post("/api/alerts/binhu-1/ack", json={}, headers={CSRF_HEADER: csrf}).status_code
        == 401
    )


def test_a_session_ends_when_idle_or_old(app: FastAPI) -> None:
    engine = app.state.controller.engine
    web = WebSettings(session_idle=600, session_max=3600)
    t0 = 1_000_000.0
    with engine.begin() as conn:
        cookie, _ = websession.open_session(
            conn=conn, account="wang.ops", via="password", source=None, now=t0
        )

        def alive(now: float) -> bool:
            return websession.find_session(conn=conn, cookie=cookie, now=now, web=web) is not None

        # used every 9 minutes it stays alive; its age ends it after an hour all the same
        for minutes in range(9, 60, 9):
            assert alive(t0 + minutes * 60), minutes
        assert not alive(t0 + 3601)
        assert websession.sessions_of(conn=conn, account="wang.ops") == 0
        cookie, _ = websession.open_session(
            conn=conn, account="wang.ops", via="password", source=None, now=t0
        )
        assert not alive(t0 + 601)  # unused for more than ten minutes
        assert not alive(t0)  # and gone for good
        assert websession.find_session(conn=conn, cookie="forged", now=t0, web=web) is None


def test_disabling_an_account_ends_its_sessions(app: FastAPI) -> None:
    browser = client(app)
    sign_in(browser, "li.binhu")
    admin = {"Authorization": f"Bearer {BOOTSTRAP}"}
    changed = client(app).patch("/api/accounts/li.binhu", json={"disabled": True}, headers=admin)
    assert changed.status_code == 200
    with app.state.controller.engine.connect() as conn:
        assert websession.sessions_of(conn=conn, account="li.binhu") == 0
    assert browser.get("/api/me").status_code == 401
    # enabling it again does not bring the old session back
    client(app).patch("/api/accounts/li.binhu", json={"disabled": False}, headers=admin)
    assert browser.get("/api/me").status_code == 401


def test_my_tokens_page_makes_a_token_that_works_and_revokes_it(app: FastAPI) -> None:
    browser = client(app)
    csrf = sign_in(browser, "li.binhu")
    page = browser.get("/account")
    assert page.status_code == 200 and "API" in page.text
    assert browser.post("/account/tokens", data={"ttl_days": "7"}).status_code == 403
    made = browser.post("/account/tokens", data={"ttl_days": "7"}, headers={CSRF_HEADER: csrf})
    token = re.search(r"<code data-token>([^<]+)</code>", made.text)
    assert token is not None
    script = client(app)
    bearer = {"Authorization": f"Bearer {token.group(1)}"}
    assert script.get("/api/me", headers=bearer).json()["name"] == "li.binhu"
    [token_id] = re.findall(r'data-token-id="(\w+)"', made.text)
    revoked = browser.post(f"/account/tokens/{token_id}/revoke", headers={CSRF_HEADER: csrf})
    assert revoked.status_code == 200
    assert script.get("/api/me", headers=bearer).status_code == 401
    assert [r.action for r in audit_rows(app, "token.create")] == ["token.create"]


def test_the_accounts_page_is_for_admins(app: FastAPI) -> None:
    technician = client(app)
    sign_in(technician, "li.binhu")
    assert technician.get("/admin/accounts").status_code == 403
    admin = client(app)
    csrf = sign_in(admin, "zhao.admin")
    page = admin.get("/admin/accounts")
    assert page.status_code == 200
    assert re.findall(r'<tr data-account="([^"]+)"', page.text) == sorted(ACCOUNTS)
    form = {
        "name": "chen.xinwu",
        "role": "technician",
        "districts": ["Xinwu"],
        "password": PASSWORD,
    }
    assert admin.post("/admin/accounts", data=form).status_code == 403  # no CSRF token
    made = admin.post("/admin/accounts", data=form, headers={CSRF_HEADER: csrf})
    assert made.status_code == 200 and 'data-account="chen.xinwu"' in made.text
    bad = admin.post(
        "/admin/accounts",
        data={**form, "name": "bad name", "districts": []},
        headers={CSRF_HEADER: csrf},
    )
    assert 'class="error"' in bad.text
    newcomer = client(app)
    sign_in(newcomer, "chen.xinwu")
    assert newcomer.get("/api/me").json()["districts"] == ["Xinwu"]
    # disabling from the page ends the newcomer's session at once
    admin.post("/admin/accounts/chen.xinwu/disable", headers={CSRF_HEADER: csrf})
    assert newcomer.get("/api/me").status_code == 401
