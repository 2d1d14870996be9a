"""Software release tarballs for the updater's tests: sound ones, and every way to be bad."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

from kioskfleet.agent.updater import VerifiedTarget

Files = dict[str, bytes]


def release_files(version: str, extra: Files | None = None) -> Files:
    """The files of a small agent release of ``version``."""
    return {
        "VERSION": f"{version}\n".encode(),
        "bin/kioskfleet-agent": f"#!/bin/sh\necho agent {version}\n".encode(),
        "lib/kioskfleet/__init__.py": f'__version__ = "{version}"\n'.encode(),
        **(extra or {}),
    }


def manifest_of(version: str, files: Files) -> bytes:
    digests = {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}
    return json.dumps({"version": version, "files": digests}).encode()


TarEdit = Callable[[tarfile.TarFile], None]


def build_tarball(
    path: Path,
    files: Files,
    *,
    manifest: bytes | None,
    extra: TarEdit | None = None,
    prefix: str = "",
) -> Path:
    """A gzip tarball of ``files`` and ``manifest`` (None: no manifest); ``extra`` adds members."""
    with tarfile.open(path, "w:gz") as tar:
        members = dict(files)
        if manifest is not None:
            members["manifest.json"] = manifest
        for name, data in members.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            info.mode = 0o755 if name.startswith("bin/") else 0o644
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            extra(tar)
    return path


def release(folder: Path, version: str, counter: int, *, release_id: str = "") -> VerifiedTarget:
    """A sound release tarball in ``folder`` and its verified target."""
    files = release_files(version)
    path = build_tarball(
        folder / f"agent-{version}.tar.gz", files, manifest=manifest_of(version, files)
    )
    return VerifiedTarget(path, "software", version, counter, release_id or f"r-{version}")
