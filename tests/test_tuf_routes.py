"""The repository's HTTP paths (``/tuf/…``), the ``[tuf]`` settings, and a controller whose
``[tuf]`` names no repository."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kioskfleet.controller.config import Settings, SettingsError, load_settings
from kioskfleet.controller.tufrepo import RepositoryRefused
from kioskfleet.controller.tufrepo.service import Resigner, open_repository
from tests.tuf_helpers import make_repository, real_now, serve, serve_app, software


def get(url: str, path: str) -> tuple[int, dict[str, str], bytes]:
    host, _, port = url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)  # sent as written: no client-side normalisation of ".."
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_metadata_and_targets_are_served_and_nothing_else(tmp_path: Path) -> None:
    repo, _ = make_repository(tmp_path, now=real_now())
    info = repo.add_release(software(1), b"tarball")
    with serve(tmp_path, repo) as served:
        status, headers, body = get(served.url, "/tuf/metadata/1.root.json")
        assert status == 200 and body == repo.root_bytes(1)
        assert "immutable" in headers["cache-control"]
        status, headers, body = get(served.url, "/tuf/metadata/timestamp.json")
        assert status == 200 and body == (repo.metadata_dir / "timestamp.json").read_bytes()
        assert headers["cache-control"] == "no-cache"
        sha = info.hashes["sha256"]
        status, _, body = get(served.url, f"/tuf/targets/software/{sha}.{info.path.split('/')[1]}")
        assert (status, body) == (200, b"tarball")
        for path in [
            "/tuf/metadata/2.root.json",  # not there
            "/tuf/metadata/../online/x.pem",
            "/tuf/metadata/..%2F..%2Fonline%2Fsnapshot.pem",
            "/tuf/metadata/.lock",
            "/tuf/metadata/.timestamp.json.tmp",
            "/tuf/targets/software/kioskfleet-1.1.0-r1.tar.gz",  # only by hash
            "/tuf/targets/../metadata/1.root.json",
            f"/tuf/targets/software/../../{sha}.x",
            "/tuf/targets/%2e%2e/online/release.pem",
        ]:
            status, _, body = get(served.url, path)
            assert status == 404, path
            assert b"PRIVATE KEY" not in body


def test_no_repository_configured_is_404(tmp_path: Path) -> None:
    with serve_app(Settings(db_url=f"sqlite:///{tmp_path / 'c.db'}")) as url:
        status, _, body = get(url, "/tuf/metadata/timestamp.json")
    assert status == 404
    assert json.loads(body) == {"detail": "no update repository is configured"}


def test_tuf_settings_from_a_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "controller.toml"
    path.write_text('[tuf]\ndir = "/srv/tuf"\nonline_keys = "/etc/kioskfleet/online"\n')
    settings = load_settings(path, {"KIOSKFLEET_TUF__ONLINE_RELEASE": "true"})
    assert settings.tuf is not None
    assert settings.tuf.dir == Path("/srv/tuf") and settings.tuf.online_release is True
    assert settings.tuf.timestamp_lifetime == 86400
    path.write_text('[tuf]\ndir = "/srv/tuf"\n')
    with pytest.raises(SettingsError, match="online_keys"):
        load_settings(path, {})
    path.write_text('[tuf]\ndir = "/srv/tuf"\nonline_keys = "k"\ntimestamp_lifetime = 10\n')
    with pytest.raises(SettingsError, match="timestamp_lifetime"):
        load_settings(path, {})


def test_a_controller_whose_tuf_folder_holds_no_repository_does_not_start(tmp_path: Path) -> None:
    path = tmp_path / "controller.toml"
    path.write_text(f'[tuf]\ndir = "{tmp_path / "empty"}"\nonline_keys = "{tmp_path / "k"}"\n')
    (tmp_path / "empty" / "metadata").mkdir(parents=True)
    settings = load_settings(path, {})
    assert settings.tuf is not None
    resigner = Resigner(open_repository(settings.tuf), 300)
    with pytest.raises(RepositoryRefused, match="no repository in"):
        resigner.start()


@pytest.mark.parametrize("make_metadata", [False, True])
def test_kioskfleet_controller_refuses_a_tuf_folder_without_a_repository(
    tmp_path: Path, make_metadata: bool
) -> None:
    if make_metadata:
        (tmp_path / "empty" / "metadata").mkdir(parents=True)
    config = tmp_path / "controller.toml"
    config.write_text(f'[tuf]\ndir = "{tmp_path / "empty"}"\nonline_keys = "{tmp_path / "k"}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIOSKFLEET_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    run = subprocess.run(
        [sys.executable, "-m", "kioskfleet.cli", "controller", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        f"kioskfleet controller: [tuf] no repository in {tmp_path / 'empty'}"
        + ("" if make_metadata else ": No such file or directory")
    ]
