"""The controller's TUF repository (``kioskfleet.controller.tufrepo``) without HTTP: what it
signs, what it refuses, and re-signing of online metadata with injected time.

Each result is checked the way a client would: the written files parse and verify against
their delegator (``verify_chain``), not by reading the repository's own bookkeeping back.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, Snapshot, TargetFile, Targets, Timestamp

from kioskfleet.controller.tufrepo import Lifetimes, OnlineKeys, RepositoryRefused, TufRepository
from kioskfleet.controller.tufrepo.service import Resigner
from kioskfleet.updates.publish import next_counter, sign_release
from kioskfleet.updates.targets import TargetError
from tests.tuf_helpers import NOW, Keys, catalogue, make_keys, make_repository, read, software


def verify_chain(repo: TufRepository) -> dict[str, Metadata[Any]]:
    """Load the served state as a client walks it and verify every signature and link."""
    roots = sorted(repo.metadata_dir.glob("*.root.json"), key=lambda p: int(p.name.split(".")[0]))
    trusted = Metadata[Root].from_bytes(roots[0].read_bytes())
    trusted.signed.verify_delegate("root", trusted.signed_bytes, trusted.signatures)
    for path in roots[1:]:
        new = Metadata[Root].from_bytes(path.read_bytes())
        trusted.signed.verify_delegate("root", new.signed_bytes, new.signatures)
        new.signed.verify_delegate("root", new.signed_bytes, new.signatures)
        assert new.signed.version == trusted.signed.version + 1
        trusted = new
    root = trusted.signed
    ts = read(repo, "timestamp.json")
    root.verify_delegate("timestamp", ts.signed_bytes, ts.signatures)
    snap = read(repo, f"{ts.signed.snapshot_meta.version}.snapshot.json")
    root.verify_delegate("snapshot", snap.signed_bytes, snap.signatures)
    assert isinstance(snap.signed, Snapshot)
    found: dict[str, Metadata[Any]] = {"root": trusted, "timestamp": ts, "snapshot": snap}
    targets = read(repo, f"{snap.signed.meta['targets.json'].version}.targets.json")
    root.verify_delegate("targets", targets.signed_bytes, targets.signatures)
    found["targets"] = targets
    for name, meta in snap.signed.meta.items():
        if name == "targets.json":
            continue
        role = name.removesuffix(".json")
        md = read(repo, f"{meta.version}.{name}")
        assert md.signed.version == meta.version
        targets.signed.verify_delegate(role, md.signed_bytes, md.signatures)
        found[role] = md
    return found


@pytest.fixture
def repo_keys(tmp_path: Path) -> tuple[TufRepository, Keys]:
    return make_repository(tmp_path)


def test_a_new_repository_has_a_two_of_three_root_and_two_terminating_delegations(
    repo_keys: tuple[TufRepository, Keys],
) -> None:
    repo, keys = repo_keys
    state = verify_chain(repo)
    root = state["root"].signed
    assert isinstance(root, Root)
    assert root.consistent_snapshot
    assert root.roles["root"].threshold == 2
    assert set(root.roles["root"].keyids) == {s.public_key.keyid for s in keys.root}
    assert len(state["root"].signatures) == 2  # the two root keys given
    targets = state["targets"].signed
    assert isinstance(targets, Targets) and targets.targets == {}
    assert targets.delegations is not None and targets.delegations.roles is not None
    roles = targets.delegations.roles
    assert (roles["software"].paths, roles["software"].terminating) == (["software/*"], True)
    assert (roles["catalogue"].paths, roles["catalogue"].terminating) == (["catalogue/*"], True)
    assert keys.software and keys.catalogue
    assert keys.software.public_key.keyid in roles["software"].keyids
    assert keys.catalogue.public_key.keyid not in roles["software"].keyids
    # online keys live outside the served folder
    assert not list(repo.path.rglob("*.pem"))


@pytest.mark.parametrize(
    ("threshold", "signers", "message"),
    [
        (0, 2, "between 1 and the 3 root keys"),
        (4, 3, "between 1 and the 3 root keys"),
        (2, 1, "root was signed by 1/2 keys"),
        (3, 2, "root was signed by 2/3 keys"),
    ],
)
def test_creation_refuses_a_threshold_the_keys_cannot_meet(
    tmp_path: Path, threshold: int, signers: int, message: str
) -> None:
    keys = make_keys(tmp_path / "offline")
    assert keys.targets
    with pytest.raises(RepositoryRefused, match=message):
        TufRepository.create(
            tmp_path / "repo",
            root_keys=[s.public_key for s in keys.root],
            root_signers=keys.root[:signers],
            threshold=threshold,
            targets_signer=keys.targets,
            online_keys=OnlineKeys(tmp_path / "online"),
            now=NOW,
        )
    assert not (tmp_path / "repo" / "metadata").exists() or not any(
        (tmp_path / "repo" / "metadata").iterdir()
    )
    online = tmp_path / "online"
    assert not online.exists() or list(online.iterdir()) == []  # no stray online keys


def test_creation_refuses_an_existing_repository(
    tmp_path: Path, repo_keys: tuple[TufRepository, Keys]
) -> None:
    _, keys = repo_keys
    with pytest.raises(RepositoryRefused, match="already holds a repository"):
        make_repository(tmp_path, keys=keys)


def test_a_release_signed_by_the_online_key_is_listed_with_its_counter(
    repo_keys: tuple[TufRepository, Keys],
) -> None:
    repo, _ = repo_keys
    assert repo.next_counter("software") == 1
    info = repo.add_release(software(1), b"tarball", now=NOW)
    state = verify_chain(repo)
    listed = state["software"].signed.targets
    assert list(listed) == ["software/kioskfleet-1.1.0-r1.tar.gz"]
    assert listed[info.path].custom == {
        "kioskfleet": {
            "kind": "software",
            "version": "1.1.0",
            "release_counter": 1,
            "site_type": None,
        }
    }
    stored = repo.target_path(info.path, info.hashes["sha256"])
    assert stored.read_bytes() == b"tarball"
    assert stored.parent == repo.targets_dir / "software"
    assert repo.next_counter("software") == 2
    assert repo.next_counter("catalogue") == 1


def test_a_catalogue_key_cannot_sign_software(repo_keys: tuple[TufRepository, Keys]) -> None:
    repo, keys = repo_keys
    before = sorted(p.name for p in repo.metadata_dir.iterdir())
    with pytest.raises(RepositoryRefused, match="software: the key given is not one of its keys"):
        repo.add_release(software(1), b"code", signer=keys.catalogue, now=NOW)
    assert sorted(p.name for p in repo.metadata_dir.iterdir()) == before
    assert not (repo.targets_dir / "software").exists()
    # its own kind it signs
    repo.add_release(catalogue(1), b"{}", signer=keys.catalogue, now=NOW)
    verify_chain(repo)


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        (software(3), software(3), "already published"),
        (software(3), software(2), "release counter 2 is not above the latest 3"),
        (software(3), software(3, "9.9"), "release counter 3 is not above the latest 3"),
    ],
)
def test_release_counters_only_grow(
    repo_keys: tuple[TufRepository, Keys], first: Any, second: Any, message: str
) -> None:
    repo, _ = repo_keys
    repo.add_release(first, b"a", now=NOW)
    with pytest.raises(RepositoryRefused, match=message):
        repo.add_release(second, b"b", now=NOW)


def test_without_the_online_release_key_uploads_need_signed_metadata(tmp_path: Path) -> None:
    repo, _ = make_repository(tmp_path, online_release=False)
    with pytest.raises(RepositoryRefused, match="kioskfleet release publish"):
        repo.add_release(software(1), b"a", now=NOW)


def _signed_role(
    role: str,
    signer: CryptoSigner,
    entries: dict[str, tuple[bytes, dict[str, Any]]],
    *,
    version: int = 1,
    expires_in: timedelta = timedelta(days=30),
) -> bytes:
    md = Metadata(Targets(version=version, expires=(NOW + expires_in).replace(microsecond=0)))
    for name, (data, custom) in entries.items():
        info = TargetFile.from_data(name, data, ["sha256"])
        info.unrecognized_fields["custom"] = custom
        md.signed.targets[name] = info
    md.sign(signer)
    return md.to_bytes()


def test_metadata_signed_by_a_release_manager_is_accepted(
    repo_keys: tuple[TufRepository, Keys],
) -> None:
    repo, keys = repo_keys
    assert keys.software
    release = software(1)
    metadata = _signed_role(
        "software", keys.software, {release.name: (b"payload", release.custom())}
    )
    repo.submit_role("software", metadata, {release.name: b"payload"}, now=NOW)
    state = verify_chain(repo)
    assert list(state["software"].signed.targets) == [release.name]
    assert state["software"].signatures.keys() == {keys.software.public_key.keyid}


def _bad_submissions(keys: Keys) -> list[tuple[str, bytes, dict[str, bytes], str]]:
    assert keys.software and keys.catalogue
    rel = software(1)
    good = {rel.name: (b"payload", rel.custom())}
    files = {rel.name: b"payload"}
    return [
        ("software", _signed_role("software", keys.catalogue, good), files, "not signed by enough"),
        (
            "software",
            _signed_role("software", keys.software, good, version=2),
            files,
            "version 2, expected 1",
        ),
        (
            "software",
            _signed_role("software", keys.software, good, expires_in=-timedelta(days=1)),
            files,
            "expired",
        ),
        (
            "catalogue",
            _signed_role("catalogue", keys.catalogue, good),
            files,
            "catalogue is not trusted for software/",
        ),
        ("software", _signed_role("software", keys.software, good), {rel.name: b"paylaod"}, "hash"),
        (
            "software",
            _signed_role("software", keys.software, good),
            {},
            "its file was not uploaded",
        ),
        (
            "software",
            _signed_role("software", keys.software, {rel.name: (b"payload", software(2).custom())}),
            files,
            "does not match the name",
        ),
        (
            "software",
            _signed_role("software", keys.software, {"software/x.tar.gz": (b"payload", {})}),
            {"software/x.tar.gz": b"payload"},
            "not a kioskfleet target name",
        ),
        ("mirrors", _signed_role("software", keys.software, good), files, "no delegated role"),
        ("software", b"{not json", files, "not valid targets metadata"),
    ]


def test_bad_signed_metadata_is_refused_and_nothing_written(
    repo_keys: tuple[TufRepository, Keys],
) -> None:
    repo, keys = repo_keys
    before = sorted(str(p) for p in repo.path.rglob("*"))
    for role, metadata, files, message in _bad_submissions(keys):
        with pytest.raises(RepositoryRefused, match=message):
            repo.submit_role(role, metadata, files, now=NOW)
        assert sorted(str(p) for p in repo.path.rglob("*")) == before, message


def test_a_listed_target_cannot_be_changed_by_a_later_version(
    repo_keys: tuple[TufRepository, Keys],
) -> None:
    repo, keys = repo_keys
    assert keys.software
    rel = software(1)
    repo.submit_role(
        "software",
        _signed_role("software", keys.software, {rel.name: (b"one", rel.custom())}),
        {rel.name: b"one"},
        now=NOW,
    )
    swapped = _signed_role("software", keys.software, {rel.name: (b"two", rel.custom())}, version=2)
    with pytest.raises(RepositoryRefused, match="a listed target cannot change"):
        repo.submit_role("software", swapped, {rel.name: b"two"}, now=NOW)


def test_online_metadata_is_resigned_before_it_expires(
    repo_keys: tuple[TufRepository, Keys],
) -> None:
    """Injected time: timestamp (1 day) renewed past half its life, snapshot (7 days)
    likewise, a role the online release key signs (90 days) likewise; a release manager's
    role is theirs to renew. The chain verifies after each step."""
    repo, keys = repo_keys
    repo.add_release(software(1), b"a", now=NOW)
    assert keys.catalogue
    repo.add_release(catalogue(1), b"{}", signer=keys.catalogue, now=NOW)
    assert repo.resign_online(NOW + timedelta(hours=11)) == []
    assert repo.resign_online(NOW + timedelta(hours=13)) == ["timestamp"]
    ts = verify_chain(repo)["timestamp"].signed
    assert ts.expires == (NOW + timedelta(hours=13 + 24)).replace(microsecond=0)
    assert repo.resign_online(NOW + timedelta(hours=14)) == []
    assert repo.resign_online(NOW + timedelta(days=4)) == ["snapshot", "timestamp"]
    verify_chain(repo)
    at = NOW + timedelta(days=46)
    assert repo.resign_online(at) == ["software", "snapshot", "timestamp"]
    state = verify_chain(repo)
    assert not any(md.signed.is_expired(at) for md in state.values())
    assert state["software"].signed.version == 2
    assert state["catalogue"].signed.version == 1  # a release manager's signature


def test_a_controller_down_for_days_renews_everything_at_its_first_tick(
    repo_keys: tuple[TufRepository, Keys],
) -> None:
    repo, _ = repo_keys
    at = NOW + timedelta(days=10)
    assert read(repo, "timestamp.json").signed.is_expired(at)
    resigner = Resigner(repo, 300, clock=lambda: at)
    assert resigner.tick() == ["snapshot", "timestamp"]
    assert not any(md.signed.is_expired(at) for md in verify_chain(repo).values())


def test_the_timer_logs_a_missing_key_once_and_its_return_once(
    repo_keys: tuple[TufRepository, Keys], caplog: pytest.LogCaptureFixture
) -> None:
    repo, _ = repo_keys
    assert repo.online_keys is not None
    times = iter(NOW + timedelta(days=d) for d in range(2, 10))
    resigner = Resigner(repo, 300, clock=lambda: next(times))
    hidden = repo.online_keys.path.with_name("hidden")
    repo.online_keys.path.rename(hidden)
    caplog.set_level(logging.INFO, "kioskfleet.controller.tufrepo.service")
    assert resigner.tick() == []
    assert resigner.tick() == []
    hidden.rename(repo.online_keys.path)
    assert resigner.tick() != []
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot re-sign" in m for m in messages) == 1
    assert sum("works again" in m for m in messages) == 1


def test_lifetimes_are_configurable(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "offline")
    assert keys.targets
    lifetimes = Lifetimes(timestamp=timedelta(hours=2))
    repo = TufRepository.create(
        tmp_path / "repo",
        root_keys=[s.public_key for s in keys.root],
        root_signers=keys.root,
        threshold=3,
        targets_signer=keys.targets,
        online_keys=OnlineKeys(tmp_path / "online"),
        lifetimes=lifetimes,
        now=NOW,
    )
    assert read(repo, "timestamp.json").signed.expires == NOW + timedelta(hours=2)
    assert repo.resign_online(NOW + timedelta(minutes=59)) == []
    assert repo.resign_online(NOW + timedelta(minutes=61)) == ["timestamp"]


def test_rotating_the_timestamp_key_needs_the_root_threshold(
    repo_keys: tuple[TufRepository, Keys],
) -> None:
    repo, keys = repo_keys
    assert repo.online_keys is not None
    files = sorted(p.name for p in repo.online_keys.path.iterdir())
    with pytest.raises(RepositoryRefused, match="root was signed by 1/2 keys"):
        repo.rotate_online_key("timestamp", root_signers=keys.root[:1], now=NOW)
    assert sorted(p.name for p in repo.online_keys.path.iterdir()) == files
    assert not (repo.metadata_dir / "2.root.json").exists()
    old = read(repo, "1.root.json").signed.roles["timestamp"].keyids
    new_key = repo.rotate_online_key("timestamp", root_signers=keys.root[1:], now=NOW)
    state = verify_chain(repo)
    assert state["root"].signed.version == 2
    assert state["root"].signed.roles["timestamp"].keyids == [new_key.keyid]
    assert new_key.keyid not in old
    assert state["timestamp"].signatures.keys() == {new_key.keyid}


def test_rotating_the_online_release_key_resigns_its_roles(
    repo_keys: tuple[TufRepository, Keys],
) -> None:
    repo, keys = repo_keys
    repo.add_release(software(1), b"a", now=NOW)
    with pytest.raises(RepositoryRefused, match="needs the targets key"):
        repo.rotate_online_key("release", root_signers=[], now=NOW)
    new_key = repo.rotate_online_key(
        "release", root_signers=[], targets_signer=keys.targets, now=NOW
    )
    state = verify_chain(repo)
    assert state["software"].signatures.keys() == {new_key.keyid}
    assert state["targets"].signed.version == 2
    repo.add_release(software(2), b"b", now=NOW)  # the new key signs from now on
    verify_chain(repo)


def test_a_release_manager_joins_a_role_and_the_root_keys_change(
    repo_keys: tuple[TufRepository, Keys], tmp_path: Path
) -> None:
    repo, keys = repo_keys
    assert keys.targets
    newcomer = Keys(tmp_path / "rm2").make("rm2")
    repo.set_role_keys("software", [newcomer.public_key], targets_signer=keys.targets, now=NOW)
    rel = software(1)
    repo.submit_role(
        "software",
        _signed_role("software", newcomer, {rel.name: (b"x", rel.custom())}),
        {rel.name: b"x"},
        now=NOW,
    )
    assert keys.software
    old = software(2)
    with pytest.raises(RepositoryRefused, match="not signed by enough"):
        repo.submit_role(
            "software",
            _signed_role("software", keys.software, {old.name: (b"y", old.custom())}, version=2),
            {old.name: b"y"},
            now=NOW,
        )
    fresh = [Keys(tmp_path / "root2").make(f"r{i}") for i in range(2)]
    with pytest.raises(RepositoryRefused, match="root was signed by"):
        repo.set_root_keys(
            [s.public_key for s in fresh], 2, old_signers=keys.root[:1], new_signers=fresh, now=NOW
        )
    assert (
        repo.set_root_keys(
            [s.public_key for s in fresh], 2, old_signers=keys.root[:2], new_signers=fresh, now=NOW
        )
        == 2
    )
    assert repo.resign_root(signers=fresh, now=NOW + timedelta(days=300)) == 3
    state = verify_chain(repo)
    assert state["root"].signed.roles["root"].threshold == 2
    assert not state["root"].signed.is_expired(NOW + timedelta(days=600))


def test_describe_lists_roles_keys_and_expiry(repo_keys: tuple[TufRepository, Keys]) -> None:
    repo, _ = repo_keys
    repo.add_release(software(1), b"a", now=NOW)
    described = repo.describe(NOW + timedelta(days=2))
    assert described["root"]["threshold"] == 2 and len(described["root"]["keyids"]) == 3
    assert described["timestamp"]["expired"] is True
    assert described["software"]["targets"] == [software(1).name]
    assert described["catalogue"]["version"] == 0
    assert described["catalogue"]["paths"] == ["catalogue/*"]
    assert isinstance(read(repo, "timestamp.json").signed, Timestamp)


def test_a_release_manager_signs_the_next_role_version_locally(
    repo_keys: tuple[TufRepository, Keys],
) -> None:
    """``updates.publish``: what ``kioskfleet release publish`` uploads is accepted as is, and
    a second one builds on the first."""
    repo, keys = repo_keys
    assert keys.software and keys.catalogue
    assert next_counter(None) == 1
    first = software(1)
    repo.submit_role(
        "software",
        sign_release(None, first, b"one", keys.software, now=NOW),
        {first.name: b"one"},
        now=NOW,
    )
    current = verify_chain(repo)["software"]
    assert next_counter(current) == 2
    second = software(2)
    repo.submit_role(
        "software",
        sign_release(current, second, b"two", keys.software, now=NOW),
        {second.name: b"two"},
        now=NOW,
    )
    assert sorted(verify_chain(repo)["software"].signed.targets) == [first.name, second.name]
    with pytest.raises(TargetError, match="not above"):
        sign_release(current, software(1, "0.9"), b"old", keys.software, now=NOW)
    # signed with the wrong role's key: the repository refuses it
    third = software(3)
    signed = sign_release(verify_chain(repo)["software"], third, b"3", keys.catalogue, now=NOW)
    with pytest.raises(RepositoryRefused, match="not signed by enough"):
        repo.submit_role("software", signed, {third.name: b"3"}, now=NOW)


def test_the_demo_repository_signs_uploads_itself(tmp_path: Path) -> None:
    from kioskfleet.controller.tufrepo.service import create_demo_repository, open_repository

    settings = create_demo_repository(tmp_path / "tuf")
    assert settings.online_release
    repo = open_repository(settings)
    repo.add_release(software(1), b"a")
    state = verify_chain(repo)
    assert state["root"].signed.roles["root"].threshold == 2
    assert list(state["software"].signed.targets) == [software(1).name]
    assert not list((tmp_path / "tuf" / "repository").rglob("*.pem"))


def test_removing_the_key_that_signed_a_role_leaves_it_unverified_until_resigned(
    repo_keys: tuple[TufRepository, Keys], tmp_path: Path
) -> None:
    """A compromised release manager's key is dropped: what it signed stops counting. With the
    online release key in the role the controller re-signs at once; without it the role is
    refused by clients until a remaining key signs its next version."""
    repo, keys = repo_keys
    assert keys.software and keys.catalogue and keys.targets
    rel = software(1)
    repo.submit_role(
        "software",
        sign_release(None, rel, b"x", keys.software, now=NOW),
        {rel.name: b"x"},
        now=NOW,
    )
    cat = catalogue(1)
    repo.submit_role(
        "catalogue",
        sign_release(None, cat, b"{}", keys.catalogue, now=NOW),
        {cat.name: b"{}"},
        now=NOW,
    )
    newcomer = Keys(tmp_path / "rm2").make("rm2")
    # software keeps the online release key: re-signed by it
    repo.set_role_keys("software", [newcomer.public_key], targets_signer=keys.targets, now=NOW)
    described = repo.describe(NOW)
    assert described["software"]["signed_by_its_keys"] is True
    assert described["software"]["version"] == 2
    verify_chain(repo)
    # catalogue drops the online key too: nobody left can sign what is listed
    repo.set_role_keys(
        "catalogue",
        [newcomer.public_key],
        targets_signer=keys.targets,
        keep_online_release=False,
        now=NOW,
    )
    described = repo.describe(NOW)
    assert described["catalogue"]["signed_by_its_keys"] is False
    with pytest.raises(UnsignedMetadataError):
        verify_chain(repo)
    current = verify_chain_without(repo, "catalogue")
    repo.submit_role(
        "catalogue",
        sign_release(current, catalogue(2), b"{}", newcomer, now=NOW),
        {catalogue(2).name: b"{}"},
        now=NOW,
    )
    assert repo.describe(NOW)["catalogue"]["signed_by_its_keys"] is True
    verify_chain(repo)


def verify_chain_without(repo: TufRepository, role: str) -> Metadata[Targets]:
    """The role's current metadata, read without verifying it (its signer left)."""
    ts = read(repo, "timestamp.json")
    snap = read(repo, f"{ts.signed.snapshot_meta.version}.snapshot.json")
    md: Metadata[Targets] = read(repo, f"{snap.signed.meta[role + '.json'].version}.{role}.json")
    return md
