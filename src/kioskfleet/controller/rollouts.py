"""Rollouts over the database (CONTRACT §4 ``/api/rollouts``): keyword-only functions over a
connection, no HTTP and no MQTT in them. The decisions are :mod:`.rollout_plan`'s (pure); this
shell reads and writes the ``rollout`` and ``rollout_station`` tables, creates each station's
``install`` command through :mod:`.commands` (stored before it is published, pending until an
offline station's next birth), and learns the stations' progress from their ``update`` events
as the ingest writer stored them in ``event_batch`` — read by id, from where it stopped
(``rollout_cursor``), so nothing in the writer knows about rollouts.

Everything here runs in the controller process: the API's threads and the rollout runner's
thread (:class:`~kioskfleet.controller.rollout_runner.RolloutRunner`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import Connection, bindparam, func, insert, or_, select, update

from kioskfleet.controller import commands
from kioskfleet.controller.crud import utc, utc_or_none
from kioskfleet.controller.models import (
    CommandRecord,
    EventBatch,
    RolloutCursor,
    RolloutRow,
    RolloutStationRow,
    Station,
)
from kioskfleet.controller.rollout_plan import (
    ACTIVE,
    FINISHED,
    PROGRESS,
    OnFailure,
    Policy,
    Progress,
    RolloutError,
    RolloutState,
    RolloutView,
    StationView,
    Step,
    decide,
    plan_waves,
)
from kioskfleet.controller.rollout_plan import abort as abort_view
from kioskfleet.controller.rollout_plan import pause as pause_view
from kioskfleet.controller.rollout_plan import resume as resume_view
from kioskfleet.controller.tufrepo.releases import ReleasePublic

_R = RolloutRow.__table__  # type: ignore[attr-defined]
_RS = RolloutStationRow.__table__  # type: ignore[attr-defined]
_CUR = RolloutCursor.__table__  # type: ignore[attr-defined]
_EB = EventBatch.__table__  # type: ignore[attr-defined]
_S = Station.__table__  # type: ignore[attr-defined]
_CMD = CommandRecord.__table__  # type: ignore[attr-defined]

#: the ``install`` command of a station whose rollout has no deadline waits this long at most
#: for an offline station (the commands' own bound)
INSTALL_TTL: Final = 7 * 24 * 3600.0
#: event batches read per pass
EVENTS_PER_PASS: Final = 2000
_CURSOR: Final = "events"
#: install commands one pass stores at most for one rollout
SENDS_PER_PASS: Final = 500


class RolloutTarget(BaseModel):
    """Which stations (a missing or empty list means all)."""

    model_config = ConfigDict(extra="forbid")

    districts: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list, max_length=1000
    )
    site_types: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=100
    )
    profiles: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list, max_length=1000
    )
    stations: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=100_000
    )


class RolloutRequest(BaseModel):
    """``POST /api/rollouts``."""

    model_config = ConfigDict(extra="forbid")

    release: Annotated[str, Field(min_length=1, max_length=64)]
    target: RolloutTarget = Field(default_factory=RolloutTarget)
    waves: list[int] = Field(default=[10, 50, 100], min_length=1, max_length=20)
    failure_threshold: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.2
    success_threshold: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = None
    on_failure: OnFailure = "pause"
    canary: bool = True
    start_at: AwareDatetime | None = None
    deadline: AwareDatetime | None = None


class RolloutAction(BaseModel):
    """Body of pause / resume / abort / revert (optional)."""

    model_config = ConfigDict(extra="forbid")

    #: ignored: the authenticated person acts
    by: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        default=None, description="ignored: the authenticated person acts", deprecated=True
    )
    note: Annotated[str, Field(max_length=2000)] | None = None


class RolloutStationPublic(BaseModel):
    """One targeted station's progress."""

    station: str
    wave: int
    progress: Progress
    updated_at: datetime
    error: str | None


class WavePublic(BaseModel):
    """A wave: its number (0: the canaries), cumulative percentage, stations by progress."""

    wave: int
    percent: int | None
    stations: int
    progress: dict[str, int]


class RolloutPublic(BaseModel):
    """A rollout as the API shows it."""

    id: str
    release: str
    kind: str
    version: str | None
    state: RolloutState
    wave: int
    waves: list[int]
    canary: bool
    failure_threshold: float
    success_threshold: float
    on_failure: OnFailure
    target: RolloutTarget
    start_at: datetime | None
    deadline: datetime | None
    reason: str | None
    reverts: str | None
    created_at: datetime
    created_by: str
    updated_at: datetime
    summary: dict[str, int]
    wave_summary: list[WavePublic]
    stations: list[RolloutStationPublic]


