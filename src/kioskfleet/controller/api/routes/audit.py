"""The audit log, read side (admins only): who did what, when, from where, and how it ended;
a page as JSON, or every matching entry as CSV for oversight."""

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from kioskfleet.controller import auditlog
from kioskfleet.controller.api.deps import Admin, ConnDep, ControllerDep
from kioskfleet.controller.api.params import From, Offset, To, bounds
from kioskfleet.controller.public import ActorKind, AuditList

router = APIRouter(tags=["audit"])

Action = Annotated[
    str | None, Query(description="e.g. `alert.ack`, `silence.create`, `command.create`")
]
Target = Annotated[str | None, Query(description="a station, alert, silence or rollout id")]
Actor = Annotated[str | None, Query(description="who: an account, a station, `controller`")]
Kind = Annotated[ActorKind | None, Query(description="what kind of principal the actor is")]


def _filters(
    action: str | None, target: str | None, actor: str | None, kind: str | None
) -> dict[str, str | None]:
    return {"action": action, "target": target, "actor": actor, "actor_kind": kind}


@router.get("/api/audit")
def list_audit(
    conn: ConnDep,
    _admin: Admin,
    action: Action = None,
    target: Target = None,
    actor: Actor = None,
    actor_kind: Kind = None,
    start: From = None,
    end: To = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> AuditList:
    """Audit entries, newest first, filtered by action, target, actor and time; each with its
    ``seq`` and ``hash`` in the chain that `kioskfleet audit verify` checks."""
    since, until = bounds(start, end)
    return auditlog.list_audit(
        conn=conn,
        filters=_filters(action, target, actor, actor_kind),
        start=since,
        end=until,
        limit=limit,
        offset=offset,
    )


@router.get(
    "/api/audit.csv",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/csv": {"schema": {"type": "string"}}},
            "description": "every matching entry, oldest first",
        }
    },
)
def export_audit(
    controller: ControllerDep,
    _admin: Admin,
    action: Action = None,
    target: Target = None,
    actor: Actor = None,
    actor_kind: Kind = None,
    start: From = None,
    end: To = None,
) -> StreamingResponse:
    """Every matching audit entry as CSV (UTF-8 with a byte order mark, a header row, oldest
    first), for oversight: the same filters as `GET /api/audit`, without pages."""
    since, until = bounds(start, end)
    filters = _filters(action, target, actor, actor_kind)

    def chunks() -> Iterator[bytes]:
        # its own connection: the response outlives the request's dependencies
        with controller.engine.connect() as conn:
            for chunk in auditlog.export_csv(conn=conn, filters=filters, start=since, end=until):
                yield chunk.encode("utf-8")

    stamp = datetime.fromtimestamp(time.time(), UTC).strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        chunks(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="audit-{stamp}.csv"'},
    )
