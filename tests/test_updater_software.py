"""Software apply in process: release counters, the trial, commit, rollback on a failing
probe, timeout and crash loop, and recovery after an interruption at every named step
(``tests/test_updater_kill.py`` does the same with a real SIGKILL)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from kioskfleet.agent.updater import (
    STEPS,
    HealthReport,
    SoakPolicy,
    SoftwareUpdater,
    UpdateInterrupted,
    UpdateRejected,
    VerifiedTarget,
)
from kioskfleet.agent.updater.gate import UpdateGate
from kioskfleet.agent.updater.runner import StationUpdates
from kioskfleet.agent.updater.tarball import verify_folder
from tests.updater_releases import release

POLICY = SoakPolicy(soak=60.0, interval=5.0, timeout=300.0, max_failures=4, max_starts=3)


class Clock:
    """Wall-clock seconds that move only when told (or when the runner sleeps)."""

    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds
        await asyncio.sleep(0)


class Station:
    """An updater, its runner, and what it reported and how often it restarted."""

    def __init__(self, root: Path, clock: Clock, **kwargs: Any) -> None:
        self.clock = clock
        self.updater = SoftwareUpdater(
            root, base_version="0.1.0", policy=POLICY, clock=clock, **kwargs
        )
        self.events: list[dict[str, Any]] = []
        self.restarts = 0
        self.busy = False

        async def restart() -> None:
            self.restarts += 1

        self.updates = StationUpdates(
            self.updater,
            None,
            UpdateGate(busy=lambda: self.busy),
            report=self.events.extend,
            restart=restart,
            clock=clock,
            sleep=clock.sleep,
        )

    def apply(self, target: VerifiedTarget) -> str:
        async def fetch() -> VerifiedTarget:
            return target

        return asyncio.run(self.updates.apply_software(fetch, release=target.release))

    def start(self, healthy: bool = True) -> str:
        """One agent start: recovery, reports flushed, the soak if a trial is under way."""
        plan = self.updater.recover()
        self.updates.flush_reports()
        if plan.kind != "trial":
            return plan.kind
        assert plan.trial is not None
        problems = () if healthy else ("MQTT not connected",)
        return asyncio.run(self.updates.soak(plan.trial, lambda: HealthReport(problems)))

    def progress(self, release_id: str) -> list[str]:
        return [e["progress"] for e in self.events if e["release"] == release_id]


@pytest.fixture
def station(tmp_path: Path) -> Station:
    return Station(tmp_path / "software", Clock())


def test_first_release_from_the_shipped_package(tmp_path: Path, station: Station) -> None:
    assert station.updater.running_version() == "0.1.0"
    assert station.apply(release(tmp_path, "1.0.0", 1)) == "restarting"
    assert station.restarts == 1
    assert station.updater.running_version() == "1.0.0"  # switched, on trial
    assert station.start() == "committed"
    assert station.progress("r-1.0.0") == ["downloading", "installed", "healthy"]
    state = station.updater.state()
    assert state.trial is None and state.installed is not None
    assert state.installed.name == "1.0.0-1" and state.previous is None
    assert verify_folder(tmp_path / "software" / "current").version == "1.0.0"


def test_an_older_release_is_refused_and_nothing_installed(
    tmp_path: Path, station: Station
) -> None:
    station.apply(release(tmp_path, "2.0.0", 5))
    station.start()
    older = release(tmp_path, "1.9.0", 4)
    assert station.apply(older) == "failed"
    assert station.progress("r-1.9.0") == ["downloading", "failed"]
    assert "older than the installed 2.0.0" in station.events[-1]["error"]
    assert sorted(p.name for p in (tmp_path / "software" / "releases").iterdir()) == ["2.0.0-5"]
    with pytest.raises(UpdateRejected, match=r"already installed as version 2\.0\.0"):
        station.updater.check(VerifiedTarget(older.path, "software", "1.9.0", 5, "r"))
    # the same release again is no news: reported healthy, nothing restarts
    assert station.apply(release(tmp_path, "2.0.0", 5)) == "current"
    assert station.restarts == 1


def test_a_catalogue_target_is_not_software(tmp_path: Path, station: Station) -> None:
    target = release(tmp_path, "1.0.0", 1)
    with pytest.raises(UpdateRejected, match="not a software release"):
        station.updater.check(VerifiedTarget(target.path, "catalogue", "1.0.0", 1, "r"))


def test_a_failing_health_probe_rolls_back(tmp_path: Path, station: Station) -> None:
    station.apply(release(tmp_path, "1.0.0", 1))
    station.start()
    station.apply(release(tmp_path, "2.0.0", 2))
    assert station.start(healthy=False) == "rolled_back"
    assert station.restarts == 3  # install v1, install v2, back to v1
    assert station.updater.running_version() == "1.0.0"
    assert station.progress("r-2.0.0") == ["downloading", "installed", "rolled_back"]
    assert "health probe failed 4 times: MQTT not connected" in station.events[-1]["error"]
    assert station.start() == "run"
    # the bad release's folder is gone; the station can take a fixed one later
    assert sorted(p.name for p in (tmp_path / "software" / "releases").iterdir()) == ["1.0.0-1"]
    station.apply(release(tmp_path, "2.0.1", 3))
    assert station.start() == "committed"
    assert station.updater.running_version() == "2.0.1"


def test_a_flapping_release_times_out(tmp_path: Path) -> None:
    clock = Clock()
    station = Station(tmp_path / "software", clock)
    station.apply(release(tmp_path, "1.0.0", 1))
    plan = station.updater.recover()
    assert plan.trial is not None
    flips = iter([True, False] * 1000)

    def flapping() -> HealthReport:
        return HealthReport(() if next(flips) else ("device printer not answering (offline)",))

    outcome = asyncio.run(station.updates.soak(plan.trial, flapping))
    assert outcome == "rolled_back"
    assert clock.t - plan.trial.began_at == pytest.approx(POLICY.timeout, abs=POLICY.interval)
    assert "not healthy 300 s after the update" in station.events[-1]["error"]
    assert station.updater.running_version() == "0.1.0"  # back to the shipped package


def test_a_crash_loop_rolls_back_at_the_next_start(tmp_path: Path, station: Station) -> None:
    station.apply(release(tmp_path, "1.0.0", 1))
    station.start()
    station.apply(release(tmp_path, "2.0.0", 2))
    for n in range(1, POLICY.max_starts + 1):
        plan = station.updater.recover()  # the new release starts… and dies before health
        assert plan.kind == "trial" and plan.trial is not None and plan.trial.starts == n
    assert station.updater.recover().kind == "restart"  # the fourth start rolls back
    assert station.updater.running_version() == "1.0.0"
    station.updates.flush_reports()
    assert station.events[-1]["progress"] == "rolled_back"
    assert "crash loop: 4 starts" in station.events[-1]["error"]


def test_a_trial_that_outlives_its_timeout_across_restarts(tmp_path: Path) -> None:
    clock = Clock()
    station = Station(tmp_path / "software", clock)
    station.apply(release(tmp_path, "1.0.0", 1))
    assert station.updater.recover().kind == "trial"
    clock.t += POLICY.timeout + 1  # the station was off, or hung, for long
    assert station.updater.recover().kind == "restart"
    assert station.updater.running_version() == "0.1.0"


def test_no_second_release_while_one_is_on_trial(tmp_path: Path, station: Station) -> None:
    station.apply(release(tmp_path, "1.0.0", 1))
    with pytest.raises(UpdateInterrupted, match="on trial"):
        station.updater.check(release(tmp_path, "1.1.0", 2))


def test_a_busy_kiosk_defers_the_switch(tmp_path: Path, station: Station) -> None:
    station.busy = True
    target = release(tmp_path, "1.0.0", 1)

    async def scenario() -> str:
        async def fetch() -> VerifiedTarget:
            return target

        task = asyncio.create_task(station.updates.apply_software(fetch, release="r-1.0.0"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert station.progress("r-1.0.0") == ["downloading", "deferred"]
        assert station.updater.running_version() == "0.1.0"  # nothing switched meanwhile
        station.busy = False
        return await task

    assert asyncio.run(scenario()) == "restarting"
    assert station.events[1]["reason"] == "a citizen transaction is in progress"
    assert station.progress("r-1.0.0") == ["downloading", "deferred", "installed"]


class Crash(BaseException):
    """Stands for the process dying right after a step (no handler runs: BaseException)."""


def _crash_after(step: str) -> Any:
    def hook(name: str) -> None:
        if name == step:
            raise Crash(name)

    return hook


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("healthy", [True, False])
def test_interrupted_at_every_step_the_next_start_is_consistent(
    tmp_path: Path, step: str, healthy: bool
) -> None:
    clock = Clock()
    root = tmp_path / "software"
    before = Station(root, clock)
    before.apply(release(tmp_path, "1.0.0", 1))
    before.start()
    dying = Station(root, clock, after_step=_crash_after(step))
    crashed = False
    try:
        dying.apply(release(tmp_path, "2.0.0", 2))
        for _ in range(4):
            dying.start(healthy)
    except Crash:
        crashed = True
    after = Station(root, clock)
    for _ in range(6):  # the supervisor restarts it until it runs
        if after.start(healthy) in ("run", "committed"):
            break
    state = after.updater.state()
    assert state.trial is None and state.reports == ()
    version = after.updater.running_version()
    assert state.installed is not None and state.installed.version == version
    assert verify_folder(root / "current").version == version
    assert not [p for p in (root / "releases").iterdir() if p.name.startswith(".")]
    expected = "2.0.0" if healthy and step not in ("verify", "unpack") else "1.0.0"
    # every step is reached (so the crash happened there), except that an unhealthy trial
    # never commits and a healthy one never rolls back
    never = "commit" if not healthy else "rollback"
    assert crashed == (not step.startswith(never))
    assert version == expected


def test_a_rollback_restarts_only_once_the_citizen_is_done(tmp_path: Path) -> None:
    clock = Clock()
    station = Station(tmp_path / "software", clock)
    station.apply(release(tmp_path, "1.0.0", 1))
    plan = station.updater.recover()
    assert plan.trial is not None
    station.busy = True  # a citizen is paying on the bad release
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.t += seconds
        if len(slept) == 10:
            assert station.restarts == 1  # only the install's so far
            assert station.updater.running_version() == "0.1.0"  # switched back already
            station.busy = False

    station.updates.sleep = sleep
    outcome = asyncio.run(station.updates.soak(plan.trial, lambda: HealthReport(("x",))))
    assert outcome == "rolled_back" and station.restarts == 2
    assert len(slept) == 10
