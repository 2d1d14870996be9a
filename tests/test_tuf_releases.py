"""Releases: the software tarball check, the catalogue bundle and its split per site type,
``POST``/``GET /api/releases`` over HTTP, and ``kioskfleet release publish`` signing with a
release manager's key — each followed by a kiosk's client downloading what was published."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kioskfleet.controller.config import Settings, TufSettings
from kioskfleet.protocol.stations import SITE_TYPES
from kioskfleet.updates.catalogue import CatalogueError, parse_bundle, parse_site_catalogue, split
from kioskfleet.updates.software import SoftwareError, build_software, check_software
from tests.conftest import AUTH, TEST_TOKEN
from tests.tuf_helpers import Served, make_repository, real_now, serve, serve_app

SRC = Path(__file__).resolve().parents[1] / "src"


# ------------------------------------------------------------------ software files


def tarball(members: list[tuple[str, bytes | None, bytes]]) -> bytes:
    """(name, type, data): type None = regular file, else a tarfile type constant. The same
    members give the same bytes (no time in the gzip header): pytest-xdist's workers build
    these cases at collection and must collect the same tests."""
    out = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w") as archive,
    ):
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data) if kind is None else 0
            if kind is not None:
                info.type = kind
                info.linkname = data.decode()
            archive.addfile(info, io.BytesIO(data) if kind is None else None)
    return out.getvalue()


def manifest(version: str, files: dict[str, bytes]) -> bytes:
    return json.dumps(
        {"version": version, "files": {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}}
    ).encode()


GOOD = {"bin/agent": b"#!/bin/sh\n", "lib/x.py": b"print(1)\n"}


def test_a_built_release_passes_the_check() -> None:
    checked = check_software(build_software("1.4.2", GOOD), "1.4.2")
    assert checked.files == {p: hashlib.sha256(d).hexdigest() for p, d in GOOD.items()}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a tarball", "not a gzip tarball"),
        (tarball([("manifest.json", None, manifest("1.0", {}))]), "no VERSION"),
        (tarball([("VERSION", None, b"1.0")]), "no manifest.json"),
        (
            tarball([("VERSION", None, b"0.9"), ("manifest.json", None, manifest("1.0", {}))]),
            "VERSION says '0.9', the release is '1.0'",
        ),
        (
            tarball([("VERSION", None, b"1.0"), ("manifest.json", None, manifest("0.9", {}))]),
            "manifest.json's version is not '1.0'",
        ),
        (
            tarball([("VERSION", None, b"1.0"), ("manifest.json", None, b"{")]),
            "manifest.json is not JSON",
        ),
        (
            tarball(
                [
                    ("VERSION", None, b"1.0"),
                    ("manifest.json", None, manifest("1.0", {"a": b"x"})),
                    ("a", None, b"y"),
                ]
            ),
            "'a': its SHA-256 is not the manifest's",
        ),
        (
            tarball(
                [("VERSION", None, b"1.0"), ("manifest.json", None, manifest("1.0", {"a": b"x"}))]
            ),
            "manifest.json lists 'a', the tarball lacks it",
        ),
        (
            tarball(
                [
                    ("VERSION", None, b"1.0"),
                    ("manifest.json", None, manifest("1.0", {"VERSION": b"1.0"})),
                    ("b", None, b""),
                ]
            ),
            "'b' is in the tarball but not in manifest.json",
        ),
        (
            tarball(
                [
                    ("VERSION", None, b"1.0"),
                    ("manifest.json", None, manifest("1.0", {})),
                ]
            ),
            # the agent's updater checks VERSION against the manifest too
            "'VERSION' is in the tarball but not in manifest.json",
        ),
        (
            tarball(
                [
                    ("VERSION", None, b"1.0"),
                    ("manifest.json", None, manifest("1.0", {})),
                    ("link", tarfile.SYMTYPE, b"/etc/passwd"),
                ]
            ),
            "only plain files and folders",
        ),
        (
            tarball([("VERSION", None, b"1.0"), ("../evil", None, b"x")]),
            "only relative paths",
        ),
        (tarball([("/etc/cron.d/x", None, b"x")]), "only relative paths"),
    ],
)
def test_bad_software_files_are_refused_with_the_reason(data: bytes, message: str) -> None:
    with pytest.raises(SoftwareError, match=message):
        check_software(data, "1.0")


# ------------------------------------------------------------------ catalogue bundles


def bundle(
    version: str = "2026.11", services: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    if services is None:
        services = [
            {
                "id": f"svc-{n:03d}",
                "name": {"zh": f"服务{n}", "en": f"Service {n}"},
                "category": [
                    "information_lookup",
                    "utility_payment",
                    "approval",
                    "financial_service",
                ][n % 4],
                "site_types": ["government_service_center", "bank_agent_branch"]
                if n < 65
                else ["government_service_center", "subway_station"],
                "department": {"zh": "市政务服务管理办公室", "en": "Government Services Office"},
                "form": f"forms/form-{n}",
            }
            for n in range(317)
        ]
    return {"version": version, "effective_from": "2026-12-01T01:00:00+08:00", "services": services}


def test_a_bundle_splits_into_one_catalogue_per_site_type() -> None:
    data = json.dumps(bundle(), ensure_ascii=False).encode()
    parts = split(parse_bundle(data))
    assert set(parts) == set(SITE_TYPES)
    counts = {site: len(parse_site_catalogue(body).services) for site, body in parts.items()}
    assert counts == {
        "government_service_center": 317,
        "bank_agent_branch": 65,
        "subway_station": 252,
        "township_service_center": 0,
        "public_place": 0,
    }
    assert split(parse_bundle(data)) == parts  # the same bytes wherever it is computed
    bank = parse_site_catalogue(parts["bank_agent_branch"])
    assert bank.site_type == "bank_agent_branch" and bank.services[0].name.zh == "服务0"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.pop("effective_from"), "effective_from"),
        (lambda b: b.update(effective_from="2026-12-01T01:00:00"), "effective_from"),
        (
            lambda b: b["services"][0].update(category="gambling"),
            r"services\[0\]\.category: must be one of",
        ),
        (lambda b: b["services"][0].update(site_types=[]), r"services\[0\]\.site_types"),
        (lambda b: b["services"][0].update(site_types=["airport"]), r"site_types\[0\].*'airport'"),
        (lambda b: b["services"][1].update(id="svc-000"), "appears twice"),
        (lambda b: b["services"][0]["name"].pop("en"), r"services\[0\]\.name\.en: missing"),
        (lambda b: b.update(site_type="government_service_center"), "covers every site type"),
        (lambda b: b.update(extra=1), "extra"),
    ],
)
def test_bad_bundles_are_refused_with_where_and_what(change: Any, message: str) -> None:
    document = bundle(services=bundle()["services"][:3])
    change(document)
    with pytest.raises(CatalogueError, match=message):
        parse_bundle(json.dumps(document).encode(), source="file")


# ------------------------------------------------------------------ the API


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    repo, _ = make_repository(tmp_path, now=real_now())
    with serve(tmp_path, repo) as served:  # online signing not allowed
        yield served


def post(url: str, fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[int, Any]:
    boundary = uuid.uuid4().hex
    body = b""
    head = f"--{boundary}\r\nContent-Disposition: form-data; "
    for name, value in fields.items():
        body += f'{head}name="{name}"\r\n\r\n{value}\r\n'.encode()
    for name, (filename, data) in files.items():
        body += (
            (
                f'{head}name="{name}"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    body += f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}", **AUTH},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def get(url: str) -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, headers=AUTH), timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def online(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A controller that signs uploads with its online release key (as the demo does)."""
    repo, _ = make_repository(tmp_path, now=real_now())
    assert repo.online_keys is not None
    settings = Settings(
        bootstrap_token=TEST_TOKEN,
        db_url=f"sqlite:///{tmp_path / 'controller.db'}",
        tuf=TufSettings(dir=repo.path, online_keys=repo.online_keys.path, online_release=True),
    )
    with serve_app(settings) as url:
        yield url, tmp_path


