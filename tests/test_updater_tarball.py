"""A release tarball is checked whole before anything is unpacked: a table of bad ones."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kioskfleet.agent.updater import SoftwareUpdater, UpdateRejected, VerifiedTarget
from kioskfleet.agent.updater.tarball import (
    Manifest,
    TarLimits,
    unpack,
    verify_folder,
    verify_tarball,
)
from tests.hypothesis_profiles import examples
from tests.updater_releases import build_tarball, manifest_of, release, release_files


def _add(name: str, data: bytes = b"x", **attrs: object) -> Callable[[tarfile.TarFile], None]:
    def edit(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        for key, value in attrs.items():
            setattr(info, key, value)
        tar.addfile(info, io.BytesIO(data) if info.isfile() else None)

    return edit


def _link(name: str, target: str, kind: bytes) -> Callable[[tarfile.TarFile], None]:
    def edit(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = target
        tar.addfile(info)

    return edit


V = "2.0.0"
GOOD = release_files(V)
GOOD_MANIFEST = manifest_of(V, GOOD)


def _with_listed(name: str, data: bytes) -> bytes:
    """The good manifest plus ``name`` listed with ``data``'s digest."""
    return manifest_of(V, {**GOOD, name: data})


# (case id, files, manifest, extra members, expected error fragment)
Edit = Callable[[tarfile.TarFile], None] | None
BAD: list[tuple[str, dict[str, bytes], bytes | None, Edit, str]] = [
    ("no manifest", GOOD, None, None, "no manifest.json"),
    (
        "no VERSION",
        {k: v for k, v in GOOD.items() if k != "VERSION"},
        manifest_of(V, {k: v for k, v in GOOD.items() if k != "VERSION"}),
        None,
        "no VERSION",
    ),
    ("VERSION disagrees", {**GOOD, "VERSION": b"2.0.1\n"}, GOOD_MANIFEST, None, "VERSION says"),
    (
        "VERSION and manifest disagree",
        {**GOOD, "VERSION": b"2.0.1\n"},
        manifest_of(V, {**GOOD, "VERSION": b"2.0.1\n"}),
        None,
        "VERSION says '2.0.1'",
    ),
    (
        "other version",
        release_files("9.9.9"),
        manifest_of("9.9.9", release_files("9.9.9")),
        None,
        "signed target says '2.0.0'",
    ),
    (
        "tampered file",
        {**GOOD, "bin/kioskfleet-agent": b"rm -rf /\n"},
        GOOD_MANIFEST,
        None,
        "bin/kioskfleet-agent: SHA-256 differs",
    ),
    ("unlisted file", GOOD, GOOD_MANIFEST, _add("lib/extra.py"), "not in manifest.json"),
    ("listed, missing", GOOD, _with_listed("lib/gone.py", b"x"), None, "not in the tarball"),
    (
        "absolute path",
        GOOD,
        _with_listed("/etc/cron.d/x", b"x"),
        _add("/etc/cron.d/x"),
        "absolute path",
    ),
    ("dot-dot", GOOD, _with_listed("../../x", b"x"), _add("../../x"), "leaves the release"),
    (
        "dot-dot inside",
        GOOD,
        _with_listed("lib/../../x", b"x"),
        _add("lib/../../x"),
        "leaves the release",
    ),
    ("symlink", GOOD, GOOD_MANIFEST, _link("lib/evil", "/etc/passwd", tarfile.SYMTYPE), "links"),
    ("hard link", GOOD, GOOD_MANIFEST, _link("lib/evil", "VERSION", tarfile.LNKTYPE), "links"),
    ("device", GOOD, GOOD_MANIFEST, _add("dev/sda", b"", type=tarfile.BLKTYPE), "device"),
    ("fifo", GOOD, GOOD_MANIFEST, _add("run/pipe", b"", type=tarfile.FIFOTYPE), "pipe"),
    ("duplicate", GOOD, GOOD_MANIFEST, _add("VERSION", b"9.9.9\n"), "appears twice"),
    (
        "file under a file",
        GOOD,
        _with_listed("VERSION/x", b"x"),
        _add("VERSION/x"),
        "which is a file",
    ),
    ("file where a folder is", GOOD, _with_listed("lib", b"x"), _add("lib"), "appears twice"),
    ("backslash", GOOD, _with_listed("lib\\x", b"x"), _add("lib\\x"), "not a plain path"),
    ("manifest not JSON", GOOD, b"{nope", None, "not JSON"),
    ("manifest wrong shape", GOOD, b'{"version": "2.0.0", "files": []}', None, "must map"),
    (
        "manifest bad digest",
        GOOD,
        json.dumps({"version": V, "files": {"VERSION": "abc"}}).encode(),
        None,
        "SHA-256 hex",
    ),
    (
        "manifest extra key",
        GOOD,
        json.dumps({"version": V, "files": {}, "run": "x"}).encode(),
        None,
        "must be",
    ),
]


