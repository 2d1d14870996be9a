"""A software release file (CONTRACT §4): a gzip tarball with ``VERSION`` (the version
string) and ``manifest.json`` (``{"version": str, "files": {path: sha256 hex}}``) at its root.

:func:`check_software` reads the archive without unpacking it and checks everything that can be
checked before a byte lands on disk: the version in both places, every member a plain file or
folder under a relative path (no links, devices, ``..`` or absolute names), every file listed
in the manifest with its SHA-256 and nothing unlisted. The controller runs it on upload, the
agent again before it unpacks.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Final

from kioskfleet.updates.targets import ReleaseTarget, TargetError

VERSION_FILE: Final = "VERSION"
MANIFEST_FILE: Final = "manifest.json"
#: a software release larger than this is refused (a kiosk agent is a few MB)
MAX_SOFTWARE_BYTES: Final = 256 * 1024 * 1024


class SoftwareError(ValueError):
    """Not a software release we would install; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class SoftwareManifest:
    """What a checked software release holds."""

    version: str
    files: dict[str, str]


def _name(member: tarfile.TarInfo) -> str:
    path = PurePosixPath(member.name)
    parts = [p for p in path.parts if p != "."]
    if path.is_absolute() or not parts or ".." in parts:
        raise SoftwareError(f"{member.name!r}: only relative paths inside the release")
    return "/".join(parts)


def check_software(data: bytes, version: str) -> SoftwareManifest:
    """Check a release file against its announced ``version``; :class:`SoftwareError` if
    anything is off."""
    try:
        ReleaseTarget("software", version, 1)
    except TargetError as err:
        raise SoftwareError(str(err)) from err
    if len(data) > MAX_SOFTWARE_BYTES:
        raise SoftwareError(f"larger than {MAX_SOFTWARE_BYTES} bytes")
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")  # noqa: SIM115
    except (tarfile.TarError, OSError, EOFError) as err:
        raise SoftwareError(f"not a gzip tarball: {err}") from err
    contents: dict[str, bytes] = {}
    unpacked = 0
    with archive:
        try:
            for member in archive:
                name = _name(member)
                if member.isdir():
                    continue
                if not member.isfile():
                    raise SoftwareError(f"{member.name!r}: only plain files and folders")
                if name in contents:
                    raise SoftwareError(f"{name!r} is in the tarball twice")
                unpacked += member.size
                if unpacked > 4 * MAX_SOFTWARE_BYTES:
                    raise SoftwareError(f"unpacks to more than {4 * MAX_SOFTWARE_BYTES} bytes")
                handle = archive.extractfile(member)
                if handle is None:
                    raise SoftwareError(f"{member.name!r}: unreadable")
                contents[name] = handle.read()
        except (tarfile.TarError, OSError, EOFError) as err:
            raise SoftwareError(f"a broken tarball: {err}") from err
    for required in (VERSION_FILE, MANIFEST_FILE):
        if required not in contents:
            raise SoftwareError(f"no {required} at the root of the tarball")
    # VERSION stays among the files the manifest must list: the agent's updater checks every
    # file but manifest.json against it, and a release it refuses must not be published
    announced = contents[VERSION_FILE].decode("utf-8", "replace").strip()
    if announced != version:
        raise SoftwareError(f"VERSION says {announced!r}, the release is {version!r}")
    try:
        manifest = json.loads(contents.pop(MANIFEST_FILE))
    except (ValueError, UnicodeDecodeError) as err:
        raise SoftwareError(f"manifest.json is not JSON: {err}") from err
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(manifest, dict) or manifest.get("version") != version:
        raise SoftwareError(f"manifest.json's version is not {version!r}")
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in files.items()
    ):
        raise SoftwareError('manifest.json needs "files": {path: sha256 hex}')
    for path, digest in files.items():
        if path not in contents:
            raise SoftwareError(f"manifest.json lists {path!r}, the tarball lacks it")
        if hashlib.sha256(contents[path]).hexdigest() != digest.lower():
            raise SoftwareError(f"{path!r}: its SHA-256 is not the manifest's")
    unlisted = sorted(set(contents) - set(files))
    if unlisted:
        raise SoftwareError(f"{unlisted[0]!r} is in the tarball but not in manifest.json")
    return SoftwareManifest(
        version=version, files={p: d for p, d in files.items() if p != VERSION_FILE}
    )


def build_software(version: str, files: dict[str, bytes]) -> bytes:
    """A release file with ``files`` (tests, the demo): VERSION, manifest, the files. The same
    arguments give the same bytes (no time in the gzip header, members dated 0), so a
    release built twice is one release."""
    listed = {VERSION_FILE: version.encode() + b"\n", **files}
    manifest = {
        "version": version,
        "files": {path: hashlib.sha256(data).hexdigest() for path, data in listed.items()},
    }
    out = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w") as archive,
    ):
        for name, data in [
            (MANIFEST_FILE, json.dumps(manifest, sort_keys=True).encode()),
            *listed.items(),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()
