"""The local service token file (CONTRACT §6): created once, 0640, for the kiosk app's group."""

from __future__ import annotations

import grp
import os
import string
from pathlib import Path

import pytest

from kioskfleet.agent.localservice import TokenFileError, load_or_create_token


def _another_group() -> grp.struct_group:
    """A group other than the process's own that it may give a file to (root: any)."""
    own = os.getegid()
    if os.geteuid() == 0:
        candidates = [g for g in grp.getgrall() if g.gr_gid != own]
    else:
        candidates = [grp.getgrgid(gid) for gid in os.getgroups() if gid != own]
    if not candidates:
        pytest.skip("this user belongs to no second group to hand the token to")
    return candidates[0]


def test_a_missing_token_file_is_created_0640_for_the_kiosk_group(tmp_path: Path) -> None:
    group = _another_group()
    path = tmp_path / "state" / "local-service.token"
    token = load_or_create_token(path, group=group.gr_name)
    assert len(token) >= 40
    assert set(token) <= set(string.ascii_letters + string.digits + "-_")
    assert path.read_text(encoding="ascii") == token + "\n"
    info = path.stat()
    assert info.st_mode & 0o777 == 0o640
    assert info.st_gid == group.gr_gid
    assert info.st_uid == os.geteuid()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    # the next start reads the same token
    assert load_or_create_token(path, group=group.gr_name) == token


def test_without_a_group_the_file_keeps_the_agents_group(tmp_path: Path) -> None:
    path = tmp_path / "local-service.token"
    load_or_create_token(path)
    assert path.stat().st_gid == os.getegid()
    assert path.stat().st_mode & 0o777 == 0o640


def test_two_agents_get_different_tokens(tmp_path: Path) -> None:
    assert load_or_create_token(tmp_path / "a") != load_or_create_token(tmp_path / "b")


def test_an_existing_file_is_used_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "local-service.token"
    path.write_text("provisioned-by-the-administrator\n", encoding="ascii")
    path.chmod(0o600)
    assert load_or_create_token(path, group="no-such-group-kf") == (
        "provisioned-by-the-administrator"
    )
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("content", ["", "\n", "two tokens\n", "tok\x00en"])
def test_a_token_file_without_one_token_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "local-service.token"
    path.write_text(content, encoding="ascii")
    with pytest.raises(TokenFileError, match="must hold one token"):
        load_or_create_token(path)


def test_an_unknown_group_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "local-service.token"
    with pytest.raises(TokenFileError, match="no-such-group-kf"):
        load_or_create_token(path, group="no-such-group-kf")
    assert list(tmp_path.iterdir()) == []


def test_a_path_that_cannot_hold_the_file_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("", encoding="ascii")
    with pytest.raises(TokenFileError, match=r"cannot \w+ the local service token file"):
        load_or_create_token(blocker / "local-service.token")
