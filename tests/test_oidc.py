"""OpenID Connect logins against an identity provider the test runs on loopback
(``oidc-provider-mock``, a Flask app built on Authlib's server side, made to enforce PKCE
here), and the id_token checks one by one with tokens signed by the test's own keys."""

from __future__ import annotations

import base64
import hashlib
import io
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from kioskfleet.controller import people, websession
from kioskfleet.controller.config import OidcSettings
from kioskfleet.controller.oidc import (
    BadSignature,
    Identity,
    LoginRefused,
    map_identity,
    validate_id_token,
)
from tests.test_login import Browser, audit_rows, client, make_app

# the mock provider runs on Authlib's server side, which warns about its own deprecations
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:authlib.*")
oidc_provider_mock = pytest.importorskip("oidc_provider_mock")
werkzeug_serving = pytest.importorskip("werkzeug.serving")

REDIRECT = "http://controller/login/oidc/callback"
GROUPS = {"roles": {"kf-tech": "technician", "kf-ops": "operator", "kf-admin": "admin"}}
DISTRICTS = {"kf-binhu": "Binhu", "kf-xinwu": "Xinwu"}
PEOPLE = {
    "sub-li": {"preferred_username": "li.oidc", "groups": ["kf-tech", "kf-binhu", "staff"]},
    "sub-wang": {"preferred_username": "wang.oidc", "groups": ["kf-ops"]},
    "sub-nobody": {"preferred_username": "guest", "groups": ["staff"]},
    # a local account's name: the provider's person may not take it over
    "sub-clash": {"preferred_username": "li.binhu", "groups": ["kf-admin"]},
}

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Pkce:
    """WSGI middleware in front of the mock provider (whose grant does not check PKCE):
    remembers each code's ``code_challenge`` and refuses a token request whose
    ``code_verifier`` does not hash to it, as a real provider does."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app
        self.challenges: dict[str, str] = {}
        self.refused = 0

    def __call__(self, environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/oauth2/token":
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            environ["wsgi.input"] = io.BytesIO(body)
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            challenge = self.challenges.pop(form.get("code", ""), None)
            verifier = form.get("code_verifier", "")
            digest = hashlib.sha256(verifier.encode()).digest()
            if challenge != base64.urlsafe_b64encode(digest).rstrip(b"=").decode():
                self.refused += 1
                start("400 Bad Request", [("Content-Type", "application/json")])
                return [b'{"error": "invalid_grant", "error_description": "PKCE"}']
        if path == "/oauth2/authorize" and environ["REQUEST_METHOD"] == "POST":
            query = parse_qs(environ.get("QUERY_STRING", ""))
            assert query["code_challenge_method"] == ["S256"]

            def remember(status: str, headers: list[tuple[str, str]], *rest: Any) -> Any:
                for name, value in headers:
                    if name.lower() == "location":
                        code = parse_qs(urlsplit(value).query).get("code")
                        if code:
                            self.challenges[code[0]] = query["code_challenge"][0]
                return start(status, headers, *rest)

            return self.app(environ, remember)
        return self.app(environ, start)


@pytest.fixture(scope="module")
def provider() -> Iterator[tuple[str, Pkce]]:
    users = [oidc_provider_mock.User(sub=sub, claims=claims) for sub, claims in PEOPLE.items()]
    pkce = Pkce(oidc_provider_mock.app(require_nonce=True, user_claims=users))
    server = werkzeug_serving.make_server("localhost", 0, pkce, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://localhost:{server.server_port}", pkce
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


def settings_for(issuer: str, **changes: Any) -> OidcSettings:
    values: dict[str, Any] = {
        "issuer": issuer,
        "client_id": "kioskfleet",
        "client_secret": "kioskfleet-secret",
        "redirect_url": REDIRECT,
        "scopes": ["openid", "profile"],
        "districts": DISTRICTS,
        **GROUPS,
        **changes,
    }
    return OidcSettings(**values)


@pytest.fixture
def app(tmp_path: Path, provider: tuple[str, Pkce]) -> Iterator[FastAPI]:
    app = make_app(tmp_path, oidc=settings_for(provider[0]))
    yield app
    app.state.controller.engine.dispose()


def to_provider(browser: Browser, back: str = "/alerts") -> str:
    """Start a login; the provider's authorization URL it sends the browser to."""
    start = browser.get("/login/oidc", params={"next": back})
    assert start.status_code == 303
    return start.headers["location"]


def at_provider(url: str, sub: str) -> str:
    """The person ``sub`` approves at the provider (its form, over real HTTP); where the
    provider sends the browser back."""
    with httpx.Client() as idp:
        assert idp.get(url).status_code == 200  # the provider's login form
        answer = idp.post(url, data={"sub": sub})
    assert answer.status_code == 302, answer.text
    return answer.headers["location"]


