"""Applying a software release: immutable release folders, an atomic switch, a trial that is
committed after a soak window or rolled back — and a consistent state whatever step a crash
interrupts.

Layout under the updater's root (``<state_dir>/software``)::

    releases/<version>-<counter>/   one folder per release, never changed once renamed here
    releases/.tmp-*                 a release being unpacked (removed at start)
    current -> releases/<name>      what the supervisor starts (no link: the shipped package)
    state.json                      installed, previous, the trial under way, reports to send

The named steps, in order (:data:`APPLY_STEPS`, then a restart, then :data:`START_STEPS`):

``verify``     the whole tarball is read and checked, nothing written (:mod:`.tarball`)
``unpack``     into ``releases/.tmp-…``, fsync'd, renamed to ``releases/<name>``
``trial``      state.json gets the trial (from, to, when, starts 0) — before anything switches
``switch``     ``current`` is swapped to the new folder (``os.replace`` of a new link)
(restart)      the caller exits; its supervisor starts ``current`` again
``started``    the trial's start counter is incremented (a crash loop is counted here)
``commit``     state.json: the new release installed, the old one kept as previous
``cleanup``    folders neither installed nor previous are removed
``rollback_marked``  state.json: the trial is rolling back, and why
``rollback_switch``  ``current`` swapped back to the previous release
``rollback_done``    state.json: the trial gone, ``rolled_back`` reported

At every start :meth:`SoftwareUpdater.recover` finishes or undoes what was interrupted: a crash
before ``trial`` leaves the old release running (a finished but unused folder is removed); from
``trial`` on the new release is tried (the switch is redone if it had not happened); a rollback
under way is finished. Nothing here reads the clock or the network by itself: both are given.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal

from kioskfleet.agent.updater.atomic import (
    fsync_dir,
    read_link,
    remove_link,
    swap_symlink,
    write_json_atomic,
)
from kioskfleet.agent.updater.errors import UpdateError, UpdateInterrupted, UpdateRejected
from kioskfleet.agent.updater.soak import SoakPolicy
from kioskfleet.agent.updater.tarball import (
    VERSION_FILE,
    TarLimits,
    remove_tree,
    unpack,
    verify_tarball,
)
from kioskfleet.agent.updater.target import VerifiedTarget, update_event

log = logging.getLogger(__name__)

APPLY_STEPS: Final = ("verify", "unpack", "trial", "switch")
START_STEPS: Final = (
    "started",
    "commit",
    "cleanup",
    "rollback_marked",
    "rollback_switch",
    "rollback_done",
)
STEPS: Final = APPLY_STEPS + START_STEPS
_TMP: Final = ".tmp-"

#: called after each named step (tests kill the process there); None in production
StepHook = Callable[[str], None]


@dataclass(frozen=True)
class Release:
    """An unpacked release: its folder's name, its version and its release counter."""

    name: str
    version: str
    counter: int

    def json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "counter": self.counter}

    @classmethod
    def of(cls, data: Any) -> Release | None:
        if data is None:
            return None
        return cls(str(data["name"]), str(data["version"]), int(data["counter"]))


@dataclass(frozen=True)
class Trial:
    """A release being tried: switched to, not yet committed."""

    to: Release
    from_: Release | None
    release: str
    rollout: str | None
    #: wall-clock seconds when it began (the timeout counts across restarts)
    began_at: float
    #: agent starts on it so far
    starts: int = 0
    phase: Literal["trying", "rolling_back"] = "trying"
    reason: str | None = None

    def json(self) -> dict[str, Any]:
        return {
            "to": self.to.json(),
            "from": self.from_.json() if self.from_ else None,
            "release": self.release,
            "rollout": self.rollout,
            "began_at": self.began_at,
            "starts": self.starts,
            "phase": self.phase,
            "reason": self.reason,
        }

    @classmethod
    def of(cls, data: Any) -> Trial | None:
        if data is None:
            return None
        to = Release.of(data["to"])
        assert to is not None
        phase = data.get("phase", "trying")
        if phase not in ("trying", "rolling_back"):
            raise ValueError(f"unknown trial phase {phase!r}")
        return cls(
            to=to,
            from_=Release.of(data.get("from")),
            release=str(data["release"]),
            rollout=None if data.get("rollout") is None else str(data["rollout"]),
            began_at=float(data["began_at"]),
            starts=int(data.get("starts", 0)),
            phase=phase,
            reason=data.get("reason"),
        )


