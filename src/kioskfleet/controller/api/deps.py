"""Dependencies shared by the routes (``Annotated`` aliases, as in the FastAPI template)."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from sqlalchemy import Connection

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


def require_admin(
    controller: ControllerDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> str:
    """The admin making this request, or 401.

    The seam for people and roles (CONTRACT §6): until accounts and API tokens exist, the one
    admin credential is ``KIOSKFLEET_BOOTSTRAP_TOKEN`` as a bearer token; a controller without
    it has no admin. Returns who, for the audit log.
    """
    expected = controller.settings.bootstrap_token
    scheme, _, given = (authorization or "").partition(" ")
    if (
        expected is None
        or scheme.lower() != "bearer"
        or not hmac.compare_digest(given.strip().encode(), expected.get_secret_value().encode())
    ):
        raise HTTPException(
            status_code=401,
            detail="admin credentials required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return "bootstrap-admin"


AdminDep = Annotated[str, Depends(require_admin)]
