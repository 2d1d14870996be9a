"""Commands people send to stations (CONTRACT §4): keyword-only functions over a connection,
no HTTP and no MQTT in them (the controller, :mod:`kioskfleet.controller.service`, publishes).

A command is stored, with its audit row, before it is published. It is handed to the broker
at most once by the controller: whoever sets ``sent_at`` (a conditional update, so the API's
thread and the thread acting on a birth never both win) publishes it. Its state is derived
when read, from ``sent_at``, ``expires_at`` and the agent's reply, which the writer stores in
``command_reply`` under the command's id.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from kioskfleet.controller import people
from kioskfleet.controller.crud import utc, utc_or_none
from kioskfleet.controller.models import Audit, CommandRecord, CommandReply, Station
from kioskfleet.controller.public import CommandList, CommandPublic, CommandState

_CMD = CommandRecord.__table__  # type: ignore[attr-defined]
_REPLY = CommandReply.__table__  # type: ignore[attr-defined]
_AUDIT = Audit.__table__  # type: ignore[attr-defined]
_S = Station.__table__  # type: ignore[attr-defined]

#: a reply's status → the command's state
_REPLY_STATE: dict[str, CommandState] = {
    "ok": "ok",
    "error": "error",
    "expired": "expired",
    "rejected": "error",
}


@dataclass(frozen=True)
class Due:
    """A command to publish now."""

    id: str
    station: str
    name: str
    args: dict[str, Any]
    expires_at: float


def station_exists(*, conn: Connection, station: str) -> bool:
    """Whether the controller knows ``station``."""
    return conn.execute(select(_S.c.id).where(_S.c.id == station)).first() is not None


def create_command(
    *,
    conn: Connection,
    station: str,
    name: str,
    args: dict[str, Any],
    ttl_s: float,
    actor: str,
    source: str | None,
    now: float,
    scope: Collection[str] | None = None,
) -> str | None:
    """Store a command for ``station`` and its audit row; its id, or None for an unknown
    station. Call inside a transaction: both rows or neither.

    Raises:
        OutOfScope: the station's district is outside ``scope`` (None: any district).
    """
    if not people.check_station(conn=conn, station=station, scope=scope):
        return None
    command_id = uuid.uuid4().hex
    expires_at = now + ttl_s
    conn.execute(
        insert(_CMD).values(
            id=command_id,
            station=station,
            name=name,
            args=args,
            created_at=now,
            expires_at=expires_at,
            sent_at=None,
            created_by=actor,
        )
    )
    record_audit(
        conn=conn,
        at=now,
        actor=actor,
        source=source,
        action="command.create",
        target=station,
        details={"command": command_id, "name": name, "args": args, "ttl_s": ttl_s},
        outcome="accepted",
    )
    return command_id


def record_audit(
    *,
    conn: Connection,
    at: float,
    actor: str,
    source: str | None,
    action: str,
    target: str,
    details: dict[str, Any],
    outcome: str,
) -> None:
    """Append one audit row (the controller process only; rows are never changed)."""
    conn.execute(
        insert(_AUDIT).values(
            at=at,
            actor=actor,
            source=source,
            action=action,
            target=target,
            details=details,
            outcome=outcome,
        )
    )


def claim_due(*, conn: Connection, stations: Collection[str], now: float) -> list[Due]:
    """The unsent, unexpired commands of those ``stations`` that are not offline, each marked
    sent here (``sent_at`` = ``now``): the caller publishes exactly these. A command another
    caller claimed first is left out."""
    if not stations:
        return []
    rows = conn.execute(
        select(_CMD.c.id, _CMD.c.station, _CMD.c.name, _CMD.c.args, _CMD.c.expires_at)
        .join(_S, _S.c.id == _CMD.c.station)
        .where(
            _CMD.c.station.in_(list(stations)),
            _CMD.c.sent_at.is_(None),
            _CMD.c.expires_at > now,
            _S.c.status != "offline",
        )
        .order_by(_CMD.c.created_at, _CMD.c.id)
    ).all()
    due: list[Due] = []
    for row in rows:
        claimed = conn.execute(
            update(_CMD).where(_CMD.c.id == row.id, _CMD.c.sent_at.is_(None)).values(sent_at=now)
        )
        if claimed.rowcount == 1:
            due.append(Due(row.id, row.station, row.name, dict(row.args or {}), row.expires_at))
    return due


def waiting_stations(*, conn: Connection, now: float) -> list[str]:
    """Stations with unsent, unexpired commands."""
    rows = conn.execute(
        select(_CMD.c.station)
        .where(_CMD.c.sent_at.is_(None), _CMD.c.expires_at > now)
        .distinct()
        .order_by(_CMD.c.station)
    )
    return [row.station for row in rows]


def _replies(conn: Connection, station: str, ids: Iterable[str]) -> dict[str, Any]:
    """The first stored reply to each command id (a redelivered command is answered again
    from the agent's record: the same answer under a new seq)."""
    first: dict[str, Any] = {}
    rows = conn.execute(
        select(
            _REPLY.c.command_id,
            _REPLY.c.status,
            _REPLY.c.result,
            _REPLY.c.error,
            _REPLY.c.ts,
            _REPLY.c.received_at,
        )
        .where(_REPLY.c.station == station, _REPLY.c.command_id.in_(list(ids)))
        .order_by(_REPLY.c.received_at, _REPLY.c.id)
    )
    for row in rows:
        first.setdefault(row.command_id, row)
    return first


def _state(row: Any, reply: Any, now: float) -> CommandState:
    if reply is not None:
        return _REPLY_STATE.get(reply.status, "error")
    if row.expires_at <= now:
        return "expired"
    return "pending" if row.sent_at is None else "sent"


def _public(row: Any, reply: Any, now: float) -> dict[str, Any]:
    return {
        "id": row.id,
        "station": row.station,
        "name": row.name,
        "args": row.args or {},
        "state": _state(row, reply, now),
        "created_at": utc(row.created_at),
        "expires_at": utc(row.expires_at),
        "sent_at": utc_or_none(row.sent_at),
        "created_by": row.created_by,
        "reply": None
        if reply is None
        else {
            "status": reply.status,
            "result": reply.result,
            "error": reply.error,
            "at": utc(reply.ts),
            "received_at": utc(reply.received_at),
        },
    }


def get_command(
    *, conn: Connection, station: str, command_id: str, now: float
) -> CommandPublic | None:
    """One command of ``station`` and where it stands; None when it has no such command."""
    row = conn.execute(
        select(_CMD).where(_CMD.c.id == command_id, _CMD.c.station == station)
    ).first()
    if row is None:
        return None
    reply = _replies(conn, station, [command_id]).get(command_id)
    return CommandPublic.model_validate(_public(row, reply, now))


def list_commands(
    *, conn: Connection, station: str, limit: int, offset: int, now: float
) -> CommandList:
    """``station``'s commands, newest first, paged."""
    total = int(
        conn.execute(
            select(func.count()).select_from(_CMD).where(_CMD.c.station == station)
        ).scalar_one()
    )
    rows = conn.execute(
        select(_CMD)
        .where(_CMD.c.station == station)
        .order_by(_CMD.c.created_at.desc(), _CMD.c.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    replies = _replies(conn, station, [row.id for row in rows]) if rows else {}
    return CommandList.model_validate(
        {"items": [_public(row, replies.get(row.id), now) for row in rows], "total": total}
    )
