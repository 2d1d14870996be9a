"""A TUF repository in a folder, written through python-tuf's Metadata API.

Roles (CONTRACT §2, docs/decisions.md):

- ``root``: offline keys in files, ``threshold`` of them sign (e.g. 2 of 3);
- ``targets``: an offline key; it lists no target itself and delegates, terminating,
  ``software/*`` to the role ``software`` and ``catalogue/*`` to ``catalogue``, each with its
  own keys (release managers', and the controller's online release key where allowed);
- ``snapshot`` and ``timestamp``: online keys kept by the controller, re-signed before they
  expire (:meth:`TufRepository.resign_online`, called from a timer with the time given).

Layout, with consistent snapshots::

    DIR/metadata/N.root.json  N.targets.json  N.software.json  N.catalogue.json
                 N.snapshot.json  timestamp.json
    DIR/targets/software/<sha256>.kioskfleet-1.4.2-r7.tar.gz
    DIR/targets/catalogue/<sha256>.bank_agent_branch-2026.11-r3.json

The files are the state: every operation reads the current versions (timestamp → snapshot →
the rest; the highest ``N.root.json``) under a lock on ``DIR/.lock`` — so the controller and an
admin's ``kioskfleet keys`` can both write — and writes new versioned files first and
``timestamp.json`` last, each atomically, so a client mid-refresh always sees one consistent
repository. Private keys never live here: online keys are in their own folder
(:class:`OnlineKeys`), offline ones are passed in as signers for one operation.
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

from securesystemslib.signer import Key, Signer
from tuf.api.exceptions import LengthOrHashMismatchError, UnsignedMetadataError
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from kioskfleet.updates.keys import KeyFileError, generate_key, load_signer
from kioskfleet.updates.targets import (
    RELEASE_KINDS,
    ROLE_PATTERNS,
    ReleaseKind,
    ReleaseTarget,
    TargetError,
)

ONLINE_ROLES: Final = ("snapshot", "timestamp", "release")
_SERIALIZER: Final = JSONSerializer(compact=False)
_VERSIONED: Final = re.compile(r"^([1-9][0-9]*)\.root\.json$")
T = TypeVar("T", Root, Timestamp, Snapshot, Targets)


class RepositoryRefused(ValueError):
    """An operation the repository will not do (a wrong key, a stale version, a target outside
    its role, …); the message says why. Nothing was written."""


@dataclass(frozen=True, slots=True)
class Lifetimes:
    """How long each role's signature is valid, and when the online ones are renewed."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=365)
    #: delegated roles signed by the controller's online release key
    delegated: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)
    #: online metadata is re-signed once less than this share of its lifetime is left
    renew_below: float = 0.5

    def of(self, role: str) -> timedelta:
        """The lifetime of ``role`` (a delegated role's when it is none of the top ones)."""
        top = {
            "root": self.root,
            "targets": self.targets,
            "snapshot": self.snapshot,
            "timestamp": self.timestamp,
        }
        return top.get(role, self.delegated)


def _expiry(now: datetime, lifetime: timedelta) -> datetime:
    # the spec's time format has no fractions of a second (python-tuf refuses them)
    return (now + lifetime).astimezone(UTC).replace(microsecond=0)


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return now


