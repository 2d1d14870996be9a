"""The agent's update client (``kioskfleet.updates.client``) against the controller's
repository served over real HTTP on loopback.

The cases of the tuf-conformance suite, in our own words: a good target, a tampered or
lengthened target, rolled-back metadata, expired metadata, a wrong key and too few
signatures, mix-and-match, key rotations, delegation rules (a catalogue key cannot list
software), and our own release counter. Every refusal is checked to have installed nothing.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root, TargetFile, Targets

from kioskfleet.updates.client import (
    DatedFetcher,
    DownloadFailed,
    MetadataExpired,
    UpdateClient,
    UpdateRejected,
    sha256_file,
)
from kioskfleet.updates.keys import load_signer
from tests.tuf_helpers import (
    Keys,
    Served,
    catalogue,
    make_repository,
    online_signer,
    read,
    real_now,
    republish,
    serve,
    software,
    write,
)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    repo, _ = make_repository(tmp_path, now=real_now())
    repo.add_release(software(1), b"release one")
    repo.add_release(catalogue(1), b'{"services": []}')
    with serve(tmp_path, repo) as served:
        yield served


def downloads(state: Path) -> list[str]:
    folder = state / "downloads"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_signed_target_is_downloaded_verified_and_then_found_in_the_cache(
    served: Served, tmp_path: Path
) -> None:
    client = served.client(tmp_path / "kiosk")
    got = client.fetch(software(1).name, kind="software", installed_counter=0)
    assert got.path.read_bytes() == b"release one"
    assert (got.release.kind, got.release.version, got.release.release_counter) == (
        "software",
        "1.1.0",
        1,
    )
    assert got.sha256 == sha256_file(got.path)
    assert got.length == len(b"release one")
    # trusted metadata under non-versioned names
    names = {p.name for p in (tmp_path / "kiosk" / "metadata").iterdir()}
    assert {
        "root.json",
        "timestamp.json",
        "snapshot.json",
        "targets.json",
        "software.json",
    } <= names
    # the second time the verified copy is used: the repository's file is gone, no download
    shutil.rmtree(served.repository.targets_dir / "software")
    again = client.fetch(software(1).name)
    assert again.path == got.path and again.path.read_bytes() == b"release one"


def test_a_catalogue_for_the_stations_site_type(served: Served, tmp_path: Path) -> None:
    client = served.client(tmp_path / "kiosk")
    got = client.fetch(catalogue(1).name, kind="catalogue", site_type="bank_agent_branch")
    assert got.path.read_bytes() == b'{"services": []}'
    with pytest.raises(UpdateRejected, match="not subway_station"):
        client.fetch(catalogue(1).name, kind="catalogue", site_type="subway_station")
    with pytest.raises(UpdateRejected, match="a catalogue target, not software"):
        client.fetch(catalogue(1).name, kind="software")


# a longer file is stopped at the signed length by the fetcher (a download error: retried),
# a wrong or short one fails the check (a rejection): none is stored
@pytest.mark.parametrize(
    ("change", "error", "reason"),
    [
        (
            lambda data: bytes([data[0] ^ 1]) + data[1:],
            UpdateRejected,
            "does not match expected hash",
        ),
        (lambda data: data + b"!", DownloadFailed, "exceeding the maximum allowed length of 11"),
        (
            lambda data: data[:-1],
            UpdateRejected,
            "Observed length 10 does not match expected length 11",
        ),
    ],
)
def test_a_tampered_target_is_refused_and_nothing_is_stored(
    served: Served,
    tmp_path: Path,
    change: Callable[[bytes], bytes],
    error: type[Exception],
    reason: str,
) -> None:
    info = served.repository.releases("software")[0][1]
    stored = served.repository.target_path(info.path, info.hashes["sha256"])
    stored.write_bytes(change(stored.read_bytes()))
    client = served.client(tmp_path / "kiosk")
    with pytest.raises(error, match=reason):
        client.fetch(software(1).name)
    assert downloads(tmp_path / "kiosk") == []


def test_rolled_back_timestamp_is_refused(served: Served, tmp_path: Path) -> None:
    repo = served.repository
    old = (repo.metadata_dir / "timestamp.json").read_bytes()
    client = served.client(tmp_path / "kiosk")
    repo.add_release(software(2), b"release two")
    client.fetch(software(2).name)
    (repo.metadata_dir / "timestamp.json").write_bytes(old)  # an older, validly signed one
    with pytest.raises(UpdateRejected, match=r"New timestamp version \d+ must be >= \d+"):
        client.refresh()


def test_rolled_back_snapshot_is_refused(served: Served, tmp_path: Path) -> None:
    """A timestamp newer than the trusted one that points at an older snapshot."""
    repo = served.repository
    client = served.client(tmp_path / "kiosk")
    client.refresh()
    trusted = read(repo, "timestamp.json").signed.snapshot_meta.version
    republish(repo, {})
    ts = read(repo, "timestamp.json")
    ts.signed.snapshot_meta.version = trusted - 1
    ts.signed.version += 1
    ts.signatures.clear()
    ts.sign(online_signer(repo, "timestamp"))
    write(repo, "timestamp.json", ts)
    with pytest.raises(UpdateRejected, match="New snapshot version must be >="):
        client.refresh()


def test_expired_timestamp_is_reported_as_expired_and_fixed_by_resigning(
    tmp_path: Path,
) -> None:
    """A repository whose online metadata was last signed two days ago (a controller that
    was down): the timestamp has expired. The re-signing timer's tick fixes it."""
    repo, _ = make_repository(tmp_path, now=real_now() - timedelta(days=2))
    repo.add_release(software(1), b"one", now=real_now() - timedelta(days=2))
    with serve(tmp_path, repo) as served:
        client = served.client(tmp_path / "kiosk")
        with pytest.raises(MetadataExpired, match=r"timestamp\.json is expired"):
            client.fetch(software(1).name)
        assert downloads(tmp_path / "kiosk") == []
        assert repo.resign_online(real_now()) == ["timestamp"]
        assert client.fetch(software(1).name).path.read_bytes() == b"one"


