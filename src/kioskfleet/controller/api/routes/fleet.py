"""The fleet at a glance."""

from typing import Any

from fastapi import APIRouter

from kioskfleet.controller import crud
from kioskfleet.controller.api.deps import ConnDep

router = APIRouter(prefix="/api/fleet", tags=["fleet"])


@router.get("/summary")
def summary(conn: ConnDep) -> dict[str, Any]:
    """Stations by status and district, open alerts, messages ingested and rejected."""
    return crud.fleet_summary(conn)