class RolloutList(BaseModel):
    """Rollouts, newest first (their stations left out: ``GET /api/rollouts/{id}``)."""

    items: list[RolloutPublic]
    total: int


class RolloutNotFound(LookupError):
    """No such rollout (HTTP 404)."""


class RolloutConflict(RolloutError):
    """Not allowed from the rollout's state (HTTP 409)."""


# -- creating ------------------------------------------------------------------------------------
def policy_of(body: RolloutRequest) -> Policy:
    """The request's policy, checked.

    Raises:
        RolloutError: bad waves, thresholds or times.
    """
    return Policy(
        waves=tuple(body.waves),
        failure_threshold=body.failure_threshold,
        success_threshold=body.success_threshold,
        on_failure=body.on_failure,
        canary=body.canary,
        start_at=body.start_at.timestamp() if body.start_at else None,
        deadline=body.deadline.timestamp() if body.deadline else None,
    )


def targeted(*, conn: Connection, target: RolloutTarget) -> dict[str, dict[str, Any]]:
    """The known stations ``target`` selects: id → its site type and profile.

    Raises:
        RolloutError: an explicitly named station is unknown.
    """
    query = select(_S.c.id, _S.c.site_type, _S.c.profile)
    if target.districts:
        query = query.where(_S.c.district.in_(target.districts))
    if target.site_types:
        query = query.where(_S.c.site_type.in_(target.site_types))
    if target.profiles:
        query = query.where(_S.c.profile.in_(target.profiles))
    if target.stations:
        query = query.where(_S.c.id.in_(target.stations))
    found = {
        row.id: {"site_type": row.site_type, "profile": row.profile} for row in conn.execute(query)
    }
    if target.stations:
        known = {
            row.id for row in conn.execute(select(_S.c.id).where(_S.c.id.in_(target.stations)))
        }
        unknown = sorted(set(target.stations) - known)
        if unknown:
            raise RolloutError(f"target.stations: unknown station(s) {', '.join(unknown[:10])}")
    return found


def release_info(release: ReleasePublic) -> dict[str, Any]:
    """What a rollout keeps of its release: version, counter, target name per site type."""
    return {
        "version": release.version,
        "counter": release.release_counter,
        "targets": {t.site_type or "software": t.name for t in release.targets},
    }


def create_rollout(
    *,
    conn: Connection,
    body: RolloutRequest,
    release: ReleasePublic,
    actor: str,
    source: str | None,
    now: float,
    reverts: str | None = None,
) -> str:
    """Store a rollout, its planned stations and the audit row; its id. Nothing is sent here:
    the runner starts it (at ``start_at``, or at its next pass).

    Raises:
        RolloutError: the policy or the target is unusable (HTTP 422).
    """
    policy = policy_of(body)
    if policy.deadline is not None and policy.deadline <= now:
        raise RolloutError("deadline: must be in the future")
    stations = targeted(conn=conn, target=body.target)
    if not stations:
        raise RolloutError("target: selects no known station")
    info = release_info(release)
    rollout_id = uuid.uuid4().hex
    waves = plan_waves(
        {s: d["profile"] for s, d in stations.items()},
        policy.waves,
        canary=policy.canary,
        seed=rollout_id,
    )
    conn.execute(
        insert(_R).values(
            id=rollout_id,
            release=release.id,
            kind=release.kind,
            release_info=info,
            target=body.target.model_dump(),
            waves=list(policy.waves),
            failure_threshold=policy.failure_threshold,
            success_threshold=policy.success_threshold,
            on_failure=policy.on_failure,
            canary=policy.canary,
            start_at=policy.start_at,
            deadline=policy.deadline,
            state="scheduled",
            wave=-1,
            accepted_wave=None,
            reason=None,
            reverts=reverts,
            created_at=now,
            created_by=actor,
            updated_at=now,
        )
    )
    rows = []
    for station, wave in waves.items():
        progress, error = "pending", None
        if release.kind == "catalogue" and stations[station]["site_type"] not in info["targets"]:
            progress = "failed"
            error = f"no catalogue of this release for site type {stations[station]['site_type']}"
        rows.append(
            {
                "rollout_id": rollout_id,
                "station": station,
                "wave": wave,
                "progress": progress,
                "error": error,
                "command_id": None,
                "updated_at": now,
            }
        )
    conn.execute(insert(_RS), rows)
    commands.record_audit(
        conn=conn,
        at=now,
        actor=actor,
        source=source,
        action="rollout.revert" if reverts else "rollout.create",
        target=rollout_id,
        details={
            "release": release.id,
            "reverts": reverts,
            "stations": len(stations),
            **body.model_dump(mode="json"),
        },
        outcome="scheduled",
    )
    return rollout_id


