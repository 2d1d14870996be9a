"""Alerts (CONTRACT §4): list with filters, one with its history, acknowledge, resolve."""

import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request

from kioskfleet.controller import alertactions, alertviews, people
from kioskfleet.controller.alerts.model import Conflict
from kioskfleet.controller.api.deps import READ, ConnDep, ControllerDep, Technician
from kioskfleet.controller.api.params import From, Offset, To, bounds, client
from kioskfleet.controller.public import (
    AlertActionRequest,
    AlertDetail,
    AlertList,
    ErrorDetail,
    Severity,
)

router = APIRouter(prefix="/api/alerts", tags=["alerts"])

AlertId = Annotated[str, Path(max_length=64)]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorDetail, "description": "No such alert"}
}
_ACTION_ERRORS: dict[int | str, dict[str, Any]] = {
    **_NOT_FOUND,
    403: {"model": ErrorDetail, "description": "Outside your role or your districts"},
    409: {
        "model": ErrorDetail,
        "description": "Not allowed from the alert's state, or it changed meanwhile",
    },
}


@router.get("", dependencies=[READ])
def list_alerts(
    conn: ConnDep,
    state: Annotated[
        alertviews.AlertStateFilter | None,
        Query(
            description="`open`, `acknowledged`, `resolved`, or `active` (open and acknowledged)"
        ),
    ] = None,
    district: str | None = None,
    site: str | None = None,
    station: Annotated[
        str | None,
        Query(description="the alert's own station (a site incident has none: use `site`)"),
    ] = None,
    device: str | None = None,
    severity: Severity | None = None,
    condition: Annotated[
        str | None, Query(description="a fault code, `offline`, `site_offline`, `flapping`, …")
    ] = None,
    start: From = None,
    end: To = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> AlertList:
    """Alerts, newest first (by `opened_at`; `from`/`to` bound it), filtered; paged."""
    since, until = bounds(start, end)
    return alertviews.list_alerts(
        conn=conn,
        state=state,
        filters={
            "district": district,
            "site": site,
            "station": station,
            "device": device,
            "severity": severity,
            "condition": condition,
        },
        start=since,
        end=until,
        limit=limit,
        offset=offset,
    )


@router.get("/{alert_id}", responses=_NOT_FOUND, dependencies=[READ])
def get_alert(conn: ConnDep, alert_id: AlertId) -> AlertDetail:
    """One alert with its history (every transition, oldest first)."""
    alert = alertviews.get_alert(conn=conn, alert_id=alert_id)
    if alert is None:
        raise HTTPException(status_code=404, detail=f"no alert {alert_id!r}")
    return alert


def _act(
    controller: ControllerDep,
    request: Request,
    person: people.Principal,
    alert_id: str,
    body: AlertActionRequest | None,
    action: alertactions.PersonAction,
) -> AlertDetail:
    body = body or AlertActionRequest()
    alerts = controller.settings.alerts
    try:
        alert = alertactions.act(
            engine=controller.engine,
            alert_id=alert_id,
            action=action,
            by=person.name,
            scope=person.scope,
            note=body.note,
            receivers=alerts.receivers,
            routing=alerts.routing,
            source=client(request),
            now=time.time(),
        )
    except Conflict as err:
        raise HTTPException(status_code=409, detail=str(err)) from err
    except people.OutOfScope as err:
        raise HTTPException(status_code=403, detail=str(err)) from err
    if alert is None:
        raise HTTPException(status_code=404, detail=f"no alert {alert_id!r}")
    return alert


@router.post("/{alert_id}/ack", responses=_ACTION_ERRORS)
def acknowledge(
    controller: ControllerDep,
    request: Request,
    person: Technician,
    alert_id: AlertId,
    body: AlertActionRequest | None = None,
) -> AlertDetail:
    """A person takes an open alert on: it stops escalating; its teams are told. Needs the
    technician role, for an alert of one of the technician's districts."""
    return _act(controller, request, person, alert_id, body, "ack")


@router.post("/{alert_id}/resolve", responses=_ACTION_ERRORS)
def resolve(
    controller: ControllerDep,
    request: Request,
    person: Technician,
    alert_id: AlertId,
    body: AlertActionRequest | None = None,
) -> AlertDetail:
    """A person resolves an open or acknowledged alert (`resolution`: `by_person`). While
    its condition is still active nothing opens again for it; once the condition has
    cleared, it may alert again. Needs the technician role, for an alert of one of the
    technician's districts."""
    return _act(controller, request, person, alert_id, body, "resolve")
