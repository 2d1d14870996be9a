"""A software release tarball (CONTRACT §4): checked whole before a byte of it is unpacked.

A release is a gzip tarball with ``VERSION`` and ``manifest.json`` (``{"version": str,
"files": {path: sha256 hex}}``) at its root. :func:`verify_tarball` reads it once without
writing anything and refuses it unless every member is a plain file or folder with a safe
relative path, within the size bounds, listed in the manifest with the SHA-256 it has, and
``VERSION``, the manifest and the signed target agree on the version. :func:`unpack` then
writes it into a fresh folder, hashing again as it writes (the file could have changed
between the two reads), and never follows a link: there are none, and ``O_NOFOLLOW`` makes
sure.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Final

from kioskfleet.agent.updater.atomic import fsync_dir
from kioskfleet.agent.updater.errors import UpdateRejected

MANIFEST: Final = "manifest.json"
VERSION_FILE: Final = "VERSION"
_SHA256: Final = re.compile(r"^[0-9a-f]{64}$")
_CHUNK: Final = 1 << 16


@dataclass(frozen=True)
class TarLimits:
    """Bounds a release must keep: a signed tarball can still be a zip bomb by mistake."""

    max_members: int = 20_000
    max_file_bytes: int = 256 << 20
    max_total_bytes: int = 1 << 30
    max_manifest_bytes: int = 4 << 20
    max_path_chars: int = 1024


@dataclass(frozen=True)
class Manifest:
    """A verified manifest: the version and every file's SHA-256."""

    version: str
    files: dict[str, str]


def _clean_path(name: str, limits: TarLimits) -> str:
    """A member's name as a safe relative POSIX path, or :class:`UpdateRejected`."""
    if not name or "\x00" in name or "\\" in name:
        raise UpdateRejected(f"member {name!r}: not a plain path")
    if len(name) > limits.max_path_chars:
        raise UpdateRejected(f"member {name[:40]!r}…: path longer than {limits.max_path_chars}")
    if name.startswith("/"):
        raise UpdateRejected(f"member {name!r}: absolute path")
    parts = [part for part in PurePosixPath(name).parts if part != "."]
    if any(part == ".." for part in parts):
        raise UpdateRejected(f"member {name!r}: path leaves the release folder ('..')")
    if not parts:
        return ""
    return "/".join(parts)


