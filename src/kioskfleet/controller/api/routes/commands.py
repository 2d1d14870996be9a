"""Commands to a station (CONTRACT §4): send one, see where it stands, list them."""

import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request

from kioskfleet.controller import commands, people
from kioskfleet.controller.api.deps import READ, ConnDep, ControllerDep, Technician
from kioskfleet.controller.api.params import Offset
from kioskfleet.controller.public import (
    CommandCreated,
    CommandList,
    CommandPublic,
    CommandRequest,
    ErrorDetail,
)

router = APIRouter(prefix="/api/stations/{station_id}/commands", tags=["commands"])

StationId = Annotated[str, Path(max_length=64)]
_NO_STATION: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorDetail, "description": "No such station"}
}


@router.post(
    "",
    status_code=201,
    responses=_NO_STATION
    | {403: {"model": ErrorDetail, "description": "Outside your role or your districts"}},
)
def create_command(
    controller: ControllerDep,
    request: Request,
    person: Technician,
    station_id: StationId,
    body: CommandRequest,
) -> CommandCreated:
    """Store a command and send it; a station that is offline gets it at its next birth,
    unless it expired by then. Needs the technician role, for a station of one of the
    technician's districts."""
    try:
        command_id = controller.create_command(
            station=station_id,
            name=body.name,
            args=body.args,
            ttl_s=body.ttl_s,
            actor=person.name,
            scope=person.scope,
            source=request.client.host if request.client else None,
        )
    except people.OutOfScope as err:
        raise HTTPException(status_code=403, detail=str(err)) from err
    if command_id is None:
        raise HTTPException(status_code=404, detail=f"no station {station_id!r}")
    return CommandCreated(id=command_id)


@router.get("", responses=_NO_STATION, dependencies=[READ])
def list_commands(
    conn: ConnDep,
    station_id: StationId,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> CommandList:
    """A station's commands, newest first."""
    if not commands.station_exists(conn=conn, station=station_id):
        raise HTTPException(status_code=404, detail=f"no station {station_id!r}")
    return commands.list_commands(
        conn=conn, station=station_id, limit=limit, offset=offset, now=time.time()
    )


@router.get(
    "/{command_id}",
    responses={404: {"model": ErrorDetail, "description": "No such station or command"}},
    dependencies=[READ],
)
def get_command(
    conn: ConnDep, station_id: StationId, command_id: Annotated[str, Path(max_length=64)]
) -> CommandPublic:
    """One command: pending, sent, ok, error or expired, with the agent's reply."""
    command = commands.get_command(
        conn=conn, station=station_id, command_id=command_id, now=time.time()
    )
    if command is None:
        raise HTTPException(
            status_code=404, detail=f"no command {command_id!r} for station {station_id!r}"
        )
    return command