@dataclass(frozen=True)
class SoftwareState:
    """What ``state.json`` holds."""

    installed: Release | None = None
    previous: Release | None = None
    trial: Trial | None = None
    #: update events not yet handed to the outbox
    reports: tuple[dict[str, Any], ...] = field(default=())

    def json(self) -> dict[str, Any]:
        return {
            "installed": self.installed.json() if self.installed else None,
            "previous": self.previous.json() if self.previous else None,
            "trial": self.trial.json() if self.trial else None,
            "reports": list(self.reports),
        }

    @classmethod
    def of(cls, data: Any) -> SoftwareState:
        return cls(
            installed=Release.of(data.get("installed")),
            previous=Release.of(data.get("previous")),
            trial=Trial.of(data.get("trial")),
            reports=tuple(data.get("reports", ())),
        )


StartKind = Literal["run", "trial", "restart"]


@dataclass(frozen=True)
class StartPlan:
    """What the agent does after :meth:`SoftwareUpdater.recover`.

    ``run``: nothing under way; ``trial``: probe health over the soak window, then
    :meth:`~SoftwareUpdater.commit` or :meth:`~SoftwareUpdater.rollback`; ``restart``: the
    code now running is not what ``current`` names (a switch or rollback was just finished):
    exit at once so the supervisor starts the right one.
    """

    kind: StartKind
    trial: Trial | None = None


