"""Releases (CONTRACT §4 ``/api/releases``): check an uploaded file, sign it into the update
repository — with the release manager's uploaded metadata, or the controller's online release
key where the deployment allows it — and list what the repository holds.

No table: a release is what the ``software`` and ``catalogue`` roles list (decision 33); its id
is ``{kind}-r{counter}``. Who published it and when is in the audit table (the route writes it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel
from tuf.api.metadata import Metadata, Targets
from tuf.api.serialization import DeserializationError

from kioskfleet.controller.tufrepo.repository import RepositoryRefused, TufRepository
from kioskfleet.updates.publish import ReleaseFileError, release_files
from kioskfleet.updates.targets import ReleaseKind, ReleaseTarget, TargetError


class ReleaseRefused(ValueError):
    """The upload is not a release we publish (a bad file, metadata that does not match);
    HTTP 422."""


class SignedMetadataRequired(ReleaseRefused):
    """The deployment does not let the controller sign: HTTP 403."""


class ReleaseTargetPublic(BaseModel):
    """One signed target of a release (a catalogue has one per site type)."""

    name: str
    site_type: str | None
    length: int
    sha256: str


class ReleasePublic(BaseModel):
    """A release as ``GET /api/releases`` lists it."""

    id: str
    kind: ReleaseKind
    version: str
    release_counter: int
    targets: list[ReleaseTargetPublic]


class ReleaseList(BaseModel):
    """Releases, newest counter first per kind (software, then catalogue)."""

    items: list[ReleasePublic]
    total: int


class ReleaseCreated(BaseModel):
    """``POST /api/releases`` → 201."""

    id: str
    kind: ReleaseKind
    version: str
    release_counter: int
    signed_by: Literal["release_manager", "controller"]


def release_id(kind: str, counter: int) -> str:
    """A release's id."""
    return f"{kind}-r{counter}"


def publish(
    *,
    repository: TufRepository,
    kind: ReleaseKind,
    version: str,
    data: bytes,
    metadata: bytes | None,
    online_allowed: bool,
    now: datetime | None = None,
) -> ReleaseCreated:
    """Publish an upload; see the module docstring.

    Raises:
        ReleaseRefused: a bad file, or signed metadata that does not list exactly this
            release's targets (or that the repository refuses: wrong key, stale version, …).
        SignedMetadataRequired: no metadata and the controller may not sign.
    """
    try:
        ReleaseTarget(kind, version, 1, "public_place" if kind == "catalogue" else None)
    except TargetError as err:
        raise ReleaseRefused(str(err)) from err
    try:
        files = release_files(kind, version, data)
    except ReleaseFileError as err:
        raise ReleaseRefused(str(err)) from err
    try:
        if metadata is None:
            if not online_allowed:
                raise SignedMetadataRequired(
                    "this controller does not sign releases: upload metadata signed by a "
                    "release manager (kioskfleet release publish)"
                )
            counter = repository.next_counter(kind)
            repository.add_releases(
                [(ReleaseTarget(kind, version, counter, site), body) for site, body in files],
                now=now,
            )
            return ReleaseCreated(
                id=release_id(kind, counter),
                kind=kind,
                version=version,
                release_counter=counter,
                signed_by="controller",
            )
        counter = _signed_counter(repository, kind, version, metadata, files)
        named = {ReleaseTarget(kind, version, counter, site).name: body for site, body in files}
        repository.submit_role(kind, metadata, named, now=now)
    except RepositoryRefused as err:
        raise ReleaseRefused(str(err)) from err
    return ReleaseCreated(
        id=release_id(kind, counter),
        kind=kind,
        version=version,
        release_counter=counter,
        signed_by="release_manager",
    )


def _signed_counter(
    repository: TufRepository,
    kind: ReleaseKind,
    version: str,
    metadata: bytes,
    files: list[tuple[str | None, bytes]],
) -> int:
    """The counter the release manager gave this release; its new targets must be exactly
    this upload's."""
    try:
        md = Metadata[Targets].from_bytes(metadata)
    except DeserializationError as err:
        raise ReleaseRefused(f"metadata: not valid targets metadata: {err}") from err
    if not isinstance(md.signed, Targets):
        raise ReleaseRefused("metadata: not targets metadata")
    listed = {target.name for target, _ in repository.releases(kind)}
    try:
        new = [
            ReleaseTarget.from_target(name, info.custom)
            for name, info in md.signed.targets.items()
            if name not in listed
        ]
    except TargetError as err:
        raise ReleaseRefused(f"metadata: {err}") from err
    counters = {release.release_counter for release in new}
    if len(counters) != 1:
        raise ReleaseRefused("metadata: it must add exactly one release")
    (counter,) = counters
    expected = {ReleaseTarget(kind, version, counter, site).name for site, _ in files}
    if {release.name for release in new} != expected:
        raise ReleaseRefused(
            f"metadata: it must list exactly this {kind} {version}'s targets "
            f"({', '.join(sorted(expected))})"
        )
    return counter


def list_releases(repository: TufRepository) -> list[ReleasePublic]:
    """What the repository lists, grouped into releases, newest first per kind."""
    out: list[ReleasePublic] = []
    for kind in ("software", "catalogue"):
        grouped: dict[int, ReleasePublic] = {}
        for target, info in repository.releases(kind):
            entry = grouped.setdefault(
                target.release_counter,
                ReleasePublic(
                    id=release_id(kind, target.release_counter),
                    kind=kind,
                    version=target.version,
                    release_counter=target.release_counter,
                    targets=[],
                ),
            )
            entry.targets.append(
                ReleaseTargetPublic(
                    name=target.name,
                    site_type=target.site_type,
                    length=info.length,
                    sha256=info.hashes["sha256"],
                )
            )
        out += [grouped[c] for c in sorted(grouped, reverse=True)]
    return out
