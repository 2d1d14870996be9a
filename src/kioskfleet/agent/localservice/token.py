"""The local service token (CONTRACT §6): a file the agent writes once and the kiosk
application reads.

The file holds one line, a random URL-safe token. It is created when missing — mode 0640,
owned by the agent's user and the kiosk application's group (``local_service_group``) — by an
atomic write (a temporary file in the same folder, fsync, ``os.replace``, fsync of the folder),
so the application never reads half a token. An existing file is used as it is: an
administrator may have provisioned it.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import secrets
import stat
from pathlib import Path

from kioskfleet.agent.localservice.server import LocalServiceError

log = logging.getLogger("kioskfleet.agent.localservice")

TOKEN_MODE = 0o640


class TokenFileError(LocalServiceError):
    """The token file cannot be read or created as configured."""


def load_or_create_token(path: Path, *, group: str | None = None) -> str:
    """The token in ``path``; a new random one written there first if the file is missing.

    Args:
        path: the token file (``local_service_token_file``).
        group: the group that may read a new file (the kiosk application's); ``None`` keeps
            the agent's own group.

    Raises:
        TokenFileError: unreadable or empty file, unknown group, or the file cannot be written.
    """
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    gid = _gid(group)
    token = secrets.token_urlsafe(32)
    try:
        _write_atomically(path, token, gid)
    except OSError as err:
        raise TokenFileError(f"cannot create the local service token file {path}: {err}") from err
    log.info("local service token created in %s", path)
    return token


def _read(path: Path) -> str:
    try:
        text = path.read_text(encoding="ascii")
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as err:
        raise TokenFileError(f"cannot read the local service token file {path}: {err}") from err
    token = text.strip()
    # it goes into an HTTP header: printable, no spaces
    if not token or not token.isprintable() or any(c.isspace() for c in token):
        raise TokenFileError(f"the local service token file {path} must hold one token")
    if mode & stat.S_IRWXO:
        log.warning("the local service token file %s is open to other users: chmod o-rwx", path)
    return token


def _gid(group: str | None) -> int:
    if group is None:
        return -1  # fchown: leave the group as the process creates it
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise TokenFileError(f"local_service_group {group!r} is not a group here") from None


def _write_atomically(path: Path, token: str, gid: int) -> None:
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".{path.name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            # mode and group before the token goes in: never readable by anyone else
            os.fchown(fd, -1, gid)
            os.fchmod(fd, TOKEN_MODE)
            os.write(fd, f"{token}\n".encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    folder_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)