# -- reading -------------------------------------------------------------------------------------
def _view(row: Any) -> RolloutView:
    return RolloutView(state=row.state, wave=row.wave, accepted_wave=row.accepted_wave)


def _policy(row: Any) -> Policy:
    return Policy(
        waves=tuple(row.waves),
        failure_threshold=row.failure_threshold,
        success_threshold=row.success_threshold,
        on_failure=row.on_failure,
        canary=row.canary,
        start_at=row.start_at,
        deadline=row.deadline,
    )


def _public(row: Any, stations: Sequence[Any], *, with_stations: bool) -> RolloutPublic:
    summary = dict.fromkeys(PROGRESS, 0)
    by_wave: dict[int, dict[str, int]] = {}
    for s in stations:
        summary[s.progress] = summary.get(s.progress, 0) + 1
        wave = by_wave.setdefault(s.wave, {})
        wave[s.progress] = wave.get(s.progress, 0) + 1
    percents = list(row.waves)
    return RolloutPublic(
        id=row.id,
        release=row.release,
        kind=row.kind,
        version=(row.release_info or {}).get("version"),
        state=row.state,
        wave=row.wave,
        waves=percents,
        canary=row.canary,
        failure_threshold=row.failure_threshold,
        success_threshold=_policy(row).success,
        on_failure=row.on_failure,
        target=RolloutTarget.model_validate(row.target),
        start_at=utc_or_none(row.start_at),
        deadline=utc_or_none(row.deadline),
        reason=row.reason,
        reverts=row.reverts,
        created_at=utc(row.created_at),
        created_by=row.created_by,
        updated_at=utc(row.updated_at),
        summary=summary,
        wave_summary=[
            WavePublic(
                wave=w,
                percent=percents[w - 1] if 0 < w <= len(percents) else None,
                stations=sum(counts.values()),
                progress=counts,
            )
            for w, counts in sorted(by_wave.items())
        ],
        stations=[
            RolloutStationPublic(
                station=s.station,
                wave=s.wave,
                progress=s.progress,
                updated_at=utc(s.updated_at),
                error=s.error,
            )
            for s in stations
        ]
        if with_stations
        else [],
    )


def _stations(conn: Connection, rollout_id: str) -> list[Any]:
    return list(
        conn.execute(
            select(_RS).where(_RS.c.rollout_id == rollout_id).order_by(_RS.c.wave, _RS.c.station)
        )
    )


def get_rollout(*, conn: Connection, rollout_id: str) -> RolloutPublic | None:
    """One rollout with every station's progress; None when unknown."""
    row = conn.execute(select(_R).where(_R.c.id == rollout_id)).first()
    if row is None:
        return None
    return _public(row, _stations(conn, rollout_id), with_stations=True)


def list_rollouts(*, conn: Connection, limit: int, offset: int) -> RolloutList:
    """Rollouts, newest first, with their summaries."""
    total = int(conn.execute(select(func.count()).select_from(_R)).scalar_one())
    rows = conn.execute(
        select(_R).order_by(_R.c.created_at.desc(), _R.c.id).limit(limit).offset(offset)
    ).all()
    items = [_public(row, _stations(conn, row.id), with_stations=False) for row in rows]
    return RolloutList(items=items, total=total)


def rollout_row(*, conn: Connection, rollout_id: str) -> Any:
    """The stored row.

    Raises:
        RolloutNotFound: no such rollout.
    """
    row = conn.execute(select(_R).where(_R.c.id == rollout_id)).first()
    if row is None:
        raise RolloutNotFound(f"no rollout {rollout_id!r}")
    return row


# -- people's actions ----------------------------------------------------------------------------
Action = Literal["pause", "resume", "abort"]


