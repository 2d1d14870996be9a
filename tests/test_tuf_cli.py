"""``kioskfleet keys`` and ``kioskfleet tuf-client`` as commands (subprocesses): an admin makes
the keys and the repository, the controller serves it over HTTP, a kiosk's client command
refreshes and downloads — and fails with exit 1 and one line when it must."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kioskfleet.controller.tufrepo import OnlineKeys, TufRepository
from tests.tuf_helpers import serve, software

SRC = Path(__file__).resolve().parents[1] / "src"
# about thirty commands, each a Python process: make test runs them, make unit does not; the
# tests share the admin's keys (a module fixture): one worker makes them once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tuf_cli")]


def kioskfleet(
    *args: str | Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KIOSKFLEET_")}
    environ["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [environ.get("PYTHONPATH")])])
    return subprocess.run(
        [sys.executable, "-m", "kioskfleet.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env={**environ, **(env or {})},
    )


def ok(run: subprocess.CompletedProcess[str]) -> Any:
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def refused(run: subprocess.CompletedProcess[str], command: str, says: str) -> None:
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert lines[0].startswith(f"kioskfleet {command}: "), lines[0]
    assert says in lines[0], lines[0]


@pytest.fixture(scope="module")
def made_by_admin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keys made and a repository created through ``kioskfleet keys``, once for the module:
    seven commands, each a Python process."""
    tmp_path = tmp_path_factory.mktemp("admin")
    for name in ("root1", "root2", "root3", "targets", "rm-software", "rm-catalogue"):
        made = ok(kioskfleet("keys", "create", f"offline/{name}", cwd=tmp_path))
        assert made["private"] == f"offline/{name}.pem"
        assert len(made["keyid"]) == 64
    assert (tmp_path / "offline" / "root1.pem").stat().st_mode & 0o777 == 0o600
    described = ok(
        kioskfleet(
            "keys", "init-repo", "--repo", "repo", "--online-keys", "online",
            "--root-key", "offline/root1.pem", "--root-key", "offline/root2.pem",
            "--root-key", "offline/root3.pub.json", "--threshold", "2",
            "--targets-key", "offline/targets.pem",
            "--software-key", "offline/rm-software.pub.json",
            "--catalogue-key", "offline/rm-catalogue.pub.json",
            "--online-release",
            cwd=tmp_path,
        )
    )  # fmt: skip
    assert described["root"]["threshold"] == 2 and len(described["root"]["keyids"]) == 3
    assert len(described["software"]["keyids"]) == 2  # the release manager's and the online one
    return tmp_path


@pytest.fixture
def admin(made_by_admin: Path, tmp_path: Path) -> Path:
    """A private copy of the admin's folder: the tests rotate and add keys in it."""
    copy = tmp_path / "admin"
    shutil.copytree(made_by_admin, copy)
    return copy


def test_keys_refuse_with_one_line(admin: Path) -> None:
    refused(
        kioskfleet(
            "keys", "rotate-online", "--repo", "repo", "--online-keys", "online",
            "--role", "timestamp", "--root-key", "offline/root3.pub.json", cwd=admin,
        ),
        "keys rotate-online",
        "root was signed by 0/2 keys",
    )  # fmt: skip
    refused(
        kioskfleet("keys", "create", "offline/root1", cwd=admin),
        "keys create",
        "File exists",
    )
    refused(
        kioskfleet(
            "keys", "create", "enc", "--passphrase-env", "NO_SUCH_VAR", cwd=admin,
        ),
        "keys create",
        "NO_SUCH_VAR is empty or not set",
    )  # fmt: skip
    refused(kioskfleet("keys", "list", "--repo", "elsewhere", cwd=admin), "keys list", "elsewhere")


def test_an_encrypted_key_needs_its_passphrase(admin: Path) -> None:
    env = {"PASS": "correct horse"}
    ok(kioskfleet("keys", "create", "enc", "--passphrase-env", "PASS", cwd=admin, env=env))
    assert b"ENCRYPTED" in (admin / "enc.pem").read_bytes()
    refused(
        kioskfleet(
            "keys", "delegate", "--repo", "repo", "--online-keys", "online", "--role",
            "software", "--key", "enc.pub.json", "--targets-key", "enc.pem", cwd=admin,
        ),
        "keys delegate",
        "enc.pem",
    )  # fmt: skip


