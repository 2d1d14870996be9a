"""A release manager's side of publishing (``kioskfleet release publish`` builds on it): the
next version of a delegated role's metadata, with one new release, signed locally with the
release manager's own key. The controller checks it (``TufRepository.submit_role``) and only
then publishes snapshot and timestamp; the private key never leaves the release manager.

``current`` must be the role's metadata as a TUF client verified it (ngclient against the
kiosks' root), so a controller cannot slip a target into what the release manager signs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.api.serialization.json import JSONSerializer

from kioskfleet.updates.catalogue import CatalogueError, parse_bundle, split
from kioskfleet.updates.software import SoftwareError, check_software
from kioskfleet.updates.targets import ReleaseKind, ReleaseTarget, TargetError

#: how long a release manager's signature on their role lasts by default
ROLE_LIFETIME = timedelta(days=365)


class ReleaseFileError(ValueError):
    """A file that is not a valid release of the version it is announced as."""


def release_files(kind: ReleaseKind, version: str, data: bytes) -> list[tuple[str | None, bytes]]:
    """The target files of a release: the software tarball as is (checked), or one catalogue
    per site type from the bundle, as ``(site_type, bytes)``."""
    if kind == "software":
        try:
            check_software(data, version)
        except SoftwareError as err:
            raise ReleaseFileError(f"file: {err}") from err
        return [(None, data)]
    try:
        bundle = parse_bundle(data, source="file")
    except CatalogueError as err:
        raise ReleaseFileError(str(err)) from err
    if bundle.version != version:
        raise ReleaseFileError(f"file: the bundle's version is {bundle.version!r}, not {version!r}")
    return list(split(bundle).items())


def next_counter(current: Metadata[Targets] | None) -> int:
    """The release counter the next release in this role gets."""
    counters = [
        ReleaseTarget.from_target(name, info.custom).release_counter
        for name, info in (current.signed.targets.items() if current else ())
    ]
    return max(counters, default=0) + 1


def sign_release(
    current: Metadata[Targets] | None,
    release: ReleaseTarget,
    data: bytes,
    signer: Signer,
    *,
    now: datetime | None = None,
    lifetime: timedelta = ROLE_LIFETIME,
) -> bytes:
    """The role's next metadata listing ``release`` besides what ``current`` lists."""
    return sign_releases(current, [(release, data)], signer, now=now, lifetime=lifetime)


def sign_releases(
    current: Metadata[Targets] | None,
    releases: list[tuple[ReleaseTarget, bytes]],
    signer: Signer,
    *,
    now: datetime | None = None,
    lifetime: timedelta = ROLE_LIFETIME,
) -> bytes:
    """The role's next metadata listing each ``(release, data)`` (length and SHA-256) besides
    what ``current`` lists, signed by ``signer``; as bytes to upload. A catalogue's targets,
    one per site type, share one counter."""
    now = now or datetime.now(UTC)
    listed: dict[str, Any] = dict(current.signed.targets) if current else {}
    floor = next_counter(current)
    for release, data in releases:
        if release.name in listed:
            raise TargetError(f"{release.name} is already listed")
        if release.release_counter < floor:
            raise TargetError(
                f"release counter {release.release_counter} is not above the role's latest"
            )
        info = TargetFile.from_data(release.name, data, ["sha256"])
        info.unrecognized_fields["custom"] = release.custom()
        listed[release.name] = info
    md = Metadata(
        Targets(
            version=current.signed.version + 1 if current else 1,
            expires=(now + lifetime).astimezone(UTC).replace(microsecond=0),
            targets=listed,
        )
    )
    md.sign(signer)
    return md.to_bytes(JSONSerializer(compact=False))