def act(
    *,
    conn: Connection,
    rollout_id: str,
    action: Action,
    actor: str,
    source: str | None,
    note: str | None,
    now: float,
) -> None:
    """Pause, resume or abort, with its audit row. An abort also withdraws the ``install``
    commands still waiting for an offline station (they expire now).

    Raises:
        RolloutNotFound: no such rollout.
        RolloutConflict: not allowed from its state.
    """
    row = rollout_row(conn=conn, rollout_id=rollout_id)
    view = _view(row)
    change = {"pause": pause_view, "resume": resume_view, "abort": abort_view}[action]
    try:
        new = change(view)
    except RolloutError as err:
        raise RolloutConflict(str(err)) from err
    done = conn.execute(
        update(_R)
        .where(_R.c.id == rollout_id, _R.c.state == row.state)
        .values(
            state=new.state,
            accepted_wave=new.accepted_wave,
            reason=f"{action} by {actor}" + (f": {note}" if note else ""),
            updated_at=now,
        )
    )
    if done.rowcount != 1:
        raise RolloutConflict("the rollout changed meanwhile; look again")
    if action == "abort":
        _withdraw(conn, rollout_id, now)
    commands.record_audit(
        conn=conn,
        at=now,
        actor=actor,
        source=source,
        action=f"rollout.{action}",
        target=rollout_id,
        details={"from": row.state, "to": new.state, "wave": row.wave, "note": note},
        outcome=new.state,
    )


def _withdraw(conn: Connection, rollout_id: str, now: float) -> None:
    waiting = select(_RS.c.command_id).where(
        _RS.c.rollout_id == rollout_id, _RS.c.command_id.is_not(None)
    )
    conn.execute(
        update(_CMD)
        .where(_CMD.c.id.in_(waiting), _CMD.c.sent_at.is_(None), _CMD.c.expires_at > now)
        .values(expires_at=now)
    )


# -- the runner's passes ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ProgressRead:
    """What one :func:`read_progress` did."""

    #: event batches read
    batches: int
    #: rollouts whose stations' progress may have changed
    rollouts: frozenset[str]


def read_progress(*, conn: Connection, limit: int = EVENTS_PER_PASS) -> ProgressRead:
    """Apply the ``update`` events stored since the last pass to their rollouts' stations.
    Call in a transaction: the cursor moves with the rows.

    An event older (by the station's clock) than what set the station's progress is ignored
    (a backlog delivered late); a finished station stays finished unless a newer event says
    otherwise (a rollback after ``healthy`` is a failure). Of several events for one station
    in a pass only the newest is written (one UPDATE per station, sent as one executemany).
    """
    cursor = conn.execute(select(_CUR.c.value).where(_CUR.c.name == _CURSOR)).scalar()
    if cursor is None:
        # the first pass ever: what was stored before rollouts existed concerns none of them
        # (and a large database is not read from its beginning)
        cursor = int(conn.execute(select(func.coalesce(func.max(_EB.c.id), 0))).scalar_one())
        conn.execute(insert(_CUR).values(name=_CURSOR, value=cursor))
        return ProgressRead(0, frozenset())
    rows = conn.execute(
        select(_EB.c.id, _EB.c.station, _EB.c.ts, _EB.c.events)
        .where(_EB.c.id > cursor)
        .order_by(_EB.c.id)
        .limit(limit)
    ).all()
    if not rows:
        return ProgressRead(0, frozenset())
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        for event in row.events or ():
            if not isinstance(event, dict) or event.get("type") != "update":
                continue
            rollout, progress = event.get("rollout"), event.get("progress")
            if not isinstance(rollout, str) or progress not in PROGRESS:
                continue
            error = event.get("error")
            if progress == "deferred" and error is None and event.get("reason"):
                error = f"deferred: {event['reason']}"
            key = (rollout, row.station)
            seen = newest.get(key)
            if seen is None or seen["at"] <= row.ts:  # the same time: the later one
                newest[key] = {
                    "rid": rollout,
                    "sid": row.station,
                    "at": row.ts,
                    "p": progress,
                    "err": str(error)[:1000] if error is not None else None,
                }
    if newest:
        conn.execute(
            update(_RS)
            .where(
                _RS.c.rollout_id == bindparam("rid"),
                _RS.c.station == bindparam("sid"),
                # the planning time is the controller's clock, the event's the station's
                or_(_RS.c.progress == "pending", _RS.c.updated_at <= bindparam("at")),
            )
            .values(progress=bindparam("p"), error=bindparam("err"), updated_at=bindparam("at")),
            list(newest.values()),
        )
    conn.execute(update(_CUR).where(_CUR.c.name == _CURSOR).values(value=rows[-1].id))
    return ProgressRead(len(rows), frozenset(rollout for rollout, _ in newest))


def active_rollouts(*, conn: Connection) -> list[str]:
    """Ids of the rollouts that may still change, oldest first."""
    rows = conn.execute(
        select(_R.c.id).where(_R.c.state.in_(sorted(ACTIVE))).order_by(_R.c.created_at)
    )
    return [row.id for row in rows]