def test_post_releases_signs_with_the_online_key_and_a_kiosk_gets_it(
    online: tuple[str, Path],
) -> None:
    url, tmp = online
    software = build_software("1.4.2", GOOD)
    status, body = post(
        url + "/api/releases",
        {"kind": "software", "version": "1.4.2"},
        {"file": ("a.tgz", software)},
    )
    assert status == 201, body
    assert body == {
        "id": "software-r1",
        "kind": "software",
        "version": "1.4.2",
        "release_counter": 1,
        "signed_by": "controller",
    }
    cat = json.dumps(bundle()).encode()
    status, body = post(
        url + "/api/releases",
        {"kind": "catalogue", "version": "2026.11"},
        {"file": ("c.json", cat)},
    )
    assert status == 201 and body["id"] == "catalogue-r1", body
    listed = get(url + "/api/releases")
    assert listed["total"] == 2
    assert [r["id"] for r in listed["items"]] == ["software-r1", "catalogue-r1"]
    assert len(listed["items"][1]["targets"]) == len(SITE_TYPES)
    assert listed["items"][0]["targets"][0]["sha256"] == hashlib.sha256(software).hexdigest()
    # a kiosk at a bank agent branch gets its 65 services
    from kioskfleet.updates.client import UpdateClient

    repo_root = (tmp / "repo" / "metadata" / "1.root.json").read_bytes()
    client = UpdateClient(
        metadata_dir=tmp / "kiosk" / "metadata",
        repository_url=url + "/tuf/",
        trusted_root=repo_root,
        target_dir=tmp / "kiosk" / "downloads",
    )
    name = next(
        t["name"] for t in listed["items"][1]["targets"] if t["site_type"] == "bank_agent_branch"
    )
    got = client.fetch(name, kind="catalogue", site_type="bank_agent_branch")
    assert len(parse_site_catalogue(got.path.read_bytes()).services) == 65
    assert check_software(
        client.fetch("software/kioskfleet-1.4.2-r1.tar.gz").path.read_bytes(), "1.4.2"
    )
    # the publish is in the audit table
    from sqlalchemy import text

    from kioskfleet.controller.db import make_engine

    with make_engine(f"sqlite:///{tmp / 'controller.db'}").connect() as conn:
        rows = conn.execute(text("SELECT action, target FROM audit ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [
        ("release.publish", "software-r1"),
        ("release.publish", "catalogue-r1"),
    ]


@pytest.mark.parametrize(
    ("fields", "file", "status", "says"),
    [
        ({"kind": "software", "version": "1.0"}, b"junk", 422, "file: not a gzip tarball"),
        (
            {"kind": "software", "version": "2.0"},
            build_software("1.0", {}),
            422,
            "VERSION says '1.0'",
        ),
        ({"kind": "firmware", "version": "1.0"}, b"x", 422, None),
        ({"kind": "software", "version": "1/0"}, b"x", 422, "version '1/0' must be"),
        ({"kind": "catalogue", "version": "2026.11"}, b"{}", 422, "file: version"),
        (
            {"kind": "catalogue", "version": "2026.12"},
            json.dumps(bundle()).encode(),
            422,
            "not '2026.12'",
        ),
    ],
)
def test_bad_uploads_are_refused(
    online: tuple[str, Path], fields: dict[str, str], file: bytes, status: int, says: str | None
) -> None:
    url, _ = online
    got, body = post(url + "/api/releases", fields, {"file": ("f", file)})
    assert got == status, body
    if says is not None:
        assert says in body["detail"], body
    assert get(url + "/api/releases")["total"] == 0


def test_without_online_signing_an_unsigned_upload_is_403(served: Served) -> None:
    status, body = post(
        served.url + "/api/releases",
        {"kind": "software", "version": "1.0"},
        {"file": ("a.tgz", build_software("1.0", GOOD))},
    )
    assert status == 403
    assert "kioskfleet release publish" in body["detail"]


# ------------------------------------------------------------------ release publish


def kioskfleet(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIOSKFLEET_")}
    env["PYTHONPATH"] = str(SRC)
    return subprocess.run(
        [sys.executable, "-m", "kioskfleet.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env=env,
    )


def test_release_publish_signs_with_the_release_managers_key(
    served: Served, tmp_path: Path
) -> None:
    (tmp_path / "a.tgz").write_bytes(build_software("1.0", GOOD))
    (tmp_path / "b.tgz").write_bytes(build_software("1.1", GOOD))
    (tmp_path / "root.json").write_bytes(served.repository.root_bytes(1))
    common = ["--controller", served.url, "--root", "root.json", "--token", TEST_TOKEN]
    run = kioskfleet(
        "release", "publish", "a.tgz", "--kind", "software", "--version", "1.0",
        "--key", "offline/rm-software.pem", *common, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["signed_by"] == "release_manager"
    run = kioskfleet(
        "release", "publish", "b.tgz", "--kind", "software", "--version", "1.1",
        "--key", "offline/rm-software.pem", *common, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["id"] == "software-r2"
    # a catalogue editor's key: refused by the controller, one line, exit 1
    (tmp_path / "c.tgz").write_bytes(build_software("1.2", GOOD))
    run = kioskfleet(
        "release", "publish", "c.tgz", "--kind", "software", "--version", "1.2",
        "--key", "offline/rm-catalogue.pem", *common, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        "kioskfleet release publish: HTTP 422: software: not signed by enough of its keys: "
        "software was signed by 0/1 keys"
    ]
    # no key, and this controller does not sign: 403, said in one line
    run = kioskfleet(
        "release", "publish", "c.tgz", "--kind", "software", "--version", "1.2", *common,
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 1 and "HTTP 403" in run.stderr
    # a file that is not the version it claims never leaves the release manager's machine
    run = kioskfleet(
        "release", "publish", "c.tgz", "--kind", "software", "--version", "9.9",
        "--key", "offline/rm-software.pem", *common, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 1 and "VERSION says '1.2'" in run.stderr
    # without a token (or KIOSKFLEET_TOKEN) the controller does not know who publishes
    run = kioskfleet(
        "release", "publish", "c.tgz", "--kind", "software", "--version", "1.2",
        "--key", "offline/rm-software.pem", *common[:-2], cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 1 and "HTTP 401" in run.stderr
    listed = get(served.url + "/api/releases")
    assert [r["id"] for r in listed["items"]] == ["software-r2", "software-r1"]


def test_a_release_built_twice_is_the_same_bytes() -> None:
    """No build time inside the file (gzip header, members): the same version and files give
    the same release, whenever they are built (and pytest-xdist's workers, which build the
    cases above at collection, collect the same tests)."""
    first = build_software("2.0", {"bin/agent": b"agent 2.0\n"})
    built_later = build_software("2.0", {"bin/agent": b"agent 2.0\n"})
    assert first == built_later
    with gzip.GzipFile(fileobj=io.BytesIO(first)) as compressed:
        compressed.read()
        assert compressed.mtime == 0
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as archive:
        assert {member.mtime for member in archive.getmembers()} == {0}
    assert build_software("2.0", {"bin/agent": b"agent 2.1\n"}) != first