def _open(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r|gz")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise UpdateRejected(f"not a gzip tarball: {err}") from err


def _check_member(
    member: tarfile.TarInfo, limits: TarLimits, seen: dict[str, bool], total: list[int]
) -> str:
    """Check one member; returns its clean path ("" for the root folder itself).

    ``seen`` maps paths met so far to whether they are folders; ``total`` holds the bytes so
    far (one-item list, updated).
    """
    path = _clean_path(member.name, limits)
    if member.issym() or member.islnk():
        raise UpdateRejected(f"member {member.name!r}: links are not allowed in a release")
    if member.isdev() or member.isfifo():
        raise UpdateRejected(f"member {member.name!r}: device or pipe in a release")
    if member.issparse():
        raise UpdateRejected(f"member {member.name!r}: sparse files are not allowed")
    if not (member.isfile() or member.isdir()):
        raise UpdateRejected(f"member {member.name!r}: not a file or folder")
    if len(seen) >= limits.max_members:
        raise UpdateRejected(f"more than {limits.max_members} members")
    if path == "":
        if member.isfile():
            raise UpdateRejected(f"member {member.name!r}: a file named like the root")
        return path
    if path in seen:
        if member.isdir() and seen[path]:
            return path  # a folder named twice is harmless
        raise UpdateRejected(f"member {path!r} appears twice")
    for parent in PurePosixPath(path).parents:
        key = str(parent)
        if key == ".":
            continue
        if seen.get(key) is False:
            raise UpdateRejected(f"member {path!r}: inside {key!r}, which is a file")
        seen.setdefault(key, True)  # a folder, even if the tarball never names it
    if member.isfile():
        if member.size > limits.max_file_bytes:
            raise UpdateRejected(
                f"member {path!r}: {member.size} bytes, more than {limits.max_file_bytes}"
            )
        total[0] += member.size
        if total[0] > limits.max_total_bytes:
            raise UpdateRejected(f"the release unpacks to more than {limits.max_total_bytes} bytes")
    seen[path] = member.isdir()
    return path


def _hash_stream(source: IO[bytes], size: int, sink: IO[bytes] | None = None) -> str:
    digest = hashlib.sha256()
    left = size
    while left > 0:
        chunk = source.read(min(_CHUNK, left))
        if not chunk:
            raise UpdateRejected("the tarball ends inside a file")
        digest.update(chunk)
        if sink is not None:
            sink.write(chunk)
        left -= len(chunk)
    return digest.hexdigest()


def _parse_manifest(raw: bytes, limits: TarLimits) -> Manifest:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UpdateRejected(f"{MANIFEST} is not JSON: {err}") from err
    if not isinstance(data, dict) or set(data) - {"version", "files"}:
        raise UpdateRejected(f'{MANIFEST} must be {{"version": str, "files": {{path: sha256}}}}')
    version, files = data.get("version"), data.get("files")
    if not isinstance(version, str) or not version:
        raise UpdateRejected(f"{MANIFEST}: 'version' must be a string")
    if not isinstance(files, dict):
        raise UpdateRejected(f"{MANIFEST}: 'files' must map paths to SHA-256 hex digests")
    clean: dict[str, str] = {}
    for name, digest in files.items():
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise UpdateRejected(f"{MANIFEST}: {name!r} needs a lower-case SHA-256 hex digest")
        path = _clean_path(name, limits)
        if not path or path in clean:
            raise UpdateRejected(f"{MANIFEST}: {name!r} is empty or listed twice")
        clean[path] = digest
    return Manifest(version, clean)


def verify_tarball(path: Path, expected_version: str, limits: TarLimits | None = None) -> Manifest:
    """Read the whole tarball, write nothing, and return its manifest if it is sound.

    Raises:
        UpdateRejected: not a gzip tarball; a link, device, absolute or ``..`` path, a
            duplicate, an oversize member; ``VERSION`` or the manifest missing or not
            matching ``expected_version``; a file not in the manifest, a listed file missing,
            or a SHA-256 that differs.
    """
    limits = limits or TarLimits()
    hashes: dict[str, str] = {}
    manifest_raw: bytes | None = None
    version_raw: bytes | None = None
    seen: dict[str, bool] = {}
    total = [0]
    with _open(path) as tar:
        try:
            for member in tar:
                clean = _check_member(member, limits, seen, total)
                if not member.isfile():
                    continue
                source = tar.extractfile(member)
                assert source is not None  # a regular file always has content
                if clean == MANIFEST:
                    if member.size > limits.max_manifest_bytes:
                        raise UpdateRejected(f"{MANIFEST} is larger than it may be")
                    manifest_raw = source.read(member.size)
                    continue
                if clean == VERSION_FILE:
                    if member.size > 256:
                        raise UpdateRejected(f"{VERSION_FILE} is longer than a version")
                    version_raw = source.read(member.size)
                    hashes[clean] = hashlib.sha256(version_raw).hexdigest()
                    continue
                hashes[clean] = _hash_stream(source, member.size)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            raise UpdateRejected(f"the tarball is damaged: {err}") from err
    if manifest_raw is None:
        raise UpdateRejected(f"no {MANIFEST} at the tarball's root")
    if version_raw is None:
        raise UpdateRejected(f"no {VERSION_FILE} at the tarball's root")
    manifest = _parse_manifest(manifest_raw, limits)
    stated = version_raw.decode("utf-8", "replace").strip()
    if stated != manifest.version:
        raise UpdateRejected(
            f"{VERSION_FILE} says {stated!r}, {MANIFEST} says {manifest.version!r}"
        )
    if manifest.version != expected_version:
        raise UpdateRejected(
            f"the release holds version {manifest.version!r}, "
            f"its signed target says {expected_version!r}"
        )
    unlisted = sorted(set(hashes) - set(manifest.files))
    if unlisted:
        raise UpdateRejected(f"files not in {MANIFEST}: {', '.join(unlisted[:5])}")
    missing = sorted(set(manifest.files) - set(hashes))
    if missing:
        raise UpdateRejected(
            f"files in {MANIFEST} but not in the tarball: {', '.join(missing[:5])}"
        )
    for name, digest in manifest.files.items():
        if hashes[name] != digest:
            raise UpdateRejected(f"{name}: SHA-256 differs from {MANIFEST}")
    return manifest


def unpack(path: Path, dest: Path, manifest: Manifest, limits: TarLimits | None = None) -> None:
    """Write the verified tarball into ``dest`` (a new, empty folder), durably.

    Every file is hashed again as it is written and must match ``manifest``; files are made
    read-only (a release folder is immutable), and nothing is ever written through a link.

    Raises:
        UpdateRejected: the tarball changed since :func:`verify_tarball`.
        OSError: the disk refused (full, permissions).
    """
    limits = limits or TarLimits()
    seen: dict[str, bool] = {}
    total = [0]
    folders = {dest}
    with _open(path) as tar:
        try:
            for member in tar:
                clean = _check_member(member, limits, seen, total)
                if clean == "":
                    continue
                target = dest.joinpath(*clean.split("/"))
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    folders.add(target)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                folders.add(target.parent)
                source = tar.extractfile(member)
                assert source is not None
                mode = 0o555 if member.mode & stat.S_IXUSR else 0o444
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                fd = os.open(target, flags, 0o600)
                with os.fdopen(fd, "wb") as out:
                    digest = _hash_stream(source, member.size, out)
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(target, mode)
                expected = manifest.files.get(clean)
                if clean != MANIFEST and digest != expected:
                    raise UpdateRejected(f"{clean}: the tarball changed after it was verified")
        except (tarfile.TarError, EOFError, zlib.error) as err:
            raise UpdateRejected(f"the tarball is damaged: {err}") from err
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(folder)


def verify_folder(folder: Path) -> Manifest:
    """Check an unpacked release against its own manifest (every file there, every hash
    right, nothing else).

    Raises:
        UpdateRejected: a file is missing, extra, or differs.
    """
    limits = TarLimits()
    try:
        manifest = _parse_manifest((folder / MANIFEST).read_bytes(), limits)
    except FileNotFoundError as err:
        raise UpdateRejected(f"{folder}: no {MANIFEST}") from err
    found: dict[str, str] = {}
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            full = Path(root, name)
            rel = full.relative_to(folder).as_posix()
            if rel == MANIFEST:
                continue
            if full.is_symlink():
                raise UpdateRejected(f"{folder}: {rel} is a link")
            with full.open("rb") as source:
                found[rel] = hashlib.file_digest(source, "sha256").hexdigest()
    if found != manifest.files:
        differ = sorted(set(found) ^ set(manifest.files)) or sorted(
            name for name in found if found[name] != manifest.files[name]
        )
        raise UpdateRejected(f"{folder}: differs from its manifest: {', '.join(differ[:5])}")
    return manifest


def remove_tree(folder: Path) -> None:
    """Remove an unpacked (read-only files) or half-unpacked folder, if it exists."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(folder)
