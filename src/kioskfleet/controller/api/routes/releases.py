"""Releases (CONTRACT §4): publish one into the signed update repository, list them."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile

from kioskfleet.controller.api.deps import READ, ControllerDep, ReleaseManager
from kioskfleet.controller.api.params import Offset, unprocessable
from kioskfleet.controller.api.routes.tuf import get_repository
from kioskfleet.controller.commands import record_audit
from kioskfleet.controller.public import ErrorDetail
from kioskfleet.controller.tufrepo.releases import (
    ReleaseCreated,
    ReleaseList,
    ReleaseRefused,
    SignedMetadataRequired,
    list_releases,
    publish,
)
from kioskfleet.updates.targets import ReleaseKind

router = APIRouter(prefix="/api/releases", tags=["releases"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorDetail, "description": "Signed metadata required by this deployment"},
    404: {"model": ErrorDetail, "description": "No update repository configured"},
    422: unprocessable("Not a valid release, or metadata refused"),
}


@router.post("", status_code=201, responses=_ERRORS)
def create_release(
    controller: ControllerDep,
    request: Request,
    person: ReleaseManager,
    file: Annotated[UploadFile, File(description="the software tarball or catalogue bundle")],
    kind: Annotated[ReleaseKind, Form()],
    version: Annotated[str, Form(min_length=1, max_length=64)],
    metadata: Annotated[
        UploadFile | None, File(description="the role's next metadata, signed locally")
    ] = None,
) -> ReleaseCreated:
    """Check the file and sign it into the repository: with the uploaded metadata (a release
    manager's key), or with the controller's online release key where allowed. Needs the
    release manager role."""
    repository = get_repository(controller)
    tuf = controller.settings.tuf
    try:
        created = publish(
            repository=repository,
            kind=kind,
            version=version,
            data=file.file.read(),
            metadata=metadata.file.read() if metadata is not None else None,
            online_allowed=tuf is not None and tuf.online_release,
        )
    except SignedMetadataRequired as err:
        raise HTTPException(403, str(err)) from err
    except ReleaseRefused as err:
        raise HTTPException(422, str(err)) from err
    with controller.engine.begin() as conn:
        record_audit(
            conn=conn,
            at=time.time(),
            actor=person.name,
            source=request.client.host if request.client else None,
            action="release.publish",
            target=created.id,
            details=created.model_dump(),
            outcome="published",
        )
    return created


@router.get("", responses={404: _ERRORS[404]}, dependencies=[READ])
def get_releases(
    controller: ControllerDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> ReleaseList:
    """What the repository lists, newest first (software, then catalogue)."""
    releases = list_releases(get_repository(controller))
    return ReleaseList(items=releases[offset : offset + limit], total=len(releases))
