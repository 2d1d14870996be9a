"""What the agent reports about its update repository's freshness (``agent/freshness.py``):
expired metadata and a clock far from the controller's, learnt from real TUF cycles against
the controller's repository served over loopback HTTP, and what telemetry's ``host`` carries."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import timedelta
from pathlib import Path

import pytest

from kioskfleet.agent.freshness import UpdateFreshness
from kioskfleet.agent.install import Installer, InstallRequest, UpdateTools
from kioskfleet.agent.updater import SoftwareUpdater
from kioskfleet.agent.updater.catalogue import CatalogueStore
from kioskfleet.agent.updater.gate import UpdateGate
from kioskfleet.agent.updater.runner import StationUpdates
from kioskfleet.updates.client import UpdateClient
from tests.tuf_helpers import Served, make_repository, real_now, serve, software


class Clock:
    """A kiosk's wall clock, ``offset`` seconds off the real one."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


def client(served: Served, state: Path, clock: Clock) -> UpdateClient:
    return UpdateClient(
        metadata_dir=state / "metadata",
        repository_url=served.tuf_url,
        trusted_root=served.repository.root_bytes(1),
        target_dir=state / "downloads",
        clock=clock,
    )


def test_nothing_is_reported_before_the_repository_answered() -> None:
    assert UpdateFreshness().host_metrics() == {}


@pytest.mark.parametrize("offset", [3600.0, -3600.0, -400.0])
def test_a_clock_off_the_controllers_is_measured_and_reported(
    tmp_path: Path, offset: float
) -> None:
    repo, _ = make_repository(tmp_path, now=real_now())
    with serve(tmp_path, repo) as served:
        clock = Clock(offset)
        freshness = UpdateFreshness()
        asyncio.run(freshness.check(client(served, tmp_path / "kiosk", clock)))
        reported = freshness.host_metrics()
        assert reported["clock_skew_s"] == pytest.approx(offset, abs=2.5)  # Date: whole seconds
        assert reported["update_metadata_expired"] == 0.0
        clock.offset = 0.0  # someone set the clock right: the next check says so
        asyncio.run(freshness.check(client(served, tmp_path / "kiosk", clock)))
        assert abs(freshness.host_metrics()["clock_skew_s"]) < 2.5


def test_expired_metadata_is_reported_until_the_controller_signs_again(tmp_path: Path) -> None:
    """A repository whose online metadata was last signed two days ago (a controller that
    was down): the timestamp has expired; re-signed, the next check clears it."""
    repo, _ = make_repository(tmp_path, now=real_now() - timedelta(days=2))
    with serve(tmp_path, repo) as served:
        freshness = UpdateFreshness()
        kiosk = client(served, tmp_path / "kiosk", Clock())
        asyncio.run(freshness.check(kiosk))
        assert freshness.expired is True
        assert freshness.host_metrics()["update_metadata_expired"] == 1.0
        assert abs(freshness.host_metrics()["clock_skew_s"]) < 2.5  # the clock is not to blame
        assert repo.resign_online(real_now()) == ["timestamp"]
        asyncio.run(freshness.check(kiosk))
        assert freshness.host_metrics()["update_metadata_expired"] == 0.0


def test_an_unreachable_repository_says_nothing_about_expiry(tmp_path: Path) -> None:
    repo, _ = make_repository(tmp_path, now=real_now() - timedelta(days=2))
    with serve(tmp_path, repo) as served:
        freshness = UpdateFreshness()
        asyncio.run(freshness.check(client(served, tmp_path / "kiosk", Clock())))
        url = served.tuf_url
    assert freshness.expired is True
    gone = UpdateClient(
        metadata_dir=tmp_path / "kiosk" / "metadata",
        repository_url=url,  # the server has stopped
        trusted_root=repo.root_bytes(1),
        target_dir=tmp_path / "kiosk" / "downloads",
    )
    asyncio.run(freshness.check(gone))
    assert freshness.host_metrics()["update_metadata_expired"] == 1.0  # as last known


def test_an_install_refused_for_expired_metadata_is_reported_too(tmp_path: Path) -> None:
    """The install command's TUF cycle feeds the same report: refused, nothing installed,
    and expiry and skew known without waiting for the next periodic check."""
    repo, _ = make_repository(tmp_path, now=real_now() - timedelta(days=2))
    repo.add_release(software(1, "1.1.0"), b"one", now=real_now() - timedelta(days=2))
    events: list[dict[str, object]] = []

    async def restart() -> None:
        raise AssertionError("nothing to restart for")

    with serve(tmp_path, repo) as served:
        updates = StationUpdates(
            SoftwareUpdater(tmp_path / "software", base_version="1.0.0"),
            CatalogueStore(tmp_path / "catalogue", "subway_station"),
            UpdateGate(busy=lambda: False),
            report=events.extend,
            restart=restart,
        )
        tools = UpdateTools(updates, client(served, tmp_path / "kiosk", Clock(-900.0)))
        freshness = UpdateFreshness()
        installer = Installer("wx-binhu-sub-01", "subway_station", lambda: tools, freshness)
        request = InstallRequest.parse(
            {"release": "software-r1", "kind": "software", "target": software(1, "1.1.0").name},
            "subway_station",
        )

        async def run() -> str:
            return await installer.run(tools, request)

        outcome = asyncio.run(run())
    assert outcome == "failed"
    assert events[-1]["progress"] == "failed"
    assert "expired" in str(events[-1]["error"])
    # 900 s behind, said in the error (Date has whole seconds)
    assert re.search(r"this clock is (89[89]|90[01]) s behind", str(events[-1]["error"]))
    reported = freshness.host_metrics()
    assert reported["update_metadata_expired"] == 1.0
    assert reported["clock_skew_s"] == pytest.approx(-900.0, abs=2.5)
    assert updates.software.state().installed is None
