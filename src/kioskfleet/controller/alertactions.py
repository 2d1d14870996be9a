"""People's changes to alerts (acknowledge, resolve), silences and maintenance windows:
keyword-only functions, no HTTP in them (decision 27, and its API side in decision 42).

An acknowledgement or a resolution is decided by the pure lifecycle
(:func:`~kioskfleet.controller.alerts.lifecycle.acknowledge` / ``resolve``, which raise
:class:`~kioskfleet.controller.alerts.model.Conflict` where the state does not allow it) from
the row as read, then written in one transaction with its history line, its notifications
(the outbox) and its audit row, by a conditional update
(:func:`~kioskfleet.controller.alertrows.write_transition`): when the row changed in between
(the writer cleared it, another person acknowledged it) nothing is written and the change is a
:class:`LostRace`, a conflict too. Refused changes are audited as well (outcome
``conflict``), in a transaction of their own.

Silences and maintenance windows are only stored (with their audit row): the writer applies
them to alert rows in its sweep.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable
from types import SimpleNamespace
from typing import Any, Final, Literal

from pydantic import ValidationError
from sqlalchemy import Connection, Engine, delete, insert, select, update

from kioskfleet.controller import alertviews, people
from kioskfleet.controller.alertrows import ALERT, alert_of, write_transition
from kioskfleet.controller.alerts import lifecycle
from kioskfleet.controller.alerts.config import Routing
from kioskfleet.controller.alerts.model import Alert, Conflict, Transition
from kioskfleet.controller.alerts.suppress import Maintenance, Matcher, Silence
from kioskfleet.controller.commands import record_audit
from kioskfleet.controller.models import MaintenanceRow, SilenceRow
from kioskfleet.controller.notify.config import ReceiversSettings
from kioskfleet.controller.notify.outbox import notifications_for
from kioskfleet.controller.notify.sender import insert_rows
from kioskfleet.controller.public import (
    AlertDetail,
    MaintenancePublic,
    MaintenanceRequest,
    SilencePublic,
    SilenceRequest,
)

_SIL = SilenceRow.__table__  # type: ignore[attr-defined]
_MT = MaintenanceRow.__table__  # type: ignore[attr-defined]

PersonAction = Literal["ack", "resolve"]
#: the audit outcome of each action when it is done
_DONE: Final[dict[PersonAction, str]] = {"ack": "acknowledged", "resolve": "resolved"}


class LostRace(Conflict):
    """The alert changed between the read a person's change was decided from and its write."""


class Refused(ValueError):
    """A request that is well formed but cannot be stored (an end already past, …): a 422
    naming the field ``loc``."""

    def __init__(self, loc: str, message: str) -> None:
        super().__init__(message)
        self.loc = loc


def read_alert(
    *, conn: Connection, alert_id: str, scope: Collection[str] | None = None
) -> Alert | None:
    """The alert as stored, or None.

    Raises:
        OutOfScope: it exists, but its district is outside ``scope`` (None: any district);
            the scope is a condition of the query.
    """
    row = conn.execute(
        select(ALERT, people.in_scope(ALERT.c.district, scope).label("in_scope")).where(
            ALERT.c.id == alert_id
        )
    ).first()
    if row is None:
        return None
    values = dict(row._mapping)
    if not values.pop("in_scope"):
        raise people.OutOfScope(f"alert {alert_id} is outside your districts")
    return alert_of(values)


def decide(
    alert: Alert, action: PersonAction, *, by: str, note: str | None, now: float
) -> Transition:
    """The transition of ``action`` on ``alert`` (pure).

    Raises:
        Conflict: its state does not allow it.
    """
    if action == "ack":
        return lifecycle.acknowledge(alert, by=by, now=now, note=note)
    return lifecycle.resolve(alert, by=by, now=now, note=note)


def apply_change(
    *,
    conn: Connection,
    transition: Transition,
    action: PersonAction,
    receivers: ReceiversSettings,
    routing: Routing,
    source: str | None,
    now: float,
) -> bool:
    """Write a person's ``transition`` in the caller's transaction: the row (conditional on
    it still holding ``transition.before``) and its history, the notifications, the audit
    row. False, with nothing written, when the row changed since it was read."""
    # acknowledged or resolved, it escalates no more (routing.route stops the clock)
    if not write_transition(conn, transition, now, next_escalation_at=None):
        return False
    insert_rows(conn, notifications_for(transition, receivers, routing))
    before = transition.before
    record_audit(
        conn=conn,
        at=now,
        actor=transition.entry.by or "api",
        source=source,
        action=f"alert.{action}",
        target=transition.alert.id,
        details={
            "from": before.state if before is not None else None,
            "to": transition.alert.state,
            "note": transition.entry.note,
        },
        outcome=_DONE[action],
    )
    return True


