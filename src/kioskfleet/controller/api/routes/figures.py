"""Figures over a period (CONTRACT §4): alert response times, availability."""

from typing import Annotated

from fastapi import APIRouter, Query

from kioskfleet.controller import figures
from kioskfleet.controller.api.deps import READ, ConnDep
from kioskfleet.controller.api.params import From, To, period
from kioskfleet.controller.public import AlertStats, Availability, AvailabilityBy

router = APIRouter(tags=["figures"])

#: the period when `from` is not given: the week before `to`
DEFAULT_PERIOD_S = 7 * 86400.0


@router.get("/api/alerts/stats", dependencies=[READ])
def alert_stats(
    conn: ConnDep, start: From = None, end: To = None, district: str | None = None
) -> AlertStats:
    """Time to acknowledge, time to resolve and MTTR (count, mean, median, p90 in seconds)
    of the alerts opened in `from`–`to` (default: the week before now), per district and
    severity and overall. Time to resolve counts repaired alerts only (resolution
    `cleared` or `by_person`)."""
    since, until = period(start, end, DEFAULT_PERIOD_S)
    return figures.alert_stats(conn=conn, start=since, end=until, district=district)


@router.get("/api/availability", dependencies=[READ])
def availability(
    conn: ConnDep,
    start: From = None,
    end: To = None,
    by: Annotated[AvailabilityBy, Query(description="group per station, site or district")] = (
        "station"
    ),
    district: str | None = None,
) -> Availability:
    """Share of `from`–`to` (default: the week before now) the stations were `online`
    (connected, reporting, not degraded), per station, site or district; a station counts
    from its registration. A group's figure weighs its stations by their time in the
    period."""
    since, until = period(start, end, DEFAULT_PERIOD_S)
    return figures.availability(conn=conn, start=since, end=until, by=by, district=district)
