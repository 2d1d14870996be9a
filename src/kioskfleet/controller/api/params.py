"""Query parameters shared by the routes: a period (``from``/``to``), and the caller's
address for the audit log."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any

from fastapi import Query, Request
from fastapi.exceptions import RequestValidationError

from kioskfleet.controller.public import IsoTime

From = Annotated[
    IsoTime | None, Query(alias="from", description="at or after this (ISO 8601 with its zone)")
]
To = Annotated[
    IsoTime | None, Query(alias="to", description="before this (ISO 8601 with its zone)")
]


#: the largest ``offset`` of a list: beyond any table we keep, within a 64-bit integer (the
#: databases' limit: a larger one was a server error)
MAX_OFFSET = 1_000_000_000
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]


def unprocessable(description: str) -> dict[str, Any]:
    """How a route documents a 422 it raises itself (``{"detail": str}``) beside FastAPI's
    own validation errors (``{"detail": [...]}``): either shape."""
    schemas = [
        {"$ref": "#/components/schemas/ErrorDetail"},
        {"$ref": "#/components/schemas/HTTPValidationError"},
    ]
    return {
        "description": description,
        "content": {"application/json": {"schema": {"anyOf": schemas}}},
    }


def invalid(loc: tuple[str, ...], msg: str, value: Any) -> RequestValidationError:
    """A 422 shaped like FastAPI's own, for what only the route can check."""
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg, "input": value}])


def bounds(start: datetime | None, end: datetime | None) -> tuple[float | None, float | None]:
    """``from``/``to`` as Unix seconds (None stays None); 422 when ``from`` is after ``to``."""
    if start is not None and end is not None and start > end:
        raise invalid(("query", "from"), "must not be after 'to'", start.isoformat())
    return (
        start.timestamp() if start is not None else None,
        end.timestamp() if end is not None else None,
    )


def period(start: datetime | None, end: datetime | None, default_s: float) -> tuple[float, float]:
    """A closed period: ``to`` defaults to now, ``from`` to ``default_s`` before ``to``; 422
    unless ``from`` is before ``to``."""
    since, until = bounds(start, end)
    until = time.time() if until is None else until
    since = until - default_s if since is None else since
    if since >= until:
        raise invalid(("query", "from"), "must be before 'to'", since)
    return since, until


def client(request: Request) -> str | None:
    """The caller's address, for the audit log."""
    return request.client.host if request.client else None
