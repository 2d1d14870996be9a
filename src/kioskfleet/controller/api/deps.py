"""Dependencies shared by the routes (``Annotated`` aliases, as in the FastAPI template), and
who may call what (CONTRACT §6).

Every route declares exactly one *policy* dependency: :func:`require` (a role), :data:`Person`
(any identified person), or :func:`open_to` (no credentials, with the reason). The test
``tests/test_people_policy.py`` fails for a route without one.

Who the caller is comes from :func:`current_principal`, once per request:

1. ``Authorization: Bearer <token>``: the bootstrap token (``settings.bootstrap_token``) is the
   admin ``bootstrap``; any other token is looked up, by its SHA-256, among the accounts' API
   tokens. A token that matches nothing is a 401, never a fallback to anonymous.
2. Otherwise the web session, through the hook ``app.state.session_principal`` (see
   :data:`SessionPrincipal`): a function the web login module installs, which returns the
   principal the request's session cookie stands for, or None.
3. Otherwise the anonymous caller, with ``settings.anonymous_role`` (none by default).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Final

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy import Connection

from kioskfleet.controller import people
from kioskfleet.controller.people import Principal, Role
from kioskfleet.controller.service import Controller


def get_controller(request: Request) -> Controller:
    """The controller this app serves."""
    controller: Controller = request.app.state.controller
    return controller


ControllerDep = Annotated[Controller, Depends(get_controller)]


def get_conn(controller: ControllerDep) -> Iterator[Connection]:
    """A read connection for one request."""
    with controller.engine.connect() as conn:
        yield conn


ConnDep = Annotated[Connection, Depends(get_conn)]

#: ``app.state.session_principal``: given the request and the controller, the principal its
#: web session stands for, or None (no session, or an expired one). Installed by the web
#: login module; None where there is none (API tokens only).
SessionPrincipal = Callable[[Request, Controller], Principal | None]

_BEARER: Final = {"WWW-Authenticate": "Bearer"}


def unauthorized(detail: str) -> HTTPException:
    """401 with the challenge RFC 6750 asks for."""
    return HTTPException(status_code=401, detail=detail, headers=_BEARER)


def _bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header; None without a header; 401 for any
    other kind of header."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise unauthorized("expected 'Authorization: Bearer <token>'")
    return token


def current_principal(
    request: Request,
    controller: ControllerDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    """Who makes this request (see the module's docstring). Also left in
    ``request.state.principal`` for templates."""
    principal = _resolve(request, controller, _bearer(authorization))
    request.state.principal = principal
    return principal


def _resolve(request: Request, controller: Controller, token: str | None) -> Principal:
    settings = controller.settings
    if token is not None:
        bootstrap = settings.bootstrap_token
        if bootstrap is not None and hmac.compare_digest(
            token.encode(), bootstrap.get_secret_value().encode()
        ):
            return people.BOOTSTRAP
        with controller.engine.connect() as conn:
            found = people.principal_for_token(conn=conn, token=token, now=time.time())
        if found is None:
            raise unauthorized("unknown, expired or revoked token")
        return found
    session: SessionPrincipal | None = getattr(request.app.state, "session_principal", None)
    if session is not None:
        found = session(request, controller)
        if found is not None:
            return found
    return people.anonymous(settings.anonymous_role)


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def _policy(fn: Callable[..., Principal], description: str) -> Callable[..., Principal]:
    """Mark ``fn`` as a route policy (what the policy test looks for)."""
    fn.__kioskfleet_policy__ = description  # type: ignore[attr-defined]
    return fn


def _check(principal: Principal, role: Role | None) -> Principal:
    """``principal`` when it holds ``role`` (None: any identified person); 401 for an
    anonymous caller without it (only ``operator`` may be granted to anonymous callers: writes
    always need an identified person), 403 for a person without it."""
    if (principal.identified or role == "operator") and (role is None or principal.has(role)):
        return principal
    if not principal.identified:
        raise unauthorized("credentials required (Authorization: Bearer <token>, or sign in)")
    raise HTTPException(
        status_code=403, detail=f"{principal.name} lacks the {role or 'person'} role for this"
    )


_REQUIRES: dict[Role, Callable[..., Principal]] = {}


def require(role: Role) -> Callable[..., Principal]:
    """The dependency that lets only callers holding ``role`` through (roles add up: an admin
    holds every role). Reads need ``operator``, which anonymous callers may be granted; every
    other role needs an identified person."""
    if role not in _REQUIRES:

        def dependency(principal: PrincipalDep) -> Principal:
            return _check(principal, role)

        dependency.__name__ = f"require_{role}"
        _REQUIRES[role] = _policy(dependency, f"role {role}")
    return _REQUIRES[role]


def _any_person(principal: PrincipalDep) -> Principal:
    return _check(principal, None)


_policy(_any_person, "any identified person")


def open_to(reason: str) -> Callable[[], None]:
    """The policy of a route that needs no credentials; ``reason`` says who calls it."""

    def dependency() -> None:
        return None

    dependency.__kioskfleet_policy__ = f"open: {reason}"  # type: ignore[attr-defined]
    return dependency


Operator = Annotated[Principal, Depends(require("operator"))]
Technician = Annotated[Principal, Depends(require("technician"))]
ReleaseManager = Annotated[Principal, Depends(require("release_manager"))]
Admin = Annotated[Principal, Depends(require("admin"))]
#: any identified person (their own tokens)
Person = Annotated[Principal, Depends(_any_person)]
#: the policy of a read that needs no argument: ``dependencies=[READ]`` on a router or route
READ = Depends(require("operator"))


def api_routes(app: FastAPI) -> list[Any]:
    """Every API route of ``app`` as FastAPI serves it (its routers' dependencies and
    responses merged in): objects with ``path``, ``methods``, ``dependant``, ``responses``
    and ``original_route``."""
    return [
        context
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute)
    ]


def route_policies(route: Any) -> list[str]:
    """The policies ``route`` (from :func:`api_routes`) declares: the descriptions
    :func:`require`, :data:`Person`, :func:`open_to` and the metrics' scrape token leave on
    their dependencies."""
    found: list[str] = []
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        policy = getattr(dependant.call, "__kioskfleet_policy__", None)
        if policy is not None:
            found.append(policy)
        pending.extend(dependant.dependencies)
    return found


def _documented(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorDetail"}}},
    }


def document_policies(app: FastAPI) -> None:
    """Document the 401 of every route that needs credentials, and the 403 of those needing
    more than reading, in ``/openapi.json`` (clients and schemathesis rely on it). Call it
    once all routers are included."""
    for route in api_routes(app):
        policies = route_policies(route)
        if not policies or all(p.startswith("open") for p in policies):
            continue
        errors = {401: _documented("No valid credentials")}
        if any(p != "role operator" for p in policies):
            errors[403] = _documented("Not allowed for this person")
        # the route as declared and as served (FastAPI keeps a merged copy of its responses)
        for responses in (route.original_route.responses, route.responses):
            for code, response in errors.items():
                responses.setdefault(code, response)