class SoftwareUpdater:
    """A station's software releases under ``root``.

    Args:
        root: the updater's folder (created if missing).
        base_version: the version running when ``current`` does not exist (the package the
            kiosk was installed with).
        policy: soak window, timeout, crash-loop bound.
        clock: wall-clock seconds (injected in tests).
        after_step: called with each step's name once it is durable (a test's kill point).
        limits: tarball bounds.
    """

    def __init__(
        self,
        root: Path,
        *,
        base_version: str,
        policy: SoakPolicy | None = None,
        clock: Callable[[], float] = time.time,
        after_step: StepHook | None = None,
        limits: TarLimits | None = None,
    ) -> None:
        self.root = root
        self.releases = root / "releases"
        self.current = root / "current"
        self.state_file = root / "state.json"
        self.base_version = base_version
        self.policy = policy or SoakPolicy()
        self.clock = clock
        self.limits = limits or TarLimits()
        self._after_step = after_step
        self.releases.mkdir(parents=True, exist_ok=True)

    # -- state -----------------------------------------------------------------------------
    def state(self) -> SoftwareState:
        """The recorded state (empty before the first update).

        Raises:
            UpdateError: the file exists but cannot be read as a state (it is only ever
                replaced whole, so this means the disk or a person damaged it).
        """
        try:
            raw = self.state_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return SoftwareState()
        try:
            return SoftwareState.of(json.loads(raw))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise UpdateError(f"{self.state_file}: not an updater state: {err}") from err

    def _save(self, state: SoftwareState) -> None:
        write_json_atomic(self.state_file, state.json())

    def _step(self, name: str) -> None:
        if self._after_step is not None:
            self._after_step(name)

    def running(self) -> Release | None:
        """The release ``current`` names (None: the shipped package)."""
        name = self._link_name()
        if name is None:
            return None
        st = self.state()
        for known in (st.installed, st.previous, st.trial.to if st.trial else None):
            if known is not None and known.name == name:
                return known
        version = (self.releases / name / VERSION_FILE).read_text("utf-8").strip()
        return Release(name, version, int(name.rsplit("-", 1)[1]))

    def running_version(self) -> str:
        """The agent version the birth reports: ``current``'s ``VERSION``, or the package's."""
        name = self._link_name()
        if name is None:
            return self.base_version
        return (self.releases / name / VERSION_FILE).read_text("utf-8").strip()

    def _link_name(self) -> str | None:
        text = read_link(self.current)
        if text is None:
            return None
        return Path(text).name

    def _point_at(self, release: Release | None) -> bool:
        """Make ``current`` name ``release`` (None: no link); whether it changed."""
        want = None if release is None else release.name
        if self._link_name() == want:
            return False
        if release is None:
            remove_link(self.current)
        else:
            swap_symlink(self.current, f"releases/{release.name}")
        return True

    # -- apply -----------------------------------------------------------------------------
    def check(self, target: VerifiedTarget) -> bool:
        """Whether ``target`` needs installing (False: it is what is installed).

        Raises:
            UpdateRejected: not a software target, or older than what is installed (its
                release counter is lower, or equal with another version).
            UpdateInterrupted: another release is on trial.
        """
        if target.kind != "software":
            raise UpdateRejected(f"a {target.kind} target is not a software release")
        st = self.state()
        if st.trial is not None:
            raise UpdateInterrupted(f"release {st.trial.to.name} is on trial; try again later")
        installed = st.installed
        if installed is None:
            return True
        if target.counter < installed.counter:
            raise UpdateRejected(
                f"release counter {target.counter} is older than the installed "
                f"{installed.version} (counter {installed.counter})"
            )
        if target.counter == installed.counter:
            if target.version == installed.version:
                return False
            raise UpdateRejected(
                f"release counter {target.counter} is already installed as version "
                f"{installed.version}, not {target.version}"
            )
        return True

    def prepare(self, target: VerifiedTarget) -> Release:
        """Steps ``verify`` and ``unpack``: a complete release folder, or an error and none.

        Raises:
            UpdateRejected: the tarball is unsound (nothing is left on disk).
            UpdateInterrupted: the disk refused.
        """
        manifest = verify_tarball(target.path, target.version, self.limits)
        self._step("verify")
        final = self.releases / target.name
        release = Release(target.name, target.version, target.counter)
        if final.exists():  # unpacked before and never used (a crash after unpack)
            remove_tree(final)
        tmp = self.releases / f"{_TMP}{target.name}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            unpack(target.path, tmp, manifest, self.limits)
            os.replace(tmp, final)
            fsync_dir(self.releases)
        except UpdateRejected:
            remove_tree(tmp)
            raise
        except OSError as err:
            remove_tree(tmp)
            raise UpdateInterrupted(f"could not unpack {target.name}: {err}") from err
        self._step("unpack")
        return release

    def switch(self, target: VerifiedTarget, release: Release) -> None:
        """Steps ``trial`` and ``switch``; the caller restarts next.

        Raises:
            UpdateInterrupted: the disk refused; nothing is switched (and a crash in the
                middle of it leaves a trial that the next start completes).
        """
        st = self.state()
        trial = Trial(
            to=release,
            from_=st.installed,
            release=target.release,
            rollout=target.rollout,
            began_at=self.clock(),
        )
        event = update_event(target.release, target.rollout, "installed")
        try:
            self._save(replace(st, trial=trial, reports=(*st.reports, event)))
        except OSError as err:
            raise UpdateInterrupted(f"could not record the trial of {release.name}: {err}") from err
        self._step("trial")
        try:
            self._point_at(release)
        except OSError as err:
            # nothing switched: the trial must not be switched to at the next start either
            self._save(st)
            raise UpdateInterrupted(f"could not switch to {release.name}: {err}") from err
        self._step("switch")

    def install(self, target: VerifiedTarget) -> bool:
        """:meth:`check`, :meth:`prepare` and :meth:`switch`: whether a restart is due."""
        if not self.check(target):
            return False
        self.switch(target, self.prepare(target))
        return True

    # -- start -----------------------------------------------------------------------------
    def recover(self) -> StartPlan:
        """At every start, before anything else: finish or undo what a crash interrupted.

        Raises:
            UpdateError: the state file is damaged.
        """
        self._remove_temps()
        st = self.state()
        trial = st.trial
        if trial is None:
            changed = self._point_at(st.installed)  # a link a person changed, or none yet
            self.cleanup()
            return StartPlan("restart" if changed else "run")
        if trial.phase == "rolling_back":
            changed = self._finish_rollback(st, trial)
            return StartPlan("restart" if changed else "run")
        if self._point_at(trial.to):
            # the crash came between the trial record and the switch: switch now, and let
            # the supervisor start the new release (this start does not count)
            return StartPlan("restart", trial)
        trial = replace(trial, starts=trial.starts + 1)
        self._save(replace(st, trial=trial))
        self._step("started")
        if trial.starts > self.policy.max_starts:
            self.rollback(
                f"crash loop: {trial.starts} starts without reaching health "
                f"(at most {self.policy.max_starts})"
            )
            return StartPlan("restart")
        if self.clock() - trial.began_at >= self.policy.timeout:
            self.rollback(f"not healthy {self.policy.timeout:g} s after the update")
            return StartPlan("restart")
        return StartPlan("trial", trial)

    def commit(self) -> None:
        """Steps ``commit`` and ``cleanup``: the trial's release is installed."""
        st = self.state()
        trial = st.trial
        if trial is None or trial.phase != "trying":
            raise UpdateError("no release on trial to commit")
        event = update_event(trial.release, trial.rollout, "healthy")
        self._save(
            SoftwareState(
                installed=trial.to,
                previous=trial.from_,
                trial=None,
                reports=(*st.reports, event),
            )
        )
        self._step("commit")
        self.cleanup()
        log.info("software %s committed", trial.to.name)

    def rollback(self, reason: str) -> None:
        """Steps ``rollback_marked``, ``rollback_switch``, ``rollback_done``: back to the
        release the trial came from. The caller restarts next."""
        st = self.state()
        trial = st.trial
        if trial is None:
            raise UpdateError("no release on trial to roll back")
        trial = replace(trial, phase="rolling_back", reason=reason)
        self._save(replace(st, trial=trial))
        self._step("rollback_marked")
        log.error("software %s rolled back: %s", trial.to.name, reason)
        self._finish_rollback(replace(st, trial=trial), trial)

    def _finish_rollback(self, st: SoftwareState, trial: Trial) -> bool:
        changed = self._point_at(trial.from_)
        self._step("rollback_switch")
        event = update_event(trial.release, trial.rollout, "rolled_back", trial.reason)
        self._save(replace(st, trial=None, reports=(*st.reports, event)))
        self._step("rollback_done")
        self.cleanup()
        return changed

    # -- reports and housekeeping ------------------------------------------------------------
    def reports(self) -> tuple[dict[str, Any], ...]:
        """Update events recorded and not yet handed over."""
        return self.state().reports

    def delivered(self, count: int) -> None:
        """The first ``count`` reports are in the outbox: forget them."""
        if count:
            st = self.state()
            self._save(replace(st, reports=st.reports[count:]))

    def cleanup(self) -> None:
        """Step ``cleanup``: remove release folders nothing refers to."""
        st = self.state()
        keep = {r.name for r in (st.installed, st.previous) if r is not None}
        if st.trial is not None:
            keep |= {r.name for r in (st.trial.to, st.trial.from_) if r is not None}
        linked = self._link_name()
        if linked is not None:
            keep.add(linked)
        for folder in self.releases.iterdir():
            if folder.name not in keep:
                remove_tree(folder)
        self._step("cleanup")

    def _remove_temps(self) -> None:
        for folder in self.releases.glob(f"{_TMP}*"):
            remove_tree(folder)
        for link in self.root.glob(".current.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
