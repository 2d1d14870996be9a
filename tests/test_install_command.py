"""The agent's ``install`` command (``agent/install.py``): its args checked with a clear error,
and the install itself through the real TUF client (the controller's repository served over
loopback HTTP) into the real updater, reporting progress events: a sound release switches and
asks for a restart, a tampered target is refused and nothing is installed."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from kioskfleet.agent.commands import CommandError
from kioskfleet.agent.install import Installer, InstallRequest, UpdateTools
from kioskfleet.agent.updater import SoakPolicy, SoftwareUpdater
from kioskfleet.agent.updater.catalogue import CatalogueStore
from kioskfleet.agent.updater.gate import UpdateGate
from kioskfleet.agent.updater.runner import StationUpdates
from kioskfleet.updates.software import build_software
from tests.tuf_helpers import Served, real_now, serve, software
from tests.tuf_helpers import make_repository as make_repo

SW = "software/kioskfleet-1.1.0-r1.tar.gz"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({}, "args.release is required"),
        ({"release": "software-r1", "kind": "firmware", "target": SW}, "must be 'software' or"),
        ({"release": "software-r1", "kind": "software"}, "args.target is required"),
        (
            {"release": "software-r1", "kind": "software", "target": "../etc/passwd"},
            "not a kioskfleet target",
        ),
        (
            {
                "release": "c",
                "kind": "software",
                "target": "catalogue/subway_station-2026.1-r1.json",
            },
            "is a catalogue target, not software",
        ),
        (
            {
                "release": "c",
                "kind": "catalogue",
                "target": "catalogue/bank_agent_branch-2026.1-r1.json",
            },
            "the catalogue of bank_agent_branch; this station is a subway_station",
        ),
        ({"release": "s", "kind": "software", "target": SW, "rollout": 7}, "rollout id or null"),
        ({"release": "s", "kind": "software", "target": SW, "deadline": "soon"}, "Unix seconds"),
    ],
)
def test_bad_install_args_are_refused_with_why(args: dict[str, Any], error: str) -> None:
    with pytest.raises(CommandError, match=re.escape(error)):
        InstallRequest.parse(args, "subway_station")


def test_without_an_update_repository_an_install_is_refused() -> None:
    installer = Installer("wx-binhu-sub-01", "subway_station", lambda: None)
    args = {"release": "software-r1", "kind": "software", "target": SW}
    with pytest.raises(CommandError, match="no update repository configured"):
        asyncio.run(installer.install(args))


class Station:
    """A station's updater in a folder, its reports and restarts recorded."""

    def __init__(self, folder: Path, served: Served) -> None:
        self.events: list[dict[str, Any]] = []
        self.restarts = 0
        self.software = SoftwareUpdater(
            folder / "software", base_version="1.0.0", policy=SoakPolicy(soak=0.1, interval=0.05)
        )

        async def restart() -> None:
            self.restarts += 1

        self.updates = StationUpdates(
            self.software,
            CatalogueStore(folder / "catalogue", "subway_station"),
            UpdateGate(busy=lambda: False),
            report=self.events.extend,
            restart=restart,
        )
        self.tools = UpdateTools(
            self.updates, served.client(folder / "tuf", root=served.repository.root_bytes(1))
        )

    def progress(self) -> list[str]:
        return [e["progress"] for e in self.events]


def _install(station: Station, target: str, release: str = "software-r1") -> str:
    installer = Installer("wx-binhu-sub-01", "subway_station", lambda: station.tools)
    request = InstallRequest.parse(
        {"release": release, "kind": "software", "target": target, "rollout": "ro1"},
        "subway_station",
    )

    async def run() -> str:
        return await installer.run(station.tools, request)

    return asyncio.run(run())


def test_a_sound_release_is_downloaded_switched_and_restarts(tmp_path: Path) -> None:
    repo, _ = make_repository(tmp_path)
    repo.add_release(software(1, "1.1.0"), build_software("1.1.0", {"bin/a": b"a"}), now=real_now())
    with serve(tmp_path, repo) as served:
        station = Station(tmp_path / "station", served)
        assert _install(station, SW) == "restarting"
    assert station.restarts == 1
    assert station.progress() == ["downloading", "installed"]
    assert all(e["rollout"] == "ro1" and e["release"] == "software-r1" for e in station.events)
    trial = station.software.state().trial
    assert trial is not None and trial.to.name == "1.1.0-1"


def test_a_tampered_target_is_refused_and_nothing_installed(tmp_path: Path) -> None:
    repo, _ = make_repository(tmp_path)
    info = repo.add_release(
        software(1, "1.1.0"), build_software("1.1.0", {"bin/a": b"a"}), now=real_now()
    )
    stored = repo.target_path(SW, info.hashes["sha256"])
    stored.write_bytes(build_software("1.1.0", {"bin/a": b"evil"}))
    with serve(tmp_path, repo) as served:
        station = Station(tmp_path / "station", served)
        assert _install(station, SW) == "failed"
    assert station.restarts == 0
    assert station.progress() == ["downloading", "failed"]
    assert "Length" in station.events[-1]["error"] or "hash" in station.events[-1]["error"].lower()
    assert station.software.state().trial is None and station.software.state().installed is None


def test_a_target_the_repository_does_not_sign_is_refused(tmp_path: Path) -> None:
    repo, _ = make_repository(tmp_path)
    repo.add_release(software(1, "1.1.0"), build_software("1.1.0", {"bin/a": b"a"}), now=real_now())
    with serve(tmp_path, repo) as served:
        station = Station(tmp_path / "station", served)
        outcome = _install(station, "software/kioskfleet-9.9.9-r9.tar.gz", "software-r9")
    assert outcome == "failed"
    assert "not a signed target" in station.events[-1]["error"]


def make_repository(tmp: Path) -> Any:
    return make_repo(tmp, now=real_now())
