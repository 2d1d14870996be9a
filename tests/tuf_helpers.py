"""Helpers for the update-repository tests: keys in files, a repository made at a given time,
the controller's app serving it over real HTTP on loopback, and an attacker's hand that
writes metadata the repository itself would refuse to (to see the client refuse it)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import Metadata, MetaFile, Snapshot, Timestamp

from kioskfleet.controller.app import create_app
from kioskfleet.controller.config import Settings, TufSettings
from kioskfleet.controller.db import make_engine, migrate
from kioskfleet.controller.service import Controller
from kioskfleet.controller.tufrepo import OnlineKeys, TufRepository
from kioskfleet.updates.client import UpdateClient
from kioskfleet.updates.keys import generate_key, load_signer
from kioskfleet.updates.targets import ReleaseTarget
from tests.conftest import TEST_TOKEN

#: a fixed "now" for repositories whose expiry does not matter to the test
NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def real_now() -> datetime:
    """The clock ngclient itself checks expiry against."""
    return datetime.now(UTC)


@dataclass
class Keys:
    """Offline keys of one repository, as files and signers."""

    folder: Path
    root: list[CryptoSigner] = field(default_factory=list)
    targets: CryptoSigner | None = None
    software: CryptoSigner | None = None
    catalogue: CryptoSigner | None = None

    def make(self, name: str) -> CryptoSigner:
        generate_key(self.folder / f"{name}.pem")
        return load_signer(self.folder / f"{name}.pem")


def make_keys(folder: Path, roots: int = 3) -> Keys:
    keys = Keys(folder)
    keys.root = [keys.make(f"root{i}") for i in range(roots)]
    keys.targets = keys.make("targets")
    keys.software = keys.make("rm-software")
    keys.catalogue = keys.make("rm-catalogue")
    return keys


def make_repository(
    tmp: Path,
    *,
    now: datetime = NOW,
    threshold: int = 2,
    online_release: bool = True,
    keys: Keys | None = None,
) -> tuple[TufRepository, Keys]:
    """A 2-of-3 root repository with a release manager's key per role (and the online
    release key), created at ``now``."""
    keys = keys or make_keys(tmp / "offline")
    assert keys.targets and keys.software and keys.catalogue
    repo = TufRepository.create(
        tmp / "repo",
        root_keys=[s.public_key for s in keys.root],
        root_signers=keys.root[:threshold],
        threshold=threshold,
        targets_signer=keys.targets,
        online_keys=OnlineKeys(tmp / "online"),
        role_keys={
            "software": [keys.software.public_key],
            "catalogue": [keys.catalogue.public_key],
        },
        online_release=online_release,
        now=now,
    )
    return repo, keys


def software(counter: int, version: str | None = None) -> ReleaseTarget:
    return ReleaseTarget("software", version or f"1.{counter}.0", counter)


def catalogue(counter: int, site_type: str = "bank_agent_branch") -> ReleaseTarget:
    return ReleaseTarget("catalogue", f"2026.{counter}", counter, site_type)


@dataclass
class Served:
    """The controller's app serving a repository on 127.0.0.1."""

    url: str
    repository: TufRepository

    @property
    def tuf_url(self) -> str:
        return self.url + "/tuf/"

    def client(self, state: Path, *, root: bytes | None = None) -> UpdateClient:
        return UpdateClient(
            metadata_dir=state / "metadata",
            repository_url=self.tuf_url,
            trusted_root=root if root is not None else self.repository.root_bytes(1),
            target_dir=state / "downloads",
        )


@contextmanager
def serve(tmp: Path, repository: TufRepository) -> Iterator[Served]:
    """``create_app`` with a never-started controller whose ``[tuf]`` is ``repository``."""
    assert repository.online_keys is not None
    settings = Settings(
        bootstrap_token=TEST_TOKEN,
        db_url=f"sqlite:///{tmp / 'controller.db'}",
        tuf=TufSettings(dir=repository.path, online_keys=repository.online_keys.path),
    )
    with serve_app(settings) as url:
        yield Served(url, repository)


@contextmanager
def serve_app(settings: Settings) -> Iterator[str]:
    """The controller's app (its controller never started: no broker; the database migrated)
    on 127.0.0.1 by uvicorn in a thread; its base URL."""
    migrate(make_engine(settings.db_url))  # what start() would do: the audit table
    app = create_app(settings, Controller(settings))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        assert thread.is_alive(), "the server thread died"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# ------------------------------------------------------------------ the attacker's hand


def read(repo: TufRepository, name: str) -> Metadata[Any]:
    return Metadata.from_bytes((repo.metadata_dir / name).read_bytes())


def write(repo: TufRepository, name: str, md: Metadata[Any]) -> None:
    (repo.metadata_dir / name).write_bytes(md.to_bytes())


def online_signer(repo: TufRepository, role: str) -> Signer:
    assert repo.online_keys is not None
    root = read(repo, f"{_root_version(repo)}.root.json")
    signer = repo.online_keys.signer(role, root.signed.roles[role].keyids)
    assert signer is not None
    return signer


def _root_version(repo: TufRepository) -> int:
    return max(int(p.name.split(".")[0]) for p in repo.metadata_dir.glob("*.root.json"))


def republish(
    repo: TufRepository,
    changed: dict[str, int],
    *,
    now: datetime | None = None,
    timestamp_signer: Signer | None = None,
) -> None:
    """Sign a new snapshot naming ``changed`` (role → version) and a timestamp for it, with
    the online keys (or another ``timestamp_signer``): what a thief of the online keys can
    do, bypassing every check the repository makes."""
    now = now or real_now()
    ts = read(repo, "timestamp.json")
    snap = read(repo, f"{ts.signed.snapshot_meta.version}.snapshot.json")
    assert isinstance(snap.signed, Snapshot) and isinstance(ts.signed, Timestamp)
    snap.signed.version += 1
    for role, version in changed.items():
        snap.signed.meta[f"{role}.json"] = MetaFile(version)
    snap.signed.expires = (now + timedelta(days=1)).replace(microsecond=0)
    snap.signatures.clear()
    snap.sign(online_signer(repo, "snapshot"))
    write(repo, f"{snap.signed.version}.snapshot.json", snap)
    ts.signed.version += 1
    ts.signed.snapshot_meta = MetaFile(snap.signed.version)
    ts.signed.expires = (now + timedelta(days=1)).replace(microsecond=0)
    ts.signatures.clear()
    ts.sign(timestamp_signer or online_signer(repo, "timestamp"))
    write(repo, "timestamp.json", ts)
