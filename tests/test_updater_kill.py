"""kill -9 at each named step of a software update: the station then runs one complete
version, and its next birth says which.

Each case is a station (``tests/updater_station.py``, a subprocess) that has v1 installed,
is told to apply v2, and is killed with SIGKILL the moment one named step is durable. Its
supervisor then starts it again and again (exit 75: restart) until it runs. A kill before
the trial is recorded leaves v1; from the trial on, v2 is tried and, healthy, committed; a
kill during a rollback still ends on v1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kioskfleet.agent.updater import APPLY_STEPS, SoftwareUpdater
from kioskfleet.agent.updater.tarball import verify_folder
from tests.updater_releases import release

ROOT = Path(__file__).resolve().parents[1]
STATION = ROOT / "tests" / "updater_station.py"
RESTART = 75

pytestmark = pytest.mark.slow


def _run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    return subprocess.run(
        [sys.executable, str(STATION), str(root), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def _supervise(root: Path, *args: str) -> dict[str, object]:
    """Start the station until it runs (exit 0), as systemd's Restart= would."""
    for _ in range(10):
        done = _run(root, "start", *args)
        if done.returncode == 0:
            result: dict[str, object] = json.loads(done.stdout)
            return result
        assert done.returncode == RESTART, done.stderr
        args = tuple(a for a in args if not a.startswith("--die-after"))  # only the first
    raise AssertionError("the station never came up")


def _installed_v1(tmp_path: Path) -> Path:
    root = tmp_path / "software"
    first = release(tmp_path, "1.0.0", 1)
    done = _run(root, "apply", str(first.path), "1.0.0", "1")
    assert done.returncode == RESTART, done.stderr
    assert _supervise(root)["running"] == "1.0.0-1"
    return root


def _progress(root: Path, release: str) -> list[str]:
    """The update events the station handed to its outbox for ``release``."""
    lines = (root.parent / "events.jsonl").read_text().splitlines()
    return [e["progress"] for e in map(json.loads, lines) if e["release"] == release]


def _assert_consistent(root: Path, version: str) -> None:
    """One complete release under ``current``, the state saying it, nothing half-done."""
    current = root / "current"
    assert current.is_symlink()
    manifest = verify_folder(current.resolve())
    assert manifest.version == version
    assert (current / "VERSION").read_text().strip() == version
    updater = SoftwareUpdater(root, base_version="0.1.0")
    state = updater.state()
    assert state.trial is None
    assert state.installed is not None and state.installed.version == version
    assert not [p for p in (root / "releases").iterdir() if p.name.startswith(".")]
    assert not list(root.glob(".current*"))


APPLY_KILLS = [(step, "1.0.0" if step in ("verify", "unpack") else "2.0.0") for step in APPLY_STEPS]


@pytest.mark.parametrize(("step", "expected"), APPLY_KILLS)
def test_kill_during_apply(tmp_path: Path, step: str, expected: str) -> None:
    root = _installed_v1(tmp_path)
    second = release(tmp_path, "2.0.0", 2)
    killed = _run(root, "apply", str(second.path), "2.0.0", "2", "--die-after", step)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    came_up = _supervise(root)
    assert came_up["versions"] == {"agent": expected, "catalogue": None}
    _assert_consistent(root, expected)
    progress = _progress(root, "r-2.0.0")
    if expected == "2.0.0":
        assert progress[-2:] == ["installed", "healthy"]
    else:
        assert progress == ["downloading"]  # and nothing else: killed before installing


START_KILLS = [
    ("started", "ok", "2.0.0"),
    ("commit", "ok", "2.0.0"),
    ("cleanup", "ok", "2.0.0"),
    ("started", "fail", "1.0.0"),
    ("rollback_marked", "fail", "1.0.0"),
    ("rollback_switch", "fail", "1.0.0"),
    ("rollback_done", "fail", "1.0.0"),
]


@pytest.mark.parametrize(("step", "health", "expected"), START_KILLS)
def test_kill_during_trial(tmp_path: Path, step: str, health: str, expected: str) -> None:
    root = _installed_v1(tmp_path)
    second = release(tmp_path, "2.0.0", 2)
    done = _run(root, "apply", str(second.path), "2.0.0", "2")
    assert done.returncode == RESTART, done.stderr
    killed = _run(root, "start", "--die-after", step, "--health", health)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    came_up = _supervise(root, "--health", health)
    assert came_up["versions"] == {"agent": expected, "catalogue": None}
    _assert_consistent(root, expected)
    assert _progress(root, "r-2.0.0")[-1] == ("healthy" if expected == "2.0.0" else "rolled_back")


def test_a_crash_loop_rolls_back(tmp_path: Path) -> None:
    root = _installed_v1(tmp_path)
    second = release(tmp_path, "2.0.0", 2)
    assert _run(root, "apply", str(second.path), "2.0.0", "2").returncode == RESTART
    codes = [_run(root, "start", "--health", "crash").returncode for _ in range(4)]
    # three starts die on v2; the fourth finds the crash loop, rolls back and restarts
    assert codes == [3, 3, 3, RESTART]
    assert _supervise(root, "--health", "crash")["versions"] == {
        "agent": "1.0.0",
        "catalogue": None,
    }
    _assert_consistent(root, "1.0.0")
    lines = (root.parent / "events.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    assert last["progress"] == "rolled_back" and "crash loop" in last["error"]