def act(
    *,
    engine: Engine,
    alert_id: str,
    action: PersonAction,
    by: str,
    scope: Collection[str] | None,
    note: str | None,
    receivers: ReceiversSettings,
    routing: Routing,
    source: str | None,
    now: float,
) -> AlertDetail | None:
    """Acknowledge or resolve an alert as ``by``, whose districts are ``scope`` (None: all);
    the alert afterwards, or None when there is no such alert.

    Raises:
        OutOfScope: the alert's district is outside ``scope``.
        Conflict: its state does not allow it, or it changed while this was decided
            (:class:`LostRace`); the refusal is audited.
    """
    with engine.connect() as conn:
        alert = read_alert(conn=conn, alert_id=alert_id, scope=scope)
    if alert is None:
        return None
    try:
        transition = decide(alert, action, by=by, note=note, now=now)
        # the read above is outside this transaction on purpose: the update's condition is
        # what guards against a change in between, and on SQLite a transaction that read
        # before another one committed could not write at all
        with engine.begin() as conn:
            if not apply_change(
                conn=conn,
                transition=transition,
                action=action,
                receivers=receivers,
                routing=routing,
                source=source,
                now=now,
            ):
                raise LostRace(f"alert {alert_id} changed while this was decided: try again")
            found = alertviews.get_alert(conn=conn, alert_id=alert_id)
    except Conflict as err:
        with engine.begin() as conn:
            record_audit(
                conn=conn,
                at=now,
                actor=by,
                source=source,
                action=f"alert.{action}",
                target=alert_id,
                details={"from": alert.state, "note": note, "reason": str(err)},
                outcome="conflict",
            )
        raise
    return found


# -- silences ------------------------------------------------------------------------------


def silence_in_scope(
    *, conn: Connection, matchers: Iterable[Matcher], scope: Collection[str] | None
) -> bool:
    """Whether a silence with ``matchers`` stays within the districts ``scope`` (None: all).

    A technician's silence must be confined to their districts by one of its matchers (all of
    them must match): ``district = D`` with D in scope, or ``station = S`` with S a station
    of those districts (decided by a query on the station's district).
    """
    if scope is None:
        return True
    for matcher in matchers:
        if matcher.op != "=":
            continue
        if matcher.label == "district" and matcher.value in scope:
            return True
        if matcher.label == "station":
            try:
                if people.check_station(conn=conn, station=matcher.value, scope=scope):
                    return True
            except people.OutOfScope:
                continue
    return False


def create_silence(
    *,
    conn: Connection,
    request: SilenceRequest,
    author: str,
    scope: Collection[str] | None,
    source: str | None,
    now: float,
) -> SilencePublic:
    """Store a silence by ``author`` and its audit row (the caller's transaction).

    Raises:
        Refused: it would already be over.
        OutOfScope: it is not confined to the districts ``scope`` (:func:`silence_in_scope`).
    """
    if not silence_in_scope(conn=conn, matchers=request.matchers, scope=scope):
        raise people.OutOfScope(
            "a technician's silence needs a matcher 'district = <one of your districts>' or "
            "'station = <a station of your districts>'"
        )
    starts_at = request.starts_at.timestamp() if request.starts_at is not None else now
    if request.expires_at is not None:
        expires_at = request.expires_at.timestamp()
    else:
        assert request.duration_s is not None  # the request's validator saw to it
        expires_at = starts_at + request.duration_s
    if expires_at <= now:
        raise Refused("expires_at", "the silence would already be over: it must end after now")
    try:
        silence = Silence(
            id=uuid.uuid4().hex,
            matchers=request.matchers,
            author=author,
            reason=request.reason,
            starts_at=starts_at,
            expires_at=expires_at,
        )
    except ValidationError as err:
        raise Refused("body", f"not a valid silence: {err.errors()[0]['msg']}") from err
    matchers = [m.model_dump() for m in silence.matchers]
    values: dict[str, Any] = {
        "id": silence.id,
        "matchers": matchers,
        "author": silence.author,
        "reason": silence.reason,
        "starts_at": silence.starts_at,
        "expires_at": silence.expires_at,
        "created_at": now,
    }
    conn.execute(insert(_SIL).values(**values))
    record_audit(
        conn=conn,
        at=now,
        actor=silence.author,
        source=source,
        action="silence.create",
        target=silence.id,
        details={
            "matchers": matchers,
            "reason": silence.reason,
            "starts_at": silence.starts_at,
            "expires_at": silence.expires_at,
        },
        outcome="created",
    )
    return SilencePublic.model_validate(alertviews.silence_item(SimpleNamespace(**values), now))