def test_the_client_tells_how_far_its_clock_is_from_the_repositorys(
    served: Served, tmp_path: Path
) -> None:
    client = served.client(tmp_path / "kiosk")
    assert client.clock_skew() is None  # nothing heard yet
    client.refresh()
    skew = client.clock_skew()
    assert skew is not None and abs(skew) < 2.5  # Date has whole seconds


def test_an_expiry_seen_by_a_clock_far_off_says_so(tmp_path: Path) -> None:
    """TUF checks expiry against the local clock: a kiosk an hour ahead is told apart from a
    repository that stopped re-signing."""
    repo, _ = make_repository(tmp_path, now=real_now() - timedelta(days=2))
    with serve(tmp_path, repo) as served:
        ahead = UpdateClient(
            metadata_dir=tmp_path / "kiosk" / "metadata",
            repository_url=served.tuf_url,
            trusted_root=repo.root_bytes(1),
            target_dir=tmp_path / "kiosk" / "downloads",
            fetcher=DatedFetcher(user_agent="test", clock=lambda: time.time() + 3600),
        )
        with pytest.raises(MetadataExpired, match=r"this clock is 3[56]\d\d s ahead of the"):
            ahead.refresh()
        on_time = served.client(tmp_path / "other")
        with pytest.raises(MetadataExpired) as caught:
            on_time.refresh()
        assert "this clock" not in str(caught.value)


def test_expired_snapshot_is_refused(tmp_path: Path) -> None:
    repo, _ = make_repository(tmp_path, now=real_now() - timedelta(days=8))
    repo.add_release(software(1), b"one", now=real_now() - timedelta(days=8))
    # a fresh timestamp over the expired snapshot: only the timestamp was renewed
    ts = read(repo, "timestamp.json")
    ts.signed.version += 1
    ts.signed.expires = (real_now() + timedelta(days=1)).replace(microsecond=0)
    ts.signatures.clear()
    ts.sign(online_signer(repo, "timestamp"))
    write(repo, "timestamp.json", ts)
    with (
        serve(tmp_path, repo) as served,
        pytest.raises(MetadataExpired, match=r"snapshot\.json is expired"),
    ):
        served.client(tmp_path / "kiosk").refresh()


def test_timestamp_signed_by_a_key_root_does_not_name_is_refused(
    served: Served, tmp_path: Path
) -> None:
    keys_folder = tmp_path / "thief"
    stranger = Keys(keys_folder).make("stranger")
    republish(served.repository, {}, timestamp_signer=stranger)
    with pytest.raises(UpdateRejected, match="timestamp was signed by 0/1 keys"):
        served.client(tmp_path / "kiosk").refresh()


def test_mix_and_match_a_role_file_of_another_version_is_refused(
    served: Served, tmp_path: Path
) -> None:
    """The snapshot names software version 2; the file served under that name is version 1
    (an old, validly signed file mixed into a new repository state)."""
    repo = served.repository
    client = served.client(tmp_path / "kiosk")
    client.refresh()
    (repo.metadata_dir / "2.software.json").write_bytes(
        (repo.metadata_dir / "1.software.json").read_bytes()
    )
    republish(repo, {"software": 2})
    with pytest.raises(UpdateRejected, match="Expected software v2, got v1"):
        client.fetch(software(1).name)
    assert downloads(tmp_path / "kiosk") == []


def test_a_release_older_than_the_installed_one_is_refused_before_download(
    served: Served, tmp_path: Path
) -> None:
    client = served.client(tmp_path / "kiosk")
    with pytest.raises(UpdateRejected, match="older than the installed 5"):
        client.fetch(software(1).name, installed_counter=5)
    assert downloads(tmp_path / "kiosk") == []
    # the same counter is not older: reinstalling what is installed is allowed
    assert client.fetch(software(1).name, installed_counter=1).release.release_counter == 1