def back_at_controller(browser: Browser, url: str) -> httpx.Response:
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == REDIRECT
    return browser.get(f"{parts.path}?{parts.query}")


def test_a_provider_login_signs_the_person_in_with_the_mapped_role(
    app: FastAPI, provider: tuple[str, Pkce]
) -> None:
    issuer, pkce = provider
    browser = client(app)
    assert 'id="login-oidc"' in browser.get("/login").text
    url = to_provider(browser)
    query = parse_qs(urlsplit(url).query)
    assert url.startswith(f"{issuer}/oauth2/authorize?")
    assert query["code_challenge_method"] == ["S256"] and query["redirect_uri"] == [REDIRECT]
    assert query["state"] != query["nonce"]
    done = back_at_controller(browser, at_provider(url, "sub-li"))
    assert done.status_code == 303 and done.headers["location"] == "/alerts"
    assert pkce.refused == 0
    me = browser.get("/api/me").json()
    assert me["name"] == "li.oidc" and "technician" in me["roles"] and me["districts"] == ["Binhu"]
    # the account was made at this first login, without a password
    with app.state.controller.engine.connect() as conn:
        account = people.get_account(conn=conn, name="li.oidc")
    assert account is not None and account["password_hash"] is None
    assert account["role"] == "technician" and account["created_by"] == f"oidc:{issuer}"
    [row] = audit_rows(app, "login")
    assert row.actor == "li.oidc" and row.details == {"via": "oidc"}
    # a second login as the same person finds the same account
    again = client(app)
    back_at_controller(again, at_provider(to_provider(again), "sub-li"))
    assert again.get("/api/me").json()["name"] == "li.oidc"


def test_a_wrong_state_is_refused(app: FastAPI) -> None:
    browser = client(app)
    answer = at_provider(to_provider(browser), "sub-wang")
    forged = answer.replace("state=", "state=x", 1)
    refused = back_at_controller(browser, forged)
    assert refused.status_code == 401 and 'id="login-failed"' in refused.text
    assert browser.get("/api/me").status_code == 401
    # a state no one could have sent (not even ASCII) is refused the same way, not a 500
    odd = back_at_controller(browser, answer.replace("state=", "state=%E6%BB%A8", 1))
    assert odd.status_code == 401
    assert "统一身份认证登录未成功" in odd.text  # the provider's login failed, not a password
    reasons = [row.details["reason"] for row in audit_rows(app, "login_failed")]
    assert reasons == ["state is not this browser's"] * 2


def test_an_answer_is_bound_to_the_browser_that_asked_and_used_once(app: FastAPI) -> None:
    asking = client(app)
    answer = at_provider(to_provider(asking), "sub-wang")
    # another browser (an attacker's link followed by a victim) gets nowhere with it
    other = client(app)
    assert back_at_controller(other, answer).status_code == 401
    assert back_at_controller(asking, answer).status_code == 303
    # the same answer again (a replay): its state is spent
    replay = client(app)
    replay.cookies.set("kioskfleet_oidc", parse_qs(urlsplit(answer).query)["state"][0])
    assert back_at_controller(replay, answer).status_code == 401


@pytest.mark.parametrize(
    ("sub", "reason"),
    [("sub-nobody", "maps to a role"), ("sub-clash", "is not this person's")],
)
def test_a_person_without_a_role_or_with_a_local_name_is_refused(
    app: FastAPI, sub: str, reason: str
) -> None:
    browser = client(app)
    refused = back_at_controller(browser, at_provider(to_provider(browser), sub))
    assert refused.status_code == 401
    [row] = audit_rows(app, "login_failed")
    assert reason in row.details["reason"]


def test_a_provider_that_refuses_the_code_logs_nobody_in(
    tmp_path: Path, provider: tuple[str, Pkce]
) -> None:
    app = make_app(tmp_path, oidc=settings_for(provider[0]))
    browser = client(app)
    answer = at_provider(to_provider(browser), "sub-wang")
    # swap the code for another: the provider refuses it (unknown code, PKCE)
    bad = answer.replace("code=", "code=x", 1)
    assert back_at_controller(browser, bad).status_code == 401
    [row] = audit_rows(app, "login_failed")
    assert "refused the code" in row.details["reason"]
    app.state.controller.engine.dispose()


# -- the id_token, check by check ------------------------------------------------------------

ISSUER = "https://idp.example.org"
NOW = 1_800_000_000