class OnlineKeys:
    """The controller's online keys: ``DIR/<role>-<keyid prefix>.pem`` for ``snapshot``,
    ``timestamp`` and ``release`` (the optional key that signs delegated roles when a release
    is uploaded without signed metadata). The signer used is the file whose key the
    repository's metadata names, so rotation is: create the new file, then change the
    metadata (a crash between the two leaves an unused file, never a missing key)."""

    def __init__(self, path: Path, *, passphrase: bytes | None = None) -> None:
        self.path = Path(path)
        self._passphrase = passphrase

    def create(self, role: str) -> Key:
        """A new key for ``role``; its file is named after its key id."""
        if role not in ONLINE_ROLES:
            raise ValueError(f"online roles are {', '.join(ONLINE_ROLES)}, not {role!r}")
        tmp = self.path / f".{role}-new.pem"
        tmp.unlink(missing_ok=True)
        (self.path / f".{role}-new.pub.json").unlink(missing_ok=True)
        key = generate_key(tmp, passphrase=self._passphrase)
        os.replace(tmp, self.path / f"{role}-{key.keyid[:16]}.pem")
        os.replace(
            self.path / f".{role}-new.pub.json", self.path / f"{role}-{key.keyid[:16]}.pub.json"
        )
        _fsync_dir(self.path)
        return key

    def discard(self, role: str, key: Key) -> None:
        """Remove a key file made by :meth:`create` that never got into the metadata."""
        stem = f"{role}-{key.keyid[:16]}"
        (self.path / f"{stem}.pem").unlink(missing_ok=True)
        (self.path / f"{stem}.pub.json").unlink(missing_ok=True)

    def signer(self, role: str, keyids: Iterable[str]) -> Signer | None:
        """The signer for ``role`` among ``keyids``, or None when no file holds one."""
        for keyid in keyids:
            path = self.path / f"{role}-{keyid[:16]}.pem"
            if path.is_file():
                signer = load_signer(path, passphrase=self._passphrase)
                if signer.public_key.keyid == keyid:
                    return signer
        return None


@dataclass(slots=True)
class _State:
    """The repository's current metadata (read from the files)."""

    root: Metadata[Root]
    timestamp: Metadata[Timestamp]
    snapshot: Metadata[Snapshot]
    targets: Metadata[Targets]
    delegated: dict[str, Metadata[Targets]] = field(default_factory=dict)


