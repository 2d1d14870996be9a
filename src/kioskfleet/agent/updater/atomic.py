"""Durable, atomic file-system steps (STYLE.md 13, as tuf's ``_persist_metadata``).

A rename is atomic but not durable until its folder is fsync'd; a file's content is not
durable until the file is. Every step here is one rename, so a crash leaves either the old
or the new state, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any


def fsync_dir(folder: Path) -> None:
    """Make the renames and links made in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file in the same folder, fsync, rename, fsync the
    folder."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, data: Any) -> None:
    """:func:`write_bytes_atomic` of ``data`` as indented JSON (a person may read it)."""
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def swap_symlink(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` atomically: a new link under a temp name, ``os.replace``
    over the old one (``ln -sfn`` unlinks first: a crash there leaves no link at all), fsync
    the folder."""
    tmp = link.with_name(f".{link.name}.{secrets.token_hex(4)}.tmp")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(link.parent)


def remove_link(link: Path) -> None:
    """Remove ``link`` if it exists (one unlink: atomic), durably."""
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
        fsync_dir(link.parent)


def read_link(link: Path) -> str | None:
    """Where ``link`` points (its text), or None when there is no link."""
    try:
        return os.readlink(link)
    except FileNotFoundError:
        return None
    except OSError as err:  # a plain file or folder where the link should be
        raise OSError(f"{link} is not a symbolic link: {err}") from err
