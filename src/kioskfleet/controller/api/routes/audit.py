"""The audit log, read side: who did what, when, from where, and how it ended."""

from typing import Annotated

from fastapi import APIRouter, Query

from kioskfleet.controller import alertviews
from kioskfleet.controller.api.deps import Admin, ConnDep
from kioskfleet.controller.api.params import From, Offset, To, bounds
from kioskfleet.controller.public import AuditList

router = APIRouter(prefix="/api/audit", tags=["audit"])


@router.get("")
def list_audit(
    conn: ConnDep,
    _admin: Admin,
    action: Annotated[
        str | None, Query(description="e.g. `alert.ack`, `silence.create`, `command.create`")
    ] = None,
    target: Annotated[str | None, Query(description="a station, alert or silence id")] = None,
    actor: str | None = None,
    start: From = None,
    end: To = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> AuditList:
    """Audit entries, newest first, filtered by action, target, actor and time (admins
    only: the oversight record of who did what)."""
    since, until = bounds(start, end)
    return alertviews.list_audit(
        conn=conn,
        filters={"action": action, "target": target, "actor": actor},
        start=since,
        end=until,
        limit=limit,
        offset=offset,
    )