def step_rollout(
    *, conn: Connection, rollout_id: str, now: float, sends_per_pass: int = SENDS_PER_PASS
) -> list[str]:
    """One judgement of a rollout (:func:`~.rollout_plan.decide`), written: its state, the
    ``install`` commands of the stations it starts (stored, with their audit rows; at most
    ``sends_per_pass``), and the stations it marks failed. Returns the stations whose
    commands to publish."""
    row = rollout_row(conn=conn, rollout_id=rollout_id)
    if row.state not in ACTIVE:
        return []
    stations = conn.execute(
        select(
            _RS.c.station,
            _RS.c.wave,
            _RS.c.progress,
            _RS.c.command_id,
            _S.c.status,
        )
        .select_from(_RS.outerjoin(_S, _S.c.id == _RS.c.station))
        .where(_RS.c.rollout_id == rollout_id)
    ).all()
    views = [
        StationView(
            station=s.station,
            wave=s.wave,
            progress=s.progress,
            # a station failed at planning (no catalogue for it) needs no command
            sent=s.command_id is not None or s.progress in FINISHED,
            online=s.status is not None and s.status != "offline",
        )
        for s in stations
    ]
    step = decide(_view(row), _policy(row), views, now)
    if not step.changed:
        return []
    if len(step.send) > sends_per_pass:
        # a large wave is started over several passes (the rest stays unsent, and the next
        # judgement sends it): one short transaction at a time beside the ingest writer
        step = replace(step, send=step.send[:sends_per_pass])
    _write_step(conn, row, step, now)
    return list(step.send)


def _write_step(conn: Connection, row: Any, step: Step, now: float) -> None:
    values: dict[str, Any] = {
        "state": step.state,
        "wave": step.wave,
        "accepted_wave": step.accepted_wave,
        "updated_at": now,
    }
    if step.reason is not None:
        values["reason"] = step.reason
    conn.execute(update(_R).where(_R.c.id == row.id).values(**values))
    info = row.release_info or {}
    targets: dict[str, str] = info.get("targets", {})
    if step.send:
        site_types: dict[str, str | None] = dict(
            conn.execute(select(_S.c.id, _S.c.site_type).where(_S.c.id.in_(list(step.send)))).all()
        )
        ttl = INSTALL_TTL if row.deadline is None else max(1.0, row.deadline - now)
        ttl = min(ttl, INSTALL_TTL)
        for station in step.send:
            key = "software" if row.kind == "software" else site_types.get(station)
            args = {
                "release": row.release,
                "kind": row.kind,
                "target": targets.get(key or "", ""),
                "version": info.get("version"),
                "counter": info.get("counter"),
                "rollout": row.id,
                "deadline": row.deadline,
            }
            command_id = commands.create_command(
                conn=conn,
                station=station,
                name="install",
                args=args,
                ttl_s=ttl,
                actor=f"rollout:{row.id}",
                source=None,
                now=now,
            )
            conn.execute(
                update(_RS)
                .where(_RS.c.rollout_id == row.id, _RS.c.station == station)
                .values(command_id=command_id or "unknown-station")
            )
    for station, error in step.fail:
        conn.execute(
            update(_RS)
            .where(
                _RS.c.rollout_id == row.id,
                _RS.c.station == station,
                _RS.c.progress.not_in(sorted(FINISHED)),
            )
            .values(progress="failed", error=error, updated_at=now)
        )
    if step.state != row.state:
        commands.record_audit(
            conn=conn,
            at=now,
            actor=f"rollout:{row.id}",
            source=None,
            action=f"rollout.{step.state}",
            target=row.id,
            details={"from": row.state, "to": step.state, "wave": step.wave, "reason": step.reason},
            outcome=step.state,
        )
    if step.state == "aborted":
        _withdraw(conn, row.id, now)


def previous_release(releases: Sequence[ReleasePublic], release_id: str) -> ReleasePublic:
    """The release of the same kind just before ``release_id`` (what a revert ships again).

    Raises:
        RolloutConflict: it is the first of its kind, or unknown.
    """
    current = next((r for r in releases if r.id == release_id), None)
    if current is None:
        raise RolloutConflict(f"release {release_id} is no longer listed")
    older = [
        r
        for r in releases
        if r.kind == current.kind and r.release_counter < current.release_counter
    ]
    if not older:
        raise RolloutConflict(
            f"{release_id} is the first {current.kind} release: there is nothing to revert to"
        )
    return max(older, key=lambda r: r.release_counter)


def stations_of(*, conn: Connection, rollout_id: str) -> list[str]:
    """The stations a rollout targets."""
    rows = conn.execute(select(_RS.c.station).where(_RS.c.rollout_id == rollout_id))
    return [row.station for row in rows]