class TufRepository:
    """The repository in ``path``; see the module docstring."""

    def __init__(
        self,
        path: Path,
        *,
        online_keys: OnlineKeys | None = None,
        lifetimes: Lifetimes | None = None,
    ) -> None:
        self.path = Path(path)
        self.metadata_dir = self.path / "metadata"
        self.targets_dir = self.path / "targets"
        self.online_keys = online_keys
        self.lifetimes = lifetimes or Lifetimes()
        self._thread_lock = threading.Lock()

    # ----------------------------------------------------------------- creation

    @classmethod
    def create(
        cls,
        path: Path,
        *,
        root_keys: Sequence[Key],
        root_signers: Sequence[Signer],
        threshold: int,
        targets_signer: Signer,
        online_keys: OnlineKeys,
        role_keys: Mapping[ReleaseKind, Sequence[Key]] | None = None,
        online_release: bool = False,
        lifetimes: Lifetimes | None = None,
        now: datetime | None = None,
    ) -> TufRepository:
        """A new repository: root (``threshold`` of ``root_keys``, signed by
        ``root_signers``), targets with the two delegations, snapshot and timestamp signed by
        new online keys. ``role_keys`` are the release managers' keys per kind;
        ``online_release`` adds the controller's online release key to both roles."""
        now = _utc(now)
        repo = cls(path, online_keys=online_keys, lifetimes=lifetimes)
        if repo.metadata_dir.exists() and any(repo.metadata_dir.iterdir()):
            raise RepositoryRefused(f"{repo.metadata_dir} already holds a repository")
        keyids = {key.keyid for key in root_keys}
        if len(keyids) != len(root_keys):
            raise RepositoryRefused("the root keys must be distinct")
        if not 1 <= threshold <= len(root_keys):
            raise RepositoryRefused(
                f"the root threshold must be between 1 and the {len(root_keys)} root keys"
            )
        online_keys.path.mkdir(parents=True, exist_ok=True)
        made = [online_keys.create("snapshot"), online_keys.create("timestamp")]
        if online_release:
            made.append(online_keys.create("release"))
        try:
            repo._create(
                root_keys=root_keys,
                root_signers=root_signers,
                threshold=threshold,
                targets_signer=targets_signer,
                online=made,
                role_keys=role_keys or {},
                now=now,
            )
        except BaseException:
            # nothing names them: a refused creation leaves no stray online keys
            for role, key in zip(ONLINE_ROLES, made, strict=False):
                online_keys.discard(role, key)
            raise
        return repo

    def _create(
        self,
        *,
        root_keys: Sequence[Key],
        root_signers: Sequence[Signer],
        threshold: int,
        targets_signer: Signer,
        online: Sequence[Key],
        role_keys: Mapping[ReleaseKind, Sequence[Key]],
        now: datetime,
    ) -> None:
        life = self.lifetimes
        snapshot_key, timestamp_key, *release_keys = online
        root = Metadata(Root(expires=_expiry(now, life.root), consistent_snapshot=True))
        for key in root_keys:
            root.signed.add_key(key, "root")
        root.signed.roles["root"].threshold = threshold
        root.signed.add_key(targets_signer.public_key, "targets")
        root.signed.add_key(snapshot_key, "snapshot")
        root.signed.add_key(timestamp_key, "timestamp")
        self._sign_root(root, previous=None, signers=root_signers)

        targets = Metadata(Targets(expires=_expiry(now, life.targets)))
        targets.signed.delegations = Delegations(
            keys={},
            roles={
                kind: DelegatedRole(
                    name=kind, keyids=[], threshold=1, terminating=True, paths=[pattern]
                )
                for kind, pattern in ROLE_PATTERNS.items()
            },
        )
        for kind in RELEASE_KINDS:
            for key in [*role_keys.get(kind, ()), *release_keys]:
                targets.signed.add_key(key, kind)
        self._sign(targets, [targets_signer], "targets", root.signed)

        with self._locked():
            self.metadata_dir.mkdir(parents=True, exist_ok=True)
            self.targets_dir.mkdir(parents=True, exist_ok=True)
            self._write(f"{root.signed.version}.root.json", root)
            self._write(f"{targets.signed.version}.targets.json", targets)
            snapshot = Metadata(Snapshot(expires=_expiry(now, life.snapshot)))
            snapshot.signed.meta = {"targets.json": MetaFile(targets.signed.version)}
            state = _State(
                root=root, timestamp=Metadata(Timestamp()), snapshot=snapshot, targets=targets
            )
            self._publish_snapshot(state, now, bump=False)

    # ----------------------------------------------------------------- reading

    def root_bytes(self, version: int | None = None) -> bytes:
        """A root's file as served (the newest without ``version``): what a kiosk is shipped."""
        if version is None:
            version = self._root_version()
        return (self.metadata_dir / f"{version}.root.json").read_bytes()

    def describe(self, now: datetime | None = None) -> dict[str, Any]:
        """Roles, versions, keys, thresholds and expiry: ``kioskfleet keys list``."""
        now = _utc(now)
        with self._thread_lock:
            state = self._load()
        out: dict[str, Any] = {}
        roles: list[tuple[str, Metadata[Any]]] = [
            ("root", state.root),
            ("targets", state.targets),
            ("snapshot", state.snapshot),
            ("timestamp", state.timestamp),
            *state.delegated.items(),
        ]
        for name, md in roles:
            entry: dict[str, Any] = {
                "version": md.signed.version,
                "expires": md.signed.expires.isoformat(),
                "expired": md.signed.is_expired(now),
            }
            if name in ("root", "targets", "snapshot", "timestamp"):
                role = state.root.signed.roles[name]
                entry |= {"keyids": sorted(role.keyids), "threshold": role.threshold}
            if isinstance(md.signed, Targets) and name != "targets":
                entry["targets"] = sorted(md.signed.targets)
                # false: signed by keys the role no longer has; clients refuse it until re-signed
                entry["signed_by_its_keys"] = _verifies(state.targets.signed, name, md)
            out[name] = entry
        delegations = state.targets.signed.delegations
        for kind, role in (delegations.roles or {}).items() if delegations else ():
            out.setdefault(kind, {"version": 0})
            out[kind] |= {
                "keyids": sorted(role.keyids),
                "threshold": role.threshold,
                "paths": role.paths,
            }
        return out

    def releases(self, kind: ReleaseKind) -> list[tuple[ReleaseTarget, TargetFile]]:
        """The releases the role ``kind`` lists, oldest counter first."""
        with self._thread_lock:
            state = self._load()
        md = state.delegated.get(kind)
        found = []
        for name, info in (md.signed.targets if md else {}).items():
            found.append((ReleaseTarget.from_target(name, info.custom), info))
        return sorted(found, key=lambda pair: pair[0].release_counter)

    def next_counter(self, kind: ReleaseKind) -> int:
        """The release counter the next release of ``kind`` gets."""
        listed = self.releases(kind)
        return listed[-1][0].release_counter + 1 if listed else 1

    # ----------------------------------------------------------------- releases

    def add_release(
        self,
        release: ReleaseTarget,
        data: bytes,
        *,
        signer: Signer | None = None,
        now: datetime | None = None,
    ) -> TargetFile:
        """List ``data`` as ``release`` in its role (see :meth:`add_releases`)."""
        return self.add_releases([(release, data)], signer=signer, now=now)[0]

    def add_releases(
        self,
        releases: Sequence[tuple[ReleaseTarget, bytes]],
        *,
        signer: Signer | None = None,
        now: datetime | None = None,
    ) -> list[TargetFile]:
        """List each ``(release, data)`` in their role (one kind; a catalogue's targets, one
        per site type, share a counter) in one new role version signed by ``signer`` (the
        controller's online release key by default), then publish snapshot and timestamp.

        Refused when the signer is not one of the role's keys (a catalogue key signing
        software), a counter is not above every listed one, or a name is taken.
        """
        now = _utc(now)
        kinds = {release.kind for release, _ in releases}
        if len(kinds) != 1:
            raise RepositoryRefused("one kind of release at a time")
        (role,) = kinds
        with self._locked():
            state = self._load()
            delegated = self._delegated_role(state, role)
            if signer is None:
                signer = self._online_signer(state, "release", delegated.keyids)
                if signer is None:
                    raise RepositoryRefused(
                        f"the controller holds no key of the {role} role: upload metadata "
                        "signed by a release manager (kioskfleet release publish)"
                    )
            current = state.delegated.get(role)
            md = (
                Metadata(
                    Targets(
                        version=current.signed.version + 1,
                        targets=dict(current.signed.targets),
                    )
                )
                if current
                else Metadata(Targets(version=1))
            )
            infos = []
            for release, data in releases:
                self._check_new_release(current, release)
                if release.name in md.signed.targets:
                    raise RepositoryRefused(f"{release.name} is given twice")
                info = TargetFile.from_data(release.name, data, ["sha256"])
                info.unrecognized_fields["custom"] = release.custom()
                md.signed.targets[release.name] = info
                infos.append(info)
            md.signed.expires = _expiry(now, self.lifetimes.delegated)
            self._sign(md, [signer], role, state.targets.signed)
            for info, (_, data) in zip(infos, releases, strict=True):
                self._store_target(info, data)
            self._write(f"{md.signed.version}.{role}.json", md)
            state.delegated[role] = md
            self._publish_snapshot(state, now)
            return infos

    def submit_role(
        self,
        role: str,
        metadata: bytes,
        files: Mapping[str, bytes],
        *,
        now: datetime | None = None,
    ) -> Metadata[Targets]:
        """Accept a delegated role's metadata signed elsewhere (a release manager's key,
        ``kioskfleet release publish``) with the files of the targets it adds.

        Checked: it parses, is targets metadata of a role we delegate, carries a threshold of
        that role's signatures, is the next version, has not expired, lists only paths the role
        is trusted for, with our names and custom data, counters above every earlier release,
        and every new target's bytes match its length and hash. Then snapshot and timestamp.
        """
        now = _utc(now)
        try:
            md = Metadata[Targets].from_bytes(metadata)
        except DeserializationError as err:
            raise RepositoryRefused(f"not valid targets metadata: {err}") from err
        if not isinstance(md.signed, Targets):
            raise RepositoryRefused(f"not targets metadata but {md.signed.type}")
        with self._locked():
            state = self._load()
            delegated = self._delegated_role(state, role)
            try:
                state.targets.signed.verify_delegate(role, md.signed_bytes, md.signatures)
            except UnsignedMetadataError as err:
                raise RepositoryRefused(f"{role}: not signed by enough of its keys: {err}") from err
            current = state.delegated.get(role)
            expected = current.signed.version + 1 if current else 1
            if md.signed.version != expected:
                raise RepositoryRefused(f"{role}: version {md.signed.version}, expected {expected}")
            if md.signed.is_expired(now):
                raise RepositoryRefused(f"{role}: expired at {md.signed.expires.isoformat()}")
            if md.signed.delegations is not None:
                raise RepositoryRefused(f"{role}: may not delegate further")
            old = current.signed.targets if current else {}
            for name, info in md.signed.targets.items():
                if not delegated.is_delegated_path(name):
                    raise RepositoryRefused(f"{role} is not trusted for {name}")
                try:
                    release = ReleaseTarget.from_target(name, info.custom)
                except TargetError as err:
                    raise RepositoryRefused(str(err)) from err
                if name in old:
                    if old[name] != info:
                        raise RepositoryRefused(f"{name}: a listed target cannot change")
                    continue
                self._check_new_release(current, release)
                data = files.get(name)
                if data is None:
                    raise RepositoryRefused(f"{name}: its file was not uploaded")
                try:
                    info.verify_length_and_hashes(data)
                except LengthOrHashMismatchError as err:
                    raise RepositoryRefused(f"{name}: {err}") from err
                if "sha256" not in info.hashes:
                    raise RepositoryRefused(f"{name}: needs a sha256 hash")
            for name, info in md.signed.targets.items():
                if name not in old:
                    self._store_target(info, files[name])
            self._write(f"{md.signed.version}.{role}.json", md)
            state.delegated[role] = md
            self._publish_snapshot(state, now)
            return md

    def target_path(self, name: str, sha256: str) -> Path:
        """Where a target's bytes are stored (and served from)."""
        parent, _, base = name.rpartition("/")
        return self.targets_dir / parent / f"{sha256}.{base}"

    # ----------------------------------------------------------------- online signing

    def resign_online(self, now: datetime | None = None) -> list[str]:
        """Renew what online keys sign before it expires: delegated roles the online release
        key signs, snapshot, timestamp — each once less than ``renew_below`` of its lifetime
        is left. Call it from a timer; returns the roles re-signed."""
        now = _utc(now)
        with self._locked():
            state = self._load()
            renewed: list[str] = []
            for role, md in sorted(state.delegated.items()):
                if not self._due(md.signed, role, now):
                    continue
                # only what the online key signed: a release manager's signature is never
                # replaced by the controller's (theirs to renew, `kioskfleet keys list` shows when)
                keyids = set(self._delegated_role(state, role).keyids) & set(md.signatures)
                signer = self._online_signer(state, "release", sorted(keyids))
                if signer is None:
                    continue
                md.signed.version += 1
                md.signed.expires = _expiry(now, self.lifetimes.delegated)
                self._sign(md, [signer], role, state.targets.signed)
                self._write(f"{md.signed.version}.{role}.json", md)
                renewed.append(role)
            if renewed or self._due(state.snapshot.signed, "snapshot", now):
                self._publish_snapshot(state, now)
                renewed += ["snapshot", "timestamp"]
            elif self._due(state.timestamp.signed, "timestamp", now):
                self._publish_timestamp(state, now)
                renewed.append("timestamp")
            return renewed

    def _due(self, signed: Signed, role: str, now: datetime) -> bool:
        lifetime = self.lifetimes.of(role)
        return signed.expires - now < lifetime * self.lifetimes.renew_below

    # ----------------------------------------------------------------- key changes

    def rotate_online_key(
        self,
        role: str,
        *,
        root_signers: Sequence[Signer],
        targets_signer: Signer | None = None,
        now: datetime | None = None,
    ) -> Key:
        """Replace the online key of ``snapshot`` or ``timestamp`` (a new root version, signed
        by a threshold of the root keys), or the online ``release`` key (a new targets version,
        signed by the offline targets key); then re-sign with the new key. Returns it."""
        now = _utc(now)
        if self.online_keys is None:
            raise RepositoryRefused("no online key folder configured")
        with self._locked():
            state = self._load()
            new_key = self.online_keys.create(role)
            try:
                self._rotate_online(state, role, new_key, root_signers, targets_signer, now)
            except BaseException:
                self.online_keys.discard(role, new_key)  # never used: nothing names it
                raise
            return new_key

    def _rotate_online(
        self,
        state: _State,
        role: str,
        new_key: Key,
        root_signers: Sequence[Signer],
        targets_signer: Signer | None,
        now: datetime,
    ) -> None:
        if role in ("snapshot", "timestamp"):
            root = self._next_root(state, now)
            for keyid in list(root.signed.roles[role].keyids):
                root.signed.revoke_key(keyid, role)
            root.signed.add_key(new_key, role)
            self._sign_root(root, previous=state.root, signers=root_signers)
            self._write(f"{root.signed.version}.root.json", root)
            state.root = root
        elif role == "release":
            if targets_signer is None:
                raise RepositoryRefused("rotating the release key needs the targets key")
            old = self._online_release_keyids(state)
            if not old:
                raise RepositoryRefused("this repository has no online release key")
            targets = self._next_targets(state, now)
            for kind in RELEASE_KINDS:
                keyids = targets.signed.get_delegated_role(kind).keyids
                if old & set(keyids):
                    for keyid in old & set(keyids):
                        targets.signed.revoke_key(keyid, kind)
                    targets.signed.add_key(new_key, kind)
            self._sign(targets, [targets_signer], "targets", state.root.signed)
            self._write(f"{targets.signed.version}.targets.json", targets)
            state.targets = targets
            # what the old key signed stays valid only until re-signed with the new one
            signer = self._online_signer(state, "release", [new_key.keyid])
            if signer is None:
                raise RepositoryRefused("the new release key cannot be read back")
            for name, md in sorted(state.delegated.items()):
                if new_key.keyid in targets.signed.get_delegated_role(name).keyids:
                    md.signed.version += 1
                    md.signed.expires = _expiry(now, self.lifetimes.delegated)
                    self._sign(md, [signer], name, targets.signed)
                    self._write(f"{md.signed.version}.{name}.json", md)
        else:
            raise RepositoryRefused(f"online roles are {', '.join(ONLINE_ROLES)}")
        self._publish_snapshot(state, now)

    def set_root_keys(
        self,
        keys: Sequence[Key],
        threshold: int,
        *,
        old_signers: Sequence[Signer],
        new_signers: Sequence[Signer],
        now: datetime | None = None,
    ) -> int:
        """Replace the root keys and threshold (a compromised or lost root key): the new root
        is signed by a threshold of the old keys and of the new ones (TUF §5.3.4). Its version."""
        now = _utc(now)
        if len({key.keyid for key in keys}) != len(keys) or not 1 <= threshold <= len(keys):
            raise RepositoryRefused(
                "distinct root keys, and a threshold between 1 and their number"
            )
        with self._locked():
            state = self._load()
            root = self._next_root(state, now)
            for keyid in list(root.signed.roles["root"].keyids):
                root.signed.revoke_key(keyid, "root")
            for key in keys:
                root.signed.add_key(key, "root")
            root.signed.roles["root"].threshold = threshold
            self._sign_root(root, previous=state.root, signers=[*old_signers, *new_signers])
            self._write(f"{root.signed.version}.root.json", root)
            return root.signed.version

    def resign_root(self, *, signers: Sequence[Signer], now: datetime | None = None) -> int:
        """A new root version with a fresh expiry (root keys are offline: an admin's yearly
        chore; ``kioskfleet keys list`` shows when it is due). Its version."""
        now = _utc(now)
        with self._locked():
            state = self._load()
            root = self._next_root(state, now)
            self._sign_root(root, previous=state.root, signers=signers)
            self._write(f"{root.signed.version}.root.json", root)
            return root.signed.version

    def set_role_keys(
        self,
        role: ReleaseKind,
        keys: Sequence[Key],
        *,
        threshold: int = 1,
        targets_signer: Signer,
        keep_online_release: bool = True,
        now: datetime | None = None,
    ) -> int:
        """Say which keys sign ``role`` (a release manager joins or leaves): a new targets
        version signed by the offline targets key. The controller's online release key stays
        unless ``keep_online_release`` is false. Returns the targets version."""
        now = _utc(now)
        with self._locked():
            state = self._load()
            online = self._online_release_keyids(state) if keep_online_release else set()
            targets = self._next_targets(state, now)
            delegated = targets.signed.get_delegated_role(role)
            kept = [k for k in delegated.keyids if k in online]
            for keyid in list(delegated.keyids):
                targets.signed.revoke_key(keyid, role)
            for key in keys:
                targets.signed.add_key(key, role)
            for keyid in kept:
                key = state.targets.signed.get_key(keyid)
                targets.signed.add_key(key, role)
            count = len(targets.signed.get_delegated_role(role).keyids)
            if not 1 <= threshold <= max(count, 1) or count == 0:
                raise RepositoryRefused(f"{role}: a threshold between 1 and its {count} keys")
            targets.signed.get_delegated_role(role).threshold = threshold
            self._sign(targets, [targets_signer], "targets", state.root.signed)
            self._write(f"{targets.signed.version}.targets.json", targets)
            state.targets = targets
            current = state.delegated.get(role)
            if current is not None and not _verifies(targets.signed, role, current):
                # signed by a key that left: the online release key re-signs where it may;
                # otherwise clients refuse the role until a remaining key signs its next version
                signer = self._online_signer(state, "release", online)
                if signer is not None:
                    current.signed.version += 1
                    current.signed.expires = _expiry(now, self.lifetimes.delegated)
                    self._sign(current, [signer], role, targets.signed)
                    self._write(f"{current.signed.version}.{role}.json", current)
            self._publish_snapshot(state, now)
            return targets.signed.version

    # ----------------------------------------------------------------- internals

    def _check_new_release(self, current: Metadata[Targets] | None, release: ReleaseTarget) -> None:
        listed = current.signed.targets if current else {}
        if release.name in listed:
            raise RepositoryRefused(f"{release.name} is already published")
        counters = [
            ReleaseTarget.from_target(name, info.custom).release_counter
            for name, info in listed.items()
        ]
        if counters and release.release_counter <= max(counters):
            raise RepositoryRefused(
                f"{release.name}: release counter {release.release_counter} is not above "
                f"the latest {max(counters)}"
            )

    def _delegated_role(self, state: _State, role: str) -> DelegatedRole:
        delegations = state.targets.signed.delegations
        roles = delegations.roles if delegations is not None else None
        if not roles or role not in roles:
            raise RepositoryRefused(f"no delegated role {role!r} (roles: {', '.join(roles or ())})")
        return roles[role]

    def _online_signer(self, state: _State, role: str, keyids: Iterable[str]) -> Signer | None:
        if self.online_keys is None:
            return None
        try:
            return self.online_keys.signer(role, keyids)
        except KeyFileError as err:
            raise RepositoryRefused(f"online {role} key: {err}") from err

    def _online_release_keyids(self, state: _State) -> set[str]:
        if self.online_keys is None:
            return set()
        found = set()
        delegations = state.targets.signed.delegations
        for role in (delegations.roles or {}).values() if delegations else ():
            for keyid in role.keyids:
                if (self.online_keys.path / f"release-{keyid[:16]}.pem").is_file():
                    found.add(keyid)
        return found

    def _next_root(self, state: _State, now: datetime) -> Metadata[Root]:
        root = Metadata[Root].from_bytes(state.root.to_bytes())
        root.signed.version += 1
        root.signed.expires = _expiry(now, self.lifetimes.root)
        root.signatures.clear()
        return root

    def _next_targets(self, state: _State, now: datetime) -> Metadata[Targets]:
        targets = Metadata[Targets].from_bytes(state.targets.to_bytes())
        targets.signed.version += 1
        targets.signed.expires = _expiry(now, self.lifetimes.targets)
        targets.signatures.clear()
        return targets

    def _sign_root(
        self, root: Metadata[Root], *, previous: Metadata[Root] | None, signers: Sequence[Signer]
    ) -> None:
        """Sign with every given root key the new or old root knows; then the new root must
        verify against the old root's threshold and against its own."""
        wanted = set(root.signed.roles["root"].keyids)
        if previous is not None:
            wanted |= set(previous.signed.roles["root"].keyids)
        seen = set()
        for signer in signers:
            keyid = signer.public_key.keyid
            if keyid in wanted and keyid not in seen:
                root.sign(signer, append=True)
                seen.add(keyid)
        try:
            if previous is not None:
                previous.signed.verify_delegate("root", root.signed_bytes, root.signatures)
            root.signed.verify_delegate("root", root.signed_bytes, root.signatures)
        except UnsignedMetadataError as err:
            raise RepositoryRefused(f"root: not signed by enough root keys: {err}") from err

    def _sign(
        self, md: Metadata[Any], signers: Sequence[Signer], role: str, delegator: Root | Targets
    ) -> None:
        md.signatures.clear()
        for signer in signers:
            md.sign(signer, append=True)
        try:
            delegator.verify_delegate(role, md.signed_bytes, md.signatures)
        except UnsignedMetadataError as err:
            raise RepositoryRefused(f"{role}: the key given is not one of its keys: {err}") from err

    def _publish_snapshot(self, state: _State, now: datetime, *, bump: bool = True) -> None:
        snapshot = state.snapshot
        if bump:
            snapshot.signed.version += 1
        snapshot.signed.meta = {"targets.json": MetaFile(state.targets.signed.version)} | {
            f"{role}.json": MetaFile(md.signed.version)
            for role, md in sorted(state.delegated.items())
        }
        snapshot.signed.expires = _expiry(now, self.lifetimes.snapshot)
        signer = self._online_signer(state, "snapshot", state.root.signed.roles["snapshot"].keyids)
        if signer is None:
            raise RepositoryRefused("the online snapshot key is missing")
        self._sign(snapshot, [signer], "snapshot", state.root.signed)
        self._write(f"{snapshot.signed.version}.snapshot.json", snapshot)
        self._publish_timestamp(state, now)

    def _publish_timestamp(self, state: _State, now: datetime) -> None:
        timestamp = state.timestamp
        timestamp.signed.version += 1
        timestamp.signed.snapshot_meta = MetaFile(state.snapshot.signed.version)
        timestamp.signed.expires = _expiry(now, self.lifetimes.timestamp)
        signer = self._online_signer(
            state, "timestamp", state.root.signed.roles["timestamp"].keyids
        )
        if signer is None:
            raise RepositoryRefused("the online timestamp key is missing")
        self._sign(timestamp, [signer], "timestamp", state.root.signed)
        self._write("timestamp.json", timestamp)

    def _store_target(self, info: TargetFile, data: bytes) -> None:
        path = self.target_path(info.path, info.hashes["sha256"])
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, data)

    def _root_version(self) -> int:
        try:
            names = os.listdir(self.metadata_dir)
        except OSError as err:
            raise RepositoryRefused(f"no repository in {self.path}: {err.strerror}") from err
        versions = [int(match.group(1)) for name in names if (match := _VERSIONED.match(name))]
        if not versions:
            raise RepositoryRefused(f"no repository in {self.path}")
        return max(versions)

    def _read(self, name: str, kind: type[T]) -> Metadata[T]:
        try:
            md: Metadata[Any] = Metadata.from_bytes((self.metadata_dir / name).read_bytes())
        except (OSError, DeserializationError) as err:
            raise RepositoryRefused(f"{self.metadata_dir / name}: unreadable: {err}") from err
        if not isinstance(md.signed, kind):
            raise RepositoryRefused(f"{name}: not {kind.__name__} metadata")
        return md

    def _load(self) -> _State:
        root = self._read(f"{self._root_version()}.root.json", Root)
        timestamp = self._read("timestamp.json", Timestamp)
        snapshot = self._read(f"{timestamp.signed.snapshot_meta.version}.snapshot.json", Snapshot)
        targets = self._read(
            f"{snapshot.signed.meta['targets.json'].version}.targets.json", Targets
        )
        delegated = {
            name.removesuffix(".json"): self._read(f"{meta.version}.{name}", Targets)
            for name, meta in snapshot.signed.meta.items()
            if name != "targets.json"
        }
        return _State(root, timestamp, snapshot, targets, delegated)

    def _write(self, name: str, md: Metadata[Any]) -> None:
        _atomic_write(self.metadata_dir / name, md.to_bytes(_SERIALIZER))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time: threads of this process, and other processes (an admin's
        ``kioskfleet keys`` beside the running controller)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with self._thread_lock:
            fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)


def _verifies(delegator: Targets, role: str, md: Metadata[Targets]) -> bool:
    try:
        delegator.verify_delegate(role, md.signed_bytes, md.signatures)
    except UnsignedMetadataError:
        return False
    return True


def _atomic_write(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, ``os.replace``, fsync the folder (STYLE 13)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
