"""The fleet at a glance."""

from fastapi import APIRouter

from kioskfleet.controller import crud
from kioskfleet.controller.api.deps import READ, ConnDep
from kioskfleet.controller.public import FleetSummary

router = APIRouter(prefix="/api/fleet", tags=["fleet"])


@router.get("/summary", dependencies=[READ])
def summary(conn: ConnDep) -> FleetSummary:
    """Stations by status and district, open alerts, messages ingested and rejected."""
    return crud.fleet_summary(conn=conn)
