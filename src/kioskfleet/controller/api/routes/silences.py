"""Silences: alerts that match are recorded but not notified until the silence expires."""

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request

from kioskfleet.controller import alertactions, alertviews, people
from kioskfleet.controller.alerts.model import Conflict
from kioskfleet.controller.api.deps import READ, ConnDep, ControllerDep, Technician
from kioskfleet.controller.api.params import Offset, client, invalid
from kioskfleet.controller.public import (
    ErrorDetail,
    SilenceList,
    SilencePublic,
    SilenceRequest,
    SilenceState,
)

router = APIRouter(prefix="/api/silences", tags=["silences"])

_FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorDetail, "description": "Outside your role or your districts"}
}


@router.post("", status_code=201, responses=_FORBIDDEN)
def create_silence(
    controller: ControllerDep, request: Request, person: Technician, body: SilenceRequest
) -> SilencePublic:
    """Silence the alerts matching every matcher (`label` one of district, site, station,
    device, condition, severity; `op` `=`, `!=`, `=~`, `!~`, a regex matching the whole
    value) from `starts_at` (default now) until `expires_at`, or for `duration_s`. Needs the
    technician role; a technician's silence must hold a matcher `district = D` with D one of
    their districts, or `station = S` with S a station of them."""
    try:
        with controller.engine.begin() as conn:
            return alertactions.create_silence(
                conn=conn,
                request=body,
                author=person.name,
                scope=person.scope,
                source=client(request),
                now=time.time(),
            )
    except alertactions.Refused as err:
        raise invalid(("body", err.loc), str(err), None) from err
    except people.OutOfScope as err:
        raise HTTPException(status_code=403, detail=str(err)) from err


@router.get("", dependencies=[READ])
def list_silences(
    conn: ConnDep,
    state: Annotated[
        SilenceState | Literal["all"],
        Query(description="`active` now, `pending` (starts later), `expired`, or `all`"),
    ] = "all",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> SilenceList:
    """Silences, newest first."""
    return alertviews.list_silences(
        conn=conn,
        state=None if state == "all" else state,
        now=time.time(),
        limit=limit,
        offset=offset,
    )


_END_ERRORS: dict[int | str, dict[str, Any]] = {
    **_FORBIDDEN,
    404: {"model": ErrorDetail, "description": "No such silence"},
    409: {"model": ErrorDetail, "description": "Already expired"},
}


@router.delete("/{silence_id}", responses=_END_ERRORS)
def end_silence(
    controller: ControllerDep,
    request: Request,
    person: Technician,
    silence_id: Annotated[str, Path(max_length=64)],
) -> SilencePublic:
    """End a silence now. A pending one (never in force) is withdrawn: it no longer appears
    in the list, and its `expires_at` is shown equal to its `starts_at`. A technician may
    end a silence confined to their districts (as when creating one)."""
    try:
        with controller.engine.begin() as conn:
            ended = alertactions.end_silence(
                conn=conn,
                silence_id=silence_id,
                by=person.name,
                scope=person.scope,
                source=client(request),
                now=time.time(),
            )
    except Conflict as err:
        raise HTTPException(status_code=409, detail=str(err)) from err
    except people.OutOfScope as err:
        raise HTTPException(status_code=403, detail=str(err)) from err
    if ended is None:
        raise HTTPException(status_code=404, detail=f"no silence {silence_id!r}")
    return ended
