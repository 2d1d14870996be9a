"""Dependencies shared by the routes (``Annotated`` aliases, as in the FastAPI template)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
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