@pytest.mark.parametrize(
    ("files", "manifest", "extra", "error"),
    [case[1:] for case in BAD],
    ids=[case[0] for case in BAD],
)
def test_bad_tarballs_are_refused_and_nothing_is_installed(
    tmp_path: Path, files: dict[str, bytes], manifest: bytes | None, extra: Edit, error: str
) -> None:
    path = build_tarball(tmp_path / "bad.tar.gz", files, manifest=manifest, extra=extra)
    with pytest.raises(UpdateRejected, match=re.escape(error)):
        verify_tarball(path, V)
    root = tmp_path / "software"
    updater = SoftwareUpdater(root, base_version="1.0.0")
    with pytest.raises(UpdateRejected):
        updater.install(VerifiedTarget(path, "software", V, 2, "r-2"))
    assert list((root / "releases").iterdir()) == []
    assert not (root / "current").exists() and updater.state().trial is None
    assert updater.running_version() == "1.0.0"
    assert not (tmp_path / "etc").exists() and not (tmp_path.parent / "x").exists()


@pytest.mark.parametrize(
    "payload",
    [b"", b"not gzip at all", b"\x1f\x8b\x08\x00" + b"\x00" * 40],
    ids=["empty", "not gzip", "broken gzip"],
)
def test_not_a_tarball(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "x.tar.gz"
    path.write_bytes(payload)
    with pytest.raises(UpdateRejected, match=r"gzip tarball|damaged"):
        verify_tarball(path, V)


def test_a_truncated_tarball_is_refused(tmp_path: Path) -> None:
    good = release(tmp_path, V, 2).path.read_bytes()
    path = tmp_path / "cut.tar.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(UpdateRejected):
        verify_tarball(path, V)


@pytest.mark.parametrize(
    ("limits", "error"),
    [
        (TarLimits(max_file_bytes=10), "more than 10"),
        (TarLimits(max_total_bytes=40), "unpacks to more than 40"),
        (TarLimits(max_members=2), "more than 2 members"),
        (TarLimits(max_path_chars=8), "path longer than 8"),
    ],
)
def test_oversize_releases_are_refused(tmp_path: Path, limits: TarLimits, error: str) -> None:
    path = release(tmp_path, V, 2).path
    with pytest.raises(UpdateRejected, match=error):
        verify_tarball(path, V, limits)


def test_a_sound_release_unpacks_read_only_and_matches_its_manifest(tmp_path: Path) -> None:
    target = release(tmp_path, V, 2)
    manifest = verify_tarball(target.path, V)
    assert manifest.files["VERSION"] == hashlib.sha256(b"2.0.0\n").hexdigest()
    dest = tmp_path / "out"
    dest.mkdir()
    unpack(target.path, dest, manifest)
    assert verify_folder(dest) == manifest
    assert (dest / "bin" / "kioskfleet-agent").stat().st_mode & 0o777 == 0o555
    assert (dest / "VERSION").stat().st_mode & 0o777 == 0o444


def test_a_tarball_swapped_between_verify_and_unpack_is_caught(tmp_path: Path) -> None:
    target = release(tmp_path, V, 2)
    manifest = verify_tarball(target.path, V)
    evil = {**GOOD, "bin/kioskfleet-agent": b"evil\n"}
    build_tarball(target.path, evil, manifest=GOOD_MANIFEST)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(UpdateRejected, match="changed after it was verified"):
        unpack(target.path, dest, manifest)


def test_a_prefix_folder_with_dot_slash_is_fine(tmp_path: Path) -> None:
    path = build_tarball(tmp_path / "dot.tar.gz", GOOD, manifest=GOOD_MANIFEST, prefix="./")
    assert verify_tarball(path, V).version == V


@settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.binary(max_size=2048))
def test_garbage_is_refused_never_crashes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "garbage.tar.gz"
    path.write_bytes(gzip.compress(data) if data[:1] == b"g" else data)
    with pytest.raises(UpdateRejected):
        verify_tarball(path, V)


_NAME = st.lists(
    st.sampled_from(["..", ".", "lib", "a", "/", "\\", "etc", "x\x00", "", "b/c"]),
    min_size=1,
    max_size=5,
).map("/".join)


@settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(name=_NAME)
def test_any_member_name_is_refused_or_lands_inside(tmp_path: Path, name: str) -> None:
    """Whatever a member is called, it is refused with a reason, or unpacked inside the
    release folder."""
    data = b"payload"
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    listed = manifest_of(V, {**GOOD, name.lstrip("./"): data})
    path = build_tarball(root / "r.tar.gz", GOOD, manifest=listed, extra=_add(name, data))
    outcome = _verified_or_reason(path)
    if isinstance(outcome, str):
        assert outcome  # refused, with a reason
        return
    dest = root / "out"
    dest.mkdir()
    unpack(path, dest, outcome)
    for found in dest.rglob("*"):
        assert found.resolve().is_relative_to(dest.resolve())
    assert not (root / "etc").exists() and not (tmp_path / "etc").exists()


def _verified_or_reason(path: Path) -> Manifest | str:
    try:
        return verify_tarball(path, V)
    except UpdateRejected as err:
        return str(err)
