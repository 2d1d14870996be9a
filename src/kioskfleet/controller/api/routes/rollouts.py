"""Rollouts (CONTRACT §4): start one, watch it, pause / resume / abort it, revert a release."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from sqlalchemy import Connection

from kioskfleet.controller import rollouts
from kioskfleet.controller.api.deps import READ, ConnDep, ControllerDep, ReleaseManager
from kioskfleet.controller.api.params import Offset, unprocessable
from kioskfleet.controller.api.routes.tuf import get_repository
from kioskfleet.controller.commands import record_audit
from kioskfleet.controller.people import Principal
from kioskfleet.controller.public import ErrorDetail
from kioskfleet.controller.rollout_plan import RolloutError
from kioskfleet.controller.rollouts import (
    RolloutAction,
    RolloutConflict,
    RolloutList,
    RolloutNotFound,
    RolloutPublic,
    RolloutRequest,
)
from kioskfleet.controller.service import Controller
from kioskfleet.controller.tufrepo.releases import list_releases, release_id
from kioskfleet.controller.tufrepo.repository import RepositoryRefused
from kioskfleet.updates.targets import ReleaseTarget

router = APIRouter(prefix="/api/rollouts", tags=["rollouts"])

RolloutId = Annotated[str, Path(max_length=32)]
_404: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorDetail, "description": "No such rollout (or no update repository)"}
}
_409: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorDetail, "description": "Not allowed from the rollout's state"}
}
_422: dict[int | str, dict[str, Any]] = {
    422: unprocessable("Unknown release, bad waves, thresholds or target")
}


def _source(request: Request) -> str | None:
    return request.client.host if request.client else None


def _read(controller: Controller, rollout_id: str) -> RolloutPublic:
    with controller.engine.connect() as conn:
        found = rollouts.get_rollout(conn=conn, rollout_id=rollout_id)
    if found is None:
        raise HTTPException(404, f"no rollout {rollout_id!r}")
    return found


def _judge_now(controller: Controller) -> None:
    """Start what can start at once (a running controller's runner would within a second)."""
    if controller.ingest is not None:
        controller.rollouts.tick()


@router.post("", status_code=201, responses={**_404, **_422})
def create_rollout(
    controller: ControllerDep, request: Request, person: ReleaseManager, body: RolloutRequest
) -> RolloutPublic:
    """Plan the waves over the targeted stations and start (or schedule) the rollout. Needs
    the release manager role."""
    releases = list_releases(get_repository(controller))
    release = next((r for r in releases if r.id == body.release), None)
    if release is None:
        raise HTTPException(422, f"release: no release {body.release!r} in the repository")
    try:
        with controller.engine.begin() as conn:
            rollout_id = rollouts.create_rollout(
                conn=conn,
                body=body,
                release=release,
                actor=person.name,
                source=_source(request),
                now=time.time(),
            )
    except RolloutError as err:
        raise HTTPException(422, str(err)) from err
    _judge_now(controller)
    return _read(controller, rollout_id)


@router.get("", dependencies=[READ])
def get_rollouts(
    conn: ConnDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> RolloutList:
    """Rollouts, newest first, with their per-progress counts."""
    return rollouts.list_rollouts(conn=conn, limit=limit, offset=offset)


@router.get("/{rollout_id}", responses=_404, dependencies=[READ])
def get_rollout(controller: ControllerDep, rollout_id: RolloutId) -> RolloutPublic:
    """One rollout with every targeted station's progress."""
    return _read(controller, rollout_id)


def _act(
    controller: Controller,
    request: Request,
    person: Principal,
    rollout_id: str,
    action: rollouts.Action,
    body: RolloutAction | None,
) -> RolloutPublic:
    try:
        with controller.engine.begin() as conn:
            rollouts.act(
                conn=conn,
                rollout_id=rollout_id,
                action=action,
                actor=person.name,
                source=_source(request),
                note=body.note if body else None,
                now=time.time(),
            )
    except RolloutNotFound as err:
        raise HTTPException(404, str(err)) from err
    except RolloutConflict as err:
        raise HTTPException(409, str(err)) from err
    controller.rollouts.judge_soon(rollout_id)
    if action == "resume":
        _judge_now(controller)
    return _read(controller, rollout_id)


@router.post("/{rollout_id}/pause", responses={**_404, **_409})
def pause_rollout(
    controller: ControllerDep,
    request: Request,
    person: ReleaseManager,
    rollout_id: RolloutId,
    body: RolloutAction | None = None,
) -> RolloutPublic:
    """Stop starting stations (those under way finish)."""
    return _act(controller, request, person, rollout_id, "pause", body)


@router.post("/{rollout_id}/resume", responses={**_404, **_409})
def resume_rollout(
    controller: ControllerDep,
    request: Request,
    person: ReleaseManager,
    rollout_id: RolloutId,
    body: RolloutAction | None = None,
) -> RolloutPublic:
    """Go on: the current wave is accepted as it stands, the next waves are judged again."""
    return _act(controller, request, person, rollout_id, "resume", body)


@router.post("/{rollout_id}/abort", responses={**_404, **_409})
def abort_rollout(
    controller: ControllerDep,
    request: Request,
    person: ReleaseManager,
    rollout_id: RolloutId,
    body: RolloutAction | None = None,
) -> RolloutPublic:
    """End it: no station starts any more; commands still waiting for offline stations are
    withdrawn."""
    return _act(controller, request, person, rollout_id, "abort", body)


@router.post("/{rollout_id}/revert", status_code=201, responses={**_404, **_409})
def revert_rollout(
    controller: ControllerDep,
    request: Request,
    person: ReleaseManager,
    rollout_id: RolloutId,
    body: RolloutAction | None = None,
) -> RolloutPublic:
    """Undo a bad but healthy release over the same target: the previous release's content is
    published again under a new release counter and rolled out with the same waves. A rollout
    still under way is aborted first."""
    actor = person.name
    repository = get_repository(controller)
    with controller.engine.connect() as conn:
        try:
            row = rollouts.rollout_row(conn=conn, rollout_id=rollout_id)
        except RolloutNotFound as err:
            raise HTTPException(404, str(err)) from err
    tuf = controller.settings.tuf
    if tuf is None or not tuf.online_release:
        raise HTTPException(
            409,
            "this controller does not sign releases: publish the previous content again "
            "with kioskfleet release publish and roll that out",
        )
    try:
        previous = rollouts.previous_release(list_releases(repository), row.release)
    except RolloutConflict as err:
        raise HTTPException(409, str(err)) from err
    counter = repository.next_counter(previous.kind)
    try:
        files = [
            (
                ReleaseTarget(previous.kind, previous.version, counter, t.site_type),
                repository.target_path(t.name, t.sha256).read_bytes(),
            )
            for t in previous.targets
        ]
        repository.add_releases(files)
    except (RepositoryRefused, OSError) as err:
        raise HTTPException(409, f"could not publish the previous content again: {err}") from err
    republished = next(
        r for r in list_releases(repository) if r.id == release_id(previous.kind, counter)
    )
    now = time.time()
    with controller.engine.begin() as conn:
        _audit_republish(conn, actor, _source(request), republished.id, previous.id, now)
        if row.state in ("scheduled", "running", "paused"):
            rollouts.act(
                conn=conn,
                rollout_id=rollout_id,
                action="abort",
                actor=actor,
                source=_source(request),
                note="reverted",
                now=now,
            )
        new_id = rollouts.create_rollout(
            conn=conn,
            body=RolloutRequest(
                release=republished.id,
                target=rollouts.RolloutTarget.model_validate(row.target),
                waves=list(row.waves),
                failure_threshold=row.failure_threshold,
                success_threshold=row.success_threshold,
                on_failure=row.on_failure,
                canary=row.canary,
            ),
            release=republished,
            actor=actor,
            source=_source(request),
            now=now,
            reverts=rollout_id,
        )
    _judge_now(controller)
    return _read(controller, new_id)


def _audit_republish(
    conn: Connection, actor: str, source: str | None, release: str, of: str, now: float
) -> None:
    record_audit(
        conn=conn,
        at=now,
        actor=actor,
        source=source,
        action="release.publish",
        target=release,
        details={"republishes": of},
        outcome="published",
    )
