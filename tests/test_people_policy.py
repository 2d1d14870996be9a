"""Every route says who may call it (CONTRACT §6): a route added without a policy fails here,
and the policy of each route is the one the contract gives its kind of work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette.routing import Mount, Route

from kioskfleet.controller.api.deps import api_routes, route_policies
from kioskfleet.controller.app import create_app
from kioskfleet.controller.config import Settings

#: FastAPI's own description and documentation pages: open, as CONTRACT §4 lists
#: /openapi.json (they describe, they serve no data)
FASTAPI_OWN = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}

#: the policy each write route must have; reads are "role operator" unless listed
EXPECTED: dict[tuple[str, str], str] = {
    ("POST", "/api/alerts/{alert_id}/ack"): "role technician",
    ("POST", "/api/alerts/{alert_id}/resolve"): "role technician",
    ("POST", "/api/silences"): "role technician",
    ("DELETE", "/api/silences/{silence_id}"): "role technician",
    ("POST", "/api/stations/{station_id}/maintenance"): "role technician",
    ("DELETE", "/api/stations/{station_id}/maintenance"): "role technician",
    ("POST", "/api/stations/{station_id}/commands"): "role technician",
    ("POST", "/api/releases"): "role release_manager",
    ("POST", "/api/rollouts"): "role release_manager",
    ("POST", "/api/rollouts/{rollout_id}/pause"): "role release_manager",
    ("POST", "/api/rollouts/{rollout_id}/resume"): "role release_manager",
    ("POST", "/api/rollouts/{rollout_id}/abort"): "role release_manager",
    ("POST", "/api/rollouts/{rollout_id}/revert"): "role release_manager",
    ("POST", "/api/enrolment-tokens"): "role admin",
    ("POST", "/api/stations/{station_id}/revoke"): "role admin",
    ("POST", "/api/accounts"): "role admin",
    ("GET", "/api/accounts"): "role admin",
    ("GET", "/api/accounts/{name}"): "role admin",
    ("PATCH", "/api/accounts/{name}"): "role admin",
    ("DELETE", "/api/accounts/{name}"): "role admin",
    ("GET", "/api/audit"): "role admin",
    ("GET", "/api/audit.csv"): "role admin",
    ("GET", "/api/me"): "any identified person",
    ("POST", "/api/tokens"): "any identified person",
    ("GET", "/api/tokens"): "any identified person",
    ("DELETE", "/api/tokens/{token_id}"): "any identified person",
    ("GET", "/healthz"): "open: load balancers and monitoring",
    ("GET", "/metrics"): "open, or the scrape token",
    ("POST", "/api/enrolment"): "open: kiosks, with their one-time token or current certificate",
    ("POST", "/api/enrolment/renew"): (
        "open: kiosks, with their one-time token or current certificate"
    ),
    ("GET", "/tuf/metadata/{name}"): "open: kiosks updating: what it serves is signed",
    ("GET", "/tuf/targets/{path:path}"): "open: kiosks updating: what it serves is signed",
    ("GET", "/favicon.ico"): "open: browsers, before any sign-in",
    ("GET", "/lang/{lang}"): "open: anyone: it only sets a cookie",
    # signing in and out (docs/login.md): the form, the provider's round trip, logout (which
    # checks the session's CSRF token itself)
    ("GET", "/login"): "open: anyone: signing in and out",
    ("POST", "/login"): "open: anyone: signing in and out",
    ("POST", "/logout"): "open: anyone: signing in and out",
    ("GET", "/login/oidc"): "open: anyone: signing in and out",
    ("GET", "/login/oidc/callback"): "open: anyone: signing in and out",
    # the console's people pages
    ("GET", "/account"): "any identified person",
    ("POST", "/account/tokens"): "any identified person",
    ("POST", "/account/tokens/{token_id}/revoke"): "any identified person",
    ("GET", "/admin/accounts"): "role admin",
    ("POST", "/admin/accounts"): "role admin",
    ("POST", "/admin/accounts/{name}/{change}"): "role admin",
    ("POST", "/admin/tokens"): "role admin",
    ("POST", "/admin/tokens/{token_id}/revoke"): "role admin",
}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    db = tmp_path_factory.mktemp("policy") / "c.db"
    return create_app(Settings(db_url=f"sqlite:///{db}"))  # never started: only its routes


def _routes(app: FastAPI) -> list[tuple[str, str, Any]]:
    return [(method, route.path, route) for route in api_routes(app) for method in route.methods]


def test_every_route_has_exactly_one_policy(app: FastAPI) -> None:
    missing = [f"{m} {p}" for m, p, route in _routes(app) if len(route_policies(route)) != 1]
    assert missing == []


def test_every_route_has_the_policy_of_its_kind(app: FastAPI) -> None:
    wrong = {}
    for method, path, route in _routes(app):
        (policy,) = route_policies(route)
        expected = EXPECTED.get((method, path), "role operator")
        if policy != expected:
            wrong[f"{method} {path}"] = policy
    assert wrong == {}
    # and each listed route exists (the table does not drift from the app)
    present = {(m, p) for m, p, _ in _routes(app)}
    assert set(EXPECTED) - present == set()


def test_only_the_listed_routes_are_open(app: FastAPI) -> None:
    open_ = {
        (m, p)
        for m, p, route in _routes(app)
        if any(policy.startswith("open") for policy in route_policies(route))
    }
    assert open_ == {k for k, v in EXPECTED.items() if v.startswith("open")}


def test_what_is_not_an_api_route_is_known(app: FastAPI) -> None:
    # starlette's own: documentation and the static files
    others = [route for route in iter_route_contexts(app.routes) if route not in api_routes(app)]
    assert {route.path for route in others} == FASTAPI_OWN | {"/static"}
    (static,) = [r.original_route for r in others if isinstance(r.original_route, Mount)]
    assert Path(static.app.directory).name == "static"
    assert all(isinstance(r.original_route, Route) for r in others if r.path in FASTAPI_OWN)


def test_the_policies_are_documented(app: FastAPI) -> None:
    """401 wherever credentials are needed, 403 where more than reading is."""
    paths = app.openapi()["paths"]
    for method, path, route in _routes(app):
        (policy,) = route_policies(route)
        if not route.include_in_schema:
            continue
        documented = set(paths[route.path_format][method.lower()]["responses"])
        # "open, or the scrape token" may answer 401 too
        assert ("401" in documented) == (not policy.startswith("open: ")), (method, path)
        needs_more = not policy.startswith("open") and policy != "role operator"
        assert ("403" in documented) >= needs_more, (method, path)
