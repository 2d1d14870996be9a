"""The signed update repository over HTTP: ``/tuf/metadata/…`` and ``/tuf/targets/…``
(open to anyone, CONTRACT §6: what it serves is signed and checked by the client)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse

from kioskfleet.controller.api.deps import ControllerDep, open_to
from kioskfleet.controller.public import ErrorDetail
from kioskfleet.controller.tufrepo import TufRepository

router = APIRouter(
    prefix="/tuf",
    tags=["updates"],
    dependencies=[Depends(open_to("kiosks updating: what it serves is signed"))],
)

# N.ROLE.json or timestamp.json; role names are ours (no dots, no slashes)
_METADATA: Final = re.compile(r"^(?:[1-9][0-9]{0,19}\.)?[a-z][a-z0-9_-]{0,63}\.json$")
# DIR/HASH.NAME, as consistent snapshots name targets
_TARGET: Final = re.compile(r"^[a-z]+/[0-9a-f]{64}\.[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}$")


def get_repository(controller: ControllerDep) -> TufRepository:
    """The controller's repository; 404 where none is configured."""
    if controller.tuf is None:
        raise HTTPException(404, "no update repository is configured")
    return controller.tuf.repository


RepositoryDep = Annotated[TufRepository, Depends(get_repository)]


def _file(folder: Path, name: str, pattern: re.Pattern[str], *, immutable: bool) -> FileResponse:
    if not pattern.fullmatch(name):
        raise HTTPException(404, "no such file")
    path = folder / name
    if not path.is_file():
        raise HTTPException(404, "no such file")
    # versioned files never change; timestamp.json changes at every re-signing
    cache = "public, max-age=31536000, immutable" if immutable else "no-cache"
    return FileResponse(path, headers={"Cache-Control": cache})


_NOT_HERE: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorDetail, "description": "No such file, or no repository configured"}
}


@router.get("/metadata/{name}", response_class=FileResponse, responses=_NOT_HERE)
def metadata(name: str, repository: RepositoryDep) -> FileResponse:
    """A metadata file: ``N.root.json``, ``N.targets.json``, ``timestamp.json``, …"""
    return _file(repository.metadata_dir, name, _METADATA, immutable=name != "timestamp.json")


@router.get("/targets/{path:path}", response_class=FileResponse, responses=_NOT_HERE)
def target(path: str, repository: RepositoryDep) -> FileResponse:
    """A target file, by its hash-prefixed name."""
    return _file(repository.targets_dir, path, _TARGET, immutable=True)
