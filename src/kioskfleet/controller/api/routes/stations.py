"""Stations: list with filters, one station in detail."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from kioskfleet.controller import crud
from kioskfleet.controller.api.deps import ConnDep
from kioskfleet.controller.public import ErrorDetail, StationDetail, StationList
from kioskfleet.protocol.stations import StationStatus

router = APIRouter(prefix="/api/stations", tags=["stations"])


@router.get("")
def list_stations(
    conn: ConnDep,
    district: str | None = None,
    site: str | None = None,
    site_type: str | None = None,
    profile: str | None = None,
    status: StationStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> StationList:
    """Stations, filtered by district, site, site type, profile or status; paged."""
    filters = {
        "district": district,
        "site": site,
        "site_type": site_type,
        "profile": profile,
        "status": status,
    }
    return crud.list_stations(conn=conn, filters=filters, limit=limit, offset=offset)


@router.get(
    "/{station_id}", responses={404: {"model": ErrorDetail, "description": "No such station"}}
)
def get_station(conn: ConnDep, station_id: Annotated[str, Path(max_length=64)]) -> StationDetail:
    """One station: its description, devices, recent status history and open alerts."""
    station = crud.get_station(conn=conn, station_id=station_id)
    if station is None:
        raise HTTPException(status_code=404, detail=f"no station {station_id!r}")
    return station