def test_admin_rotates_keys_and_a_kiosk_follows_through_tuf_client(admin: Path) -> None:
    repo = TufRepository(admin / "repo", online_keys=OnlineKeys(admin / "online"))
    repo.add_release(software(1), b"release one")
    root = admin / "trusted-root.json"
    exported = kioskfleet("keys", "export-root", "--repo", "repo", cwd=admin)
    assert exported.returncode == 0
    root.write_text(exported.stdout)
    with serve(admin, repo) as served:
        meta_url = served.tuf_url + "metadata/"
        target_url = served.tuf_url + "targets/"
        client = ["tuf-client", "--metadata-dir", "kiosk/metadata"]
        assert kioskfleet(*client, "init", root, cwd=admin).returncode == 0
        assert (admin / "kiosk" / "metadata" / "root.json").read_bytes() == root.read_bytes()
        run = kioskfleet(*client, "--metadata-url", meta_url, "refresh", cwd=admin)
        assert run.returncode == 0, run.stderr
        stored = {p.name for p in (admin / "kiosk" / "metadata").iterdir()}
        assert {"root.json", "timestamp.json", "snapshot.json", "targets.json"} <= stored
        download = [
            *client, "--metadata-url", meta_url, "--target-base-url", target_url,
            "--target-dir", "kiosk/targets", "--target-name", software(1).name,
        ]  # fmt: skip
        run = kioskfleet(*download, "download", cwd=admin)
        assert run.returncode == 0, run.stderr
        files = list((admin / "kiosk" / "targets").iterdir())
        assert [f.read_bytes() for f in files] == [b"release one"]

        # the admin rotates the timestamp key (2 of 3 root keys) and the root keys
        ok(
            kioskfleet(
                "keys", "rotate-online", "--repo", "repo", "--online-keys", "online",
                "--role", "timestamp", "--root-key", "offline/root2.pem",
                "--root-key", "offline/root1.pem", cwd=admin,
            )
        )  # fmt: skip
        for name in ("new1", "new2"):
            ok(kioskfleet("keys", "create", f"offline/{name}", cwd=admin))
        rotated = ok(
            kioskfleet(
                "keys", "rotate-root", "--repo", "repo", "--online-keys", "online",
                "--old-root-key", "offline/root1.pem", "--old-root-key", "offline/root3.pem",
                "--new-root-key", "offline/new1.pem", "--new-root-key", "offline/new2.pem",
                "--threshold", "2", cwd=admin,
            )
        )  # fmt: skip
        assert rotated["root"]["version"] == 3
        run = kioskfleet(*client, "--metadata-url", meta_url, "refresh", cwd=admin)
        assert run.returncode == 0, run.stderr
        trusted = (repo.metadata_dir / "3.root.json").read_bytes()
        assert (admin / "kiosk" / "metadata" / "root.json").read_bytes() == trusted

        # an unknown target, and a tampered one: exit 1, one line, nothing new stored
        run = kioskfleet(*client[:3], *download[3:-1], software(9).name, "download", cwd=admin)
        assert run.returncode == 1 and "no such target" in run.stderr
        repo.add_release(software(2), b"release two")
        info = repo.releases("software")[-1][1]
        repo.target_path(info.path, info.hashes["sha256"]).write_bytes(b"release 2!!")
        run = kioskfleet(*download[:-1], software(2).name, "download", cwd=admin)
        assert run.returncode == 1 and "LengthOrHashMismatchError" in run.stderr, run.stderr
        assert len(list((admin / "kiosk" / "targets").iterdir())) == 1


def test_tuf_client_without_what_a_command_needs_exits_1(tmp_path: Path) -> None:
    run = kioskfleet("tuf-client", "--metadata-dir", "m", "refresh", cwd=tmp_path)
    assert run.returncode == 1 and "--metadata-url is required" in run.stderr
    run = kioskfleet("tuf-client", "--metadata-dir", "m", "init", "missing.json", cwd=tmp_path)
    assert run.returncode == 1 and "missing.json" in run.stderr
    run = kioskfleet(
        "tuf-client", "--metadata-dir", "m", "--metadata-url", "http://127.0.0.1:9/", "refresh",
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 1 and "root.json" in run.stderr  # nothing trusted yet