@pytest.fixture(scope="module")
def keys() -> tuple[RSAKey, RSAKey]:
    return RSAKey.generate_key(2048, auto_kid=True), RSAKey.generate_key(2048, auto_kid=True)


def token(key: RSAKey, alg: str = "RS256", **changes: Any) -> str:
    claims = {
        "iss": ISSUER,
        "sub": "sub-li",
        "aud": "kioskfleet",
        "exp": NOW + 300,
        "iat": NOW - 5,
        "nonce": "n-123",
        **changes,
    }
    return jwt.encode(
        {"alg": alg, "kid": key.kid}, {k: v for k, v in claims.items() if v is not None}, key
    )


def check(id_token: str, key: RSAKey) -> dict[str, Any]:
    jwks = KeySet([key]).as_dict(private=False)
    return validate_id_token(
        id_token, jwks, issuer=ISSUER, client_id="kioskfleet", nonce="n-123", now=NOW, leeway=60
    )


def test_a_good_id_token_passes(keys: tuple[RSAKey, RSAKey]) -> None:
    ours, _ = keys
    assert check(token(ours), ours)["sub"] == "sub-li"
    several = token(ours, aud=["kioskfleet", "other"], azp="kioskfleet")
    assert check(several, ours)["azp"] == "kioskfleet"
    assert check(token(ours, exp=NOW - 30), ours)  # within the leeway


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"nonce": "n-other"}, "nonce"),
        ({"nonce": None}, "nonce"),
        ({"aud": "someone-else"}, "aud"),
        ({"aud": ["kioskfleet", "other"]}, "azp"),
        ({"exp": NOW - 61}, "expired"),
        ({"exp": None}, "exp"),
        ({"iat": None}, "iat"),
        ({"iss": "https://evil.example.org"}, "iss"),
        ({"sub": None}, "sub"),
    ],
)
def test_a_wrong_id_token_is_refused(
    keys: tuple[RSAKey, RSAKey], changes: dict[str, Any], says: str
) -> None:
    ours, _ = keys
    with pytest.raises(LoginRefused, match=says):
        check(token(ours, **changes), ours)


def test_an_id_token_signed_by_another_key_or_unsigned_is_refused(
    keys: tuple[RSAKey, RSAKey],
) -> None:
    ours, theirs = keys
    with pytest.raises(BadSignature):
        check(token(theirs), ours)
    header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    payload = token(ours).split(".")[1]
    with pytest.raises(BadSignature):
        check(f"{header}.{payload}.", ours)
    with pytest.raises(BadSignature):
        check("not a token", ours)


@pytest.mark.parametrize(
    ("groups", "role", "districts"),
    [
        (["kf-tech", "kf-binhu"], ("technician",), ("Binhu",)),
        (
            ["kf-ops", "kf-tech", "kf-xinwu", "kf-binhu"],
            ("operator", "technician"),
            ("Binhu", "Xinwu"),
        ),
        ("kf-admin", ("admin",), ()),
        (["kf-ops", 7, None], ("operator",), ()),
    ],
)
def test_groups_map_to_roles_and_districts(
    groups: Any, role: tuple[str, ...], districts: tuple[str, ...]
) -> None:
    claims = {"iss": ISSUER, "sub": "s", "preferred_username": "p", "groups": groups}
    found = map_identity(claims, settings_for(ISSUER))
    assert found == Identity(ISSUER, "s", "p", role, districts)  # type: ignore[arg-type]


def test_the_account_role_is_the_highest_mapped(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    identity = Identity(ISSUER, "s1", "zhou.oidc", ("operator", "technician"), ("Xinwu",))
    with app.state.controller.engine.begin() as conn:
        assert websession.account_for(conn=conn, identity=identity, now=NOW) == "zhou.oidc"
        account = people.get_account(conn=conn, name="zhou.oidc")
        assert account is not None
        assert account["role"] == "technician" and account["districts"] == ["Xinwu"]
        # the provider took the technician role away: the next login brings the account in line
        demoted = Identity(ISSUER, "s1", "zhou.oidc", ("operator",), ("Xinwu",))
        websession.account_for(conn=conn, identity=demoted, now=NOW + 1)
        account = people.get_account(conn=conn, name="zhou.oidc")
        assert account is not None and account["role"] == "operator" and account["districts"] == []
    app.state.controller.engine.dispose()


def test_oidc_settings_refuse_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="openid"):
        settings_for(ISSUER, scopes=["profile"])
    with pytest.raises(ValueError, match="technician"):
        settings_for(ISSUER, roles={"g": "superuser"})
    with pytest.raises(ValueError, match="issuer"):
        settings_for("ftp://idp")