def test_a_target_the_repository_does_not_list_is_refused(served: Served, tmp_path: Path) -> None:
    with pytest.raises(UpdateRejected, match="not a signed target"):
        served.client(tmp_path / "kiosk").fetch(software(9).name)


def test_a_catalogue_key_cannot_ship_software(served: Served, tmp_path: Path) -> None:
    """A catalogue editor's key lists a software target in the catalogue role, and a thief of
    the online keys publishes it: the client looks for software only in the software role."""
    repo = served.repository
    signer = load_signer(tmp_path / "offline" / "rm-catalogue.pem")
    current = read(repo, "1.catalogue.json")
    evil = Metadata(
        Targets(version=2, expires=current.signed.expires, targets=dict(current.signed.targets))
    )
    name = software(7).name
    info = TargetFile.from_data(name, b"evil code", ["sha256"])
    info.unrecognized_fields["custom"] = software(7).custom()
    evil.signed.targets[name] = info
    evil.sign(signer)
    write(repo, "2.catalogue.json", evil)
    stored = repo.target_path(name, info.hashes["sha256"])
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(b"evil code")
    republish(repo, {"catalogue": 2})
    client = served.client(tmp_path / "kiosk")
    with pytest.raises(UpdateRejected, match="not a signed target"):
        client.fetch(name)
    assert downloads(tmp_path / "kiosk") == []
    # the catalogue role itself is still fine for catalogues
    assert client.fetch(catalogue(1).name).path.exists()


def test_the_client_follows_an_online_key_rotation(served: Served, tmp_path: Path) -> None:
    repo = served.repository
    client = served.client(tmp_path / "kiosk")
    client.fetch(software(1).name)
    root_signers = _root_signers(tmp_path)
    repo.rotate_online_key("timestamp", root_signers=root_signers[:2])
    repo.rotate_online_key("snapshot", root_signers=root_signers[1:])
    repo.add_release(software(2), b"two")
    assert client.fetch(software(2).name).path.read_bytes() == b"two"
    trusted = Metadata[Root].from_bytes(
        (tmp_path / "kiosk" / "metadata" / "root.json").read_bytes()
    )
    assert trusted.signed.version == 3


def test_the_client_follows_a_root_key_change_and_refuses_one_signature_short(
    served: Served, tmp_path: Path
) -> None:
    repo = served.repository
    client = served.client(tmp_path / "kiosk")
    client.refresh()
    old = _root_signers(tmp_path)
    new = [Keys(tmp_path / "new-root").make(f"r{i}") for i in range(3)]
    repo.set_root_keys([s.public_key for s in new], 2, old_signers=old[:2], new_signers=new[:2])
    client.refresh()
    assert _trusted_root_version(tmp_path / "kiosk") == 2
    # version 3 signed by one new root key: below the threshold of 2
    root = read(repo, "2.root.json")
    root.signed.version = 3
    root.signatures.clear()
    root.sign(new[0])
    write(repo, "3.root.json", root)
    with pytest.raises(UpdateRejected, match="root was signed by 1/2 keys"):
        client.refresh()
    assert _trusted_root_version(tmp_path / "kiosk") == 2


def test_an_unreachable_repository_is_a_download_failure(tmp_path: Path) -> None:
    repo, _ = make_repository(tmp_path, now=real_now())
    client = UpdateClient(
        metadata_dir=tmp_path / "kiosk" / "metadata",
        repository_url="http://127.0.0.1:9/tuf/",
        trusted_root=repo.root_bytes(1),
        target_dir=tmp_path / "kiosk" / "downloads",
    )
    with pytest.raises(DownloadFailed):
        client.refresh()


def test_a_broken_trusted_root_is_refused(served: Served, tmp_path: Path) -> None:
    with pytest.raises(UpdateRejected, match="trusted root"):
        served.client(tmp_path / "kiosk", root=b'{"signed": {}}').refresh()


def test_fetching_in_threads_never_blocks_the_event_loop(served: Served, tmp_path: Path) -> None:
    """Two fetches from worker threads (one client, one cycle at a time) while the loop keeps
    ticking."""
    client = served.client(tmp_path / "kiosk")
    served.repository.add_release(software(2), b"two")
    ticks = 0

    async def main() -> list[bytes]:
        nonlocal ticks
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        results = await asyncio.gather(
            asyncio.to_thread(client.fetch, software(1).name),
            asyncio.to_thread(client.fetch, software(2).name),
        )
        stop.set()
        await task
        return [r.path.read_bytes() for r in results]

    assert asyncio.run(main()) == [b"release one", b"two"]
    assert ticks > 1


def _root_signers(tmp_path: Path) -> list[CryptoSigner]:
    return [load_signer(tmp_path / "offline" / f"root{i}.pem") for i in range(3)]


def _trusted_root_version(state: Path) -> int:
    root = Metadata[Root].from_bytes((state / "metadata" / "root.json").read_bytes())
    return root.signed.version