def end_silence(
    *,
    conn: Connection,
    silence_id: str,
    by: str,
    scope: Collection[str] | None,
    source: str | None,
    now: float,
) -> SilencePublic | None:
    """End a silence now (the caller's transaction): an active one gets ``expires_at`` =
    ``now``; a pending one, never in force, is deleted (a silence ends after it starts) and
    shown ending where it would have started. None when there is no such silence.

    Raises:
        Conflict: it has already expired.
        OutOfScope: it is not confined to the districts ``scope`` (None: all).
    """
    row = conn.execute(select(_SIL).where(_SIL.c.id == silence_id)).first()
    if row is None:
        return None
    matchers = [Matcher.model_validate(m) for m in row.matchers]
    if not silence_in_scope(conn=conn, matchers=matchers, scope=scope):
        raise people.OutOfScope(f"silence {silence_id} reaches beyond your districts")
    values = dict(row._mapping)
    if row.expires_at <= now:
        raise Conflict(f"silence {silence_id} has already expired")
    if row.starts_at > now:
        conn.execute(delete(_SIL).where(_SIL.c.id == silence_id))
        values["expires_at"] = row.starts_at
        outcome = "withdrawn"
    else:
        conn.execute(
            update(_SIL)
            .where(_SIL.c.id == silence_id, _SIL.c.expires_at > now)
            .values(expires_at=now)
        )
        values["expires_at"] = now
        outcome = "expired"
    record_audit(
        conn=conn,
        at=now,
        actor=by,
        source=source,
        action="silence.expire",
        target=silence_id,
        details={"was": {"starts_at": row.starts_at, "expires_at": row.expires_at}},
        outcome=outcome,
    )
    item = alertviews.silence_item(SimpleNamespace(**values), now)
    item["state"] = "expired"
    return SilencePublic.model_validate(item)


# -- maintenance ---------------------------------------------------------------------------


def start_maintenance(
    *,
    conn: Connection,
    station: str,
    request: MaintenanceRequest,
    by: str,
    scope: Collection[str] | None,
    source: str | None,
    now: float,
) -> MaintenancePublic | None:
    """Store a maintenance window of ``station`` by ``by`` from ``now`` and its audit row
    (the caller's transaction); None for an unknown station.

    Raises:
        Refused: it would already be over.
        OutOfScope: the station's district is outside ``scope`` (None: all).
    """
    if not people.check_station(conn=conn, station=station, scope=scope):
        return None
    if request.until is not None:
        until = request.until.timestamp()
    else:
        assert request.duration_s is not None  # the request's validator saw to it
        until = now + request.duration_s
    if until <= now:
        raise Refused("until", "the maintenance would already be over: 'until' must be after now")
    window = Maintenance(station=station, until=until, by=by, reason=request.reason, starts_at=now)
    values: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "station": window.station,
        "by": window.by,
        "reason": window.reason,
        "starts_at": now,
        "until": window.until,
        "created_at": now,
    }
    conn.execute(insert(_MT).values(**values))
    record_audit(
        conn=conn,
        at=now,
        actor=window.by,
        source=source,
        action="maintenance.start",
        target=station,
        details={"maintenance": values["id"], "until": window.until, "reason": window.reason},
        outcome="started",
    )
    return MaintenancePublic.model_validate(
        alertviews.maintenance_item(SimpleNamespace(**values), now)
    )


def end_maintenance(
    *,
    conn: Connection,
    station: str,
    by: str,
    scope: Collection[str] | None,
    source: str | None,
    now: float,
) -> list[MaintenancePublic] | None:
    """End ``station``'s maintenance windows in force now (``until`` = ``now``) and audit it
    (the caller's transaction); the windows ended, or None for an unknown station.

    Raises:
        Conflict: the station is not in maintenance.
        OutOfScope: the station's district is outside ``scope`` (None: all).
    """
    if not people.check_station(conn=conn, station=station, scope=scope):
        return None
    where = alertviews.maintenance_where(station=station, state="active", now=now)
    rows = conn.execute(select(_MT).where(*where).order_by(_MT.c.created_at.desc())).all()
    if not rows:
        raise Conflict(f"station {station} is not in maintenance")
    conn.execute(update(_MT).where(*where).values(until=now))
    record_audit(
        conn=conn,
        at=now,
        actor=by,
        source=source,
        action="maintenance.end",
        target=station,
        details={"maintenance": [row.id for row in rows]},
        outcome="ended",
    )
    ended = [
        alertviews.maintenance_item(SimpleNamespace(**{**row._mapping, "until": now}), now)
        for row in rows
    ]
    return [MaintenancePublic.model_validate(item) for item in ended]
