"""The update gate and the soak judge: pure, with injected clocks."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kioskfleet.agent.config import SHANGHAI, MaintenanceWindow
from kioskfleet.agent.updater import HealthReport, SoakJudge, SoakPolicy, SoftwareUpdater
from kioskfleet.agent.updater.gate import UpdateGate
from kioskfleet.agent.updater.runner import StationUpdates
from kioskfleet.agent.updater.target import VerifiedTarget
from tests.updater_releases import release


def _at(hh: int, mm: int) -> datetime:
    return datetime(2026, 11, 30, hh, mm, tzinfo=SHANGHAI)


@pytest.mark.parametrize(
    ("window", "moment", "open_"),
    [
        ("01:00-05:00", _at(0, 59), False),
        ("01:00-05:00", _at(1, 0), True),
        ("01:00-05:00", _at(4, 59), True),
        ("01:00-05:00", _at(5, 0), False),
        ("23:00-02:00", _at(23, 30), True),  # across midnight
        ("23:00-02:00", _at(1, 59), True),
        ("23:00-02:00", _at(2, 0), False),
        ("23:00-02:00", _at(12, 0), False),
        (None, _at(12, 0), True),  # none configured: always open
    ],
)
def test_the_maintenance_window_in_shanghai_time(
    window: str | None, moment: datetime, open_: bool
) -> None:
    utc = moment.astimezone(UTC)  # the clock says UTC; the window is local
    gate = UpdateGate(
        busy=lambda: False,
        window=MaintenanceWindow.parse(window) if window else None,
        now=lambda: utc,
    )
    assert (gate.closed() is None) == open_
    # a catalogue swap only minds the citizen
    assert gate.closed(restart=False) is None


def test_a_transaction_closes_the_gate_and_it_settles() -> None:
    state = {"busy": True, "idle": 0.0}
    gate = UpdateGate(
        busy=lambda: bool(state["busy"]), settle=30.0, idle_for=lambda: float(state["idle"])
    )
    assert gate.closed() == "a citizen transaction is in progress"
    state.update(busy=False, idle=10.0)
    assert gate.closed() == "the kiosk has been idle for less than 30 s"
    state["idle"] = 30.0
    assert gate.closed() is None


def test_a_deferred_update_fails_at_its_deadline_never_interrupting(tmp_path: Path) -> None:
    """Outside the window until the deadline: ``deferred``, then ``failed`` reason deadline,
    and nothing was unpacked or switched."""
    now = [datetime(2026, 11, 30, 4, 0, tzinfo=UTC)]  # 12:00 in Wuxi
    events: list[dict[str, Any]] = []

    async def sleep(seconds: float) -> None:
        now[0] += timedelta(seconds=seconds)

    async def restart() -> None:
        raise AssertionError("must not restart")

    updater = SoftwareUpdater(tmp_path / "software", base_version="0.1.0")
    updates = StationUpdates(
        updater,
        None,
        UpdateGate(
            busy=lambda: False, window=MaintenanceWindow.parse("01:00-05:00"), now=lambda: now[0]
        ),
        report=events.extend,
        restart=restart,
        now=lambda: now[0],
        sleep=sleep,
        gate_poll=60.0,
    )
    target = release(tmp_path, "1.0.0", 1)

    async def fetch() -> VerifiedTarget:
        return target

    deadline = now[0] + timedelta(hours=2)
    outcome = asyncio.run(updates.apply_software(fetch, release="r1", deadline=deadline))
    assert outcome == "failed"
    assert [e["progress"] for e in events] == ["downloading", "deferred", "failed"]
    assert events[1]["reason"].startswith("outside the maintenance window 01:00-05:00")
    assert events[2]["error"].startswith("deadline")
    assert now[0] >= deadline
    assert list((tmp_path / "software" / "releases").iterdir()) == []
    assert updater.running_version() == "0.1.0"


POLICY = SoakPolicy(soak=60.0, interval=5.0, timeout=300.0, max_failures=3)
OK = HealthReport()
BAD = HealthReport(("MQTT not connected",))


def test_healthy_only_after_a_whole_soak_window() -> None:
    judge = SoakJudge(POLICY, began_at=0.0)
    assert [judge.observe(t, OK) for t in (10.0, 40.0, 69.0)] == ["wait"] * 3
    assert judge.observe(70.0, OK) == "healthy"


def test_a_failed_probe_restarts_the_soak_window() -> None:
    judge = SoakJudge(POLICY, began_at=0.0)
    assert judge.observe(0.0, OK) == "wait"
    assert judge.observe(50.0, BAD) == "wait"
    assert judge.observe(55.0, OK) == "wait"
    assert judge.observe(110.0, OK) == "wait"
    assert judge.observe(115.0, OK) == "healthy"


def test_failures_in_a_row_fail_and_say_why() -> None:
    judge = SoakJudge(POLICY, began_at=0.0)
    assert [judge.observe(t, BAD) for t in (0.0, 5.0, 10.0)] == ["wait", "wait", "failed"]
    assert judge.reason == "health probe failed 3 times: MQTT not connected"


def test_never_healthy_long_enough_times_out() -> None:
    judge = SoakJudge(POLICY, began_at=0.0)
    verdicts = [judge.observe(float(t), OK if t % 50 else BAD) for t in range(0, 301, 5)]
    assert verdicts[-1] == "failed" and "failed" not in verdicts[:-1]
    assert judge.reason is not None and judge.reason.startswith("not healthy 300 s")


@pytest.mark.parametrize(
    "kwargs",
    [{"soak": 10.0, "timeout": 5.0}, {"interval": 0.0}, {"max_failures": 0}, {"max_starts": 0}],
)
def test_a_policy_that_cannot_work_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        SoakPolicy(**kwargs)  # type: ignore[arg-type]
