"""Maintenance mode: a technician on site; the station's alerts are recorded, not notified."""

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request

from kioskfleet.controller import alertactions, alertviews, commands, people
from kioskfleet.controller.alerts.model import Conflict
from kioskfleet.controller.api.deps import READ, ConnDep, ControllerDep, Technician
from kioskfleet.controller.api.params import Offset, client, invalid
from kioskfleet.controller.public import (
    ErrorDetail,
    MaintenanceList,
    MaintenancePublic,
    MaintenanceRequest,
)

router = APIRouter(tags=["maintenance"])

StationId = Annotated[str, Path(max_length=64)]
StateFilter = Annotated[
    alertviews.MaintenanceState | Literal["all"],
    Query(description="`active` now, `ended`, or `all`"),
]
Limit = Annotated[int, Query(ge=1, le=1000)]
_NO_STATION: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorDetail, "description": "No such station"}
}
_FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorDetail, "description": "Outside your role or your districts"}
}


@router.post(
    "/api/stations/{station_id}/maintenance",
    status_code=201,
    responses=_NO_STATION | _FORBIDDEN,
)
def start_maintenance(
    controller: ControllerDep,
    request: Request,
    person: Technician,
    station_id: StationId,
    body: MaintenanceRequest,
) -> MaintenancePublic:
    """Put a station in maintenance from now until `until` (or for `duration_s`): its
    alerts are still recorded, marked `suppressed_by`, and not notified; it ends by itself.
    Needs the technician role, for a station of one of the technician's districts."""
    try:
        with controller.engine.begin() as conn:
            window = alertactions.start_maintenance(
                conn=conn,
                station=station_id,
                request=body,
                by=person.name,
                scope=person.scope,
                source=client(request),
                now=time.time(),
            )
    except alertactions.Refused as err:
        raise invalid(("body", err.loc), str(err), None) from err
    except people.OutOfScope as err:
        raise HTTPException(status_code=403, detail=str(err)) from err
    if window is None:
        raise HTTPException(status_code=404, detail=f"no station {station_id!r}")
    return window


@router.get("/api/stations/{station_id}/maintenance", responses=_NO_STATION, dependencies=[READ])
def station_maintenance(
    conn: ConnDep,
    station_id: StationId,
    state: StateFilter = "all",
    limit: Limit = 100,
    offset: Offset = 0,
) -> MaintenanceList:
    """A station's maintenance windows, newest first."""
    if not commands.station_exists(conn=conn, station=station_id):
        raise HTTPException(status_code=404, detail=f"no station {station_id!r}")
    return alertviews.list_maintenance(
        conn=conn,
        station=station_id,
        state=None if state == "all" else state,
        now=time.time(),
        limit=limit,
        offset=offset,
    )


@router.delete(
    "/api/stations/{station_id}/maintenance",
    responses={
        **_NO_STATION,
        **_FORBIDDEN,
        409: {"model": ErrorDetail, "description": "The station is not in maintenance"},
    },
)
def end_maintenance(
    controller: ControllerDep, request: Request, person: Technician, station_id: StationId
) -> MaintenanceList:
    """End a station's maintenance now; the windows ended. Needs the technician role, for a
    station of one of the technician's districts."""
    try:
        with controller.engine.begin() as conn:
            ended = alertactions.end_maintenance(
                conn=conn,
                station=station_id,
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
        raise HTTPException(status_code=404, detail=f"no station {station_id!r}")
    return MaintenanceList(items=ended, total=len(ended))


@router.get("/api/maintenance", dependencies=[READ])
def list_maintenance(
    conn: ConnDep, state: StateFilter = "all", limit: Limit = 100, offset: Offset = 0
) -> MaintenanceList:
    """Maintenance windows of every station, newest first."""
    return alertviews.list_maintenance(
        conn=conn,
        station=None,
        state=None if state == "all" else state,
        now=time.time(),
        limit=limit,
        offset=offset,
    )
