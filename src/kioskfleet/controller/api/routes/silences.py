"""Silences: alerts that match are recorded but not notified until the silence expires."""

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request

from kioskfleet.controller import alertactions, alertviews
from kioskfleet.controller.alerts.model import Conflict
from kioskfleet.controller.api.deps import ConnDep, ControllerDep
from kioskfleet.controller.api.params import By, client, invalid
from kioskfleet.controller.public import (
    ErrorDetail,
    SilenceList,
    SilencePublic,
    SilenceRequest,
    SilenceState,
)

router = APIRouter(prefix="/api/silences", tags=["silences"])


@router.post("", status_code=201)
def create_silence(
    controller: ControllerDep, request: Request, body: SilenceRequest
) -> SilencePublic:
    """Silence the alerts matching every matcher (`label` one of district, site, station,
    device, condition, severity; `op` `=`, `!=`, `=~`, `!~`, a regex matching the whole
    value) from `starts_at` (default now) until `expires_at`, or for `duration_s`."""
    try:
        with controller.engine.begin() as conn:
            return alertactions.create_silence(
                conn=conn, request=body, source=client(request), now=time.time()
            )
    except alertactions.Refused as err:
        raise invalid(("body", err.loc), str(err), None) from err


@router.get("")
def list_silences(
    conn: ConnDep,
    state: Annotated[
        SilenceState | Literal["all"],
        Query(description="`active` now, `pending` (starts later), `expired`, or `all`"),
    ] = "all",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
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
    404: {"model": ErrorDetail, "description": "No such silence"},
    409: {"model": ErrorDetail, "description": "Already expired"},
}


@router.delete("/{silence_id}", responses=_END_ERRORS)
def end_silence(
    controller: ControllerDep,
    request: Request,
    silence_id: Annotated[str, Path(max_length=64)],
    by: By = "api",
) -> SilencePublic:
    """End a silence now. A pending one (never in force) is withdrawn: it no longer appears
    in the list, and its `expires_at` is shown equal to its `starts_at`."""
    try:
        with controller.engine.begin() as conn:
            ended = alertactions.end_silence(
                conn=conn, silence_id=silence_id, by=by, source=client(request), now=time.time()
            )
    except Conflict as err:
        raise HTTPException(status_code=409, detail=str(err)) from err
    if ended is None:
        raise HTTPException(status_code=404, detail=f"no silence {silence_id!r}")
    return ended
