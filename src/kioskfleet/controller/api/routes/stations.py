"""Stations: list with filters, one station in detail, its telemetry."""

import time
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.exceptions import RequestValidationError

from kioskfleet.controller import crud
from kioskfleet.controller.api.deps import READ, ConnDep
from kioskfleet.controller.api.params import Offset
from kioskfleet.controller.public import (
    ErrorDetail,
    IsoTime,
    StationDetail,
    StationList,
    StationTelemetry,
    StationTelemetryHourly,
)
from kioskfleet.protocol.stations import StationStatus

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorDetail, "description": "No such station"}
}

router = APIRouter(prefix="/api/stations", tags=["stations"])


@router.get("", dependencies=[READ])
def list_stations(
    conn: ConnDep,
    district: str | None = None,
    site: str | None = None,
    site_type: str | None = None,
    profile: str | None = None,
    status: StationStatus | None = None,
    in_service: bool | None = None,
    q: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=64,
            description="search: stations whose id or site contains this, ignoring case",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> StationList:
    """Stations, filtered by district, site, site type, profile, status or in service, and
    searched by `q` (in the id or the site); paged."""
    filters: dict[str, str | bool | None] = {
        "district": district,
        "site": site,
        "site_type": site_type,
        "profile": profile,
        "status": status,
        "in_service": in_service,
    }
    return crud.list_stations(conn=conn, filters=filters, limit=limit, offset=offset, q=q)


@router.get("/{station_id}", responses=_NOT_FOUND, dependencies=[READ])
def get_station(conn: ConnDep, station_id: Annotated[str, Path(max_length=64)]) -> StationDetail:
    """One station: its description, devices, recent status history and open alerts."""
    station = crud.get_station(conn=conn, station_id=station_id)
    if station is None:
        raise HTTPException(status_code=404, detail=f"no station {station_id!r}")
    return station


def _window(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and start > end:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", "from"),
                    "msg": "must not be after 'to'",
                    "input": start.isoformat(),
                }
            ]
        )


@router.get("/{station_id}/telemetry", responses=_NOT_FOUND, dependencies=[READ])
def station_telemetry(
    conn: ConnDep,
    station_id: Annotated[str, Path(max_length=64)],
    start: Annotated[
        IsoTime | None,
        Query(
            alias="from",
            description="received at or after this (ISO 8601 with its zone); "
            "default: an hour before `to`",
        ),
    ] = None,
    end: Annotated[
        IsoTime | None,
        Query(
            alias="to", description="received before this (ISO 8601 with its zone); default: now"
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
) -> StationTelemetry:
    """A station's raw telemetry by received time, oldest first: `from` ≤ received < `to`,
    the last hour by default; when more than `limit` messages match, the newest `limit`
    (`total` says how many match). Raw telemetry is kept `retention_days`; older hours are in
    `/telemetry/hourly`."""
    _window(start, end)
    until = end.timestamp() if end is not None else time.time()
    since = start.timestamp() if start is not None else until - 3600.0
    found = crud.station_telemetry(
        conn=conn, station_id=station_id, start=since, end=until, limit=limit
    )
    if found is None:
        raise HTTPException(status_code=404, detail=f"no station {station_id!r}")
    return found


@router.get("/{station_id}/telemetry/hourly", responses=_NOT_FOUND, dependencies=[READ])
def station_telemetry_hourly(
    conn: ConnDep,
    station_id: Annotated[str, Path(max_length=64)],
    start: Annotated[
        IsoTime | None,
        Query(
            alias="from",
            description="hours starting at or after this (ISO 8601 with its zone); "
            "default: no bound",
        ),
    ] = None,
    end: Annotated[
        IsoTime | None,
        Query(
            alias="to",
            description="hours starting before this (ISO 8601 with its zone); default: now",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 168,
) -> StationTelemetryHourly:
    """A station's telemetry folded per hour (host metrics' avg/max, samples per device
    state), for hours older than the raw retention, oldest first; the newest `limit` hours
    (default a week) when more match."""
    _window(start, end)
    found = crud.station_telemetry_hourly(
        conn=conn,
        station_id=station_id,
        start=start.timestamp() if start is not None else None,
        end=end.timestamp() if end is not None else time.time(),
        limit=limit,
    )
    if found is None:
        raise HTTPException(status_code=404, detail=f"no station {station_id!r}")
    return found
