"""Rollouts as a pure state machine (CONTRACT §4 ``/api/rollouts``): the wave planner and the
judge of where a rollout stands. No I/O, no clock of its own: :mod:`.rollouts` is the shell
that reads the tables, calls :func:`decide` and writes what it says.

A rollout's stations are put in one stable order (a hash of the rollout id and the station:
every district and site type spread over the waves), canaries first — one station per station
profile, wave 0 — then the cumulative waves: wave ``k`` holds the stations up to
``ceil(p_k / 100 · N)`` in that order (those not in an earlier wave). An empty wave is skipped.

Judged continuously: the moment failed ÷ finished among the current wave's stations is greater
than the failure threshold, the rollout pauses (or aborts) itself; the next wave starts once
every station of the current one has finished or is waiting (offline before it got its
command, or ``deferred`` by its gate: those finish later) and healthy ÷ finished reaches the
success threshold. ``rolled_back`` and a deadline failure count as failed. The rollout is
completed once every station has finished (at its deadline at the latest). A person's
``resume`` accepts the current wave as it is: its failures no longer stop it (the person
decided), the next waves are judged again.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Literal, get_args

RolloutState = Literal["scheduled", "running", "paused", "aborted", "completed"]
Progress = Literal[
    "pending", "deferred", "downloading", "installed", "healthy", "failed", "rolled_back"
]
OnFailure = Literal["pause", "abort"]
ROLLOUT_STATES: Final[tuple[RolloutState, ...]] = get_args(RolloutState)
PROGRESS: Final[tuple[Progress, ...]] = get_args(Progress)
#: a station's update ended (well or not)
FINISHED: Final = frozenset({"healthy", "failed", "rolled_back"})
FAILED: Final = frozenset({"failed", "rolled_back"})
#: a rollout that can still change by itself
ACTIVE: Final = frozenset({"scheduled", "running", "paused"})
#: the wave of the canaries
CANARY_WAVE: Final = 0


class RolloutError(ValueError):
    """A rollout that cannot be planned or an action not allowed from its state; the message
    says why (HTTP 422 or 409)."""


@dataclass(frozen=True)
class Policy:
    """How a rollout proceeds (the POST body, checked)."""

    waves: tuple[int, ...] = (10, 50, 100)
    failure_threshold: float = 0.2
    success_threshold: float | None = None
    on_failure: OnFailure = "pause"
    canary: bool = True
    start_at: float | None = None
    deadline: float | None = None

    def __post_init__(self) -> None:
        if not self.waves:
            raise RolloutError("waves: at least one wave")
        if any(isinstance(w, bool) or not 0 < w <= 100 for w in self.waves):
            raise RolloutError("waves: cumulative percentages, each above 0 and at most 100")
        if list(self.waves) != sorted(set(self.waves)):
            raise RolloutError("waves: cumulative percentages must grow, e.g. [10, 50, 100]")
        if self.waves[-1] != 100:
            raise RolloutError("waves: the last wave must be 100 (the whole target)")
        if not 0 <= self.failure_threshold < 1:
            raise RolloutError("failure_threshold: from 0 up to (not including) 1")
        if self.success_threshold is not None and not 0 < self.success_threshold <= 1:
            raise RolloutError("success_threshold: above 0, at most 1")
        start, deadline = self.start_at, self.deadline
        if start is not None and deadline is not None and deadline <= start:
            raise RolloutError("deadline: must come after start_at")

    @property
    def success(self) -> float:
        """The success threshold (default 1 − the failure threshold)."""
        if self.success_threshold is not None:
            return self.success_threshold
        return 1.0 - self.failure_threshold


def _rank(seed: str, station: str) -> str:
    return hashlib.sha256(f"{seed}\x1f{station}".encode()).hexdigest()


def plan_waves(
    stations: Mapping[str, str | None], waves: Sequence[int], *, canary: bool, seed: str
) -> dict[str, int]:
    """Each station's wave: 0 for the canaries (one per station profile, when ``canary``),
    1.. for the cumulative ``waves``. ``stations`` maps a station id to its profile."""
    order = sorted(stations, key=lambda s: (_rank(seed, s), s))
    planned: dict[str, int] = {}
    if canary:
        seen: set[str | None] = set()
        for station in order:
            profile = stations[station]
            if profile not in seen:
                seen.add(profile)
                planned[station] = CANARY_WAVE
        # the canaries stand at the front of the order: the waves' percentages include them
        order = [s for s in order if s in planned] + [s for s in order if s not in planned]
    total = len(order)
    position = 0
    for number, percent in enumerate(waves, start=1):
        upto = min(total, math.ceil(percent * total / 100))
        while position < upto:
            planned.setdefault(order[position], number)
            position += 1
    return planned


@dataclass(frozen=True)
class StationView:
    """One targeted station as the judge sees it."""

    station: str
    wave: int
    progress: Progress = "pending"
    #: its ``install`` command was created (it may wait for the station's next birth)
    sent: bool = False
    online: bool = True


@dataclass(frozen=True)
class RolloutView:
    """The rollout's own state."""

    state: RolloutState
    #: the current wave (-1 before it started)
    wave: int = -1
    #: a wave a person resumed: its failures no longer stop the rollout
    accepted_wave: int | None = None


@dataclass(frozen=True)
class Step:
    """What :func:`decide` says: the new state and wave, stations to send ``install`` to,
    stations to mark failed (with the error), and why the state changed."""

    state: RolloutState
    wave: int
    accepted_wave: int | None = None
    send: tuple[str, ...] = ()
    fail: tuple[tuple[str, str], ...] = ()
    reason: str | None = None
    #: the step changed something (state, wave, sends or failures)
    changed: bool = field(default=False)


@dataclass(frozen=True)
class WaveCounts:
    """A wave's stations by outcome."""

    members: int
    finished: int
    healthy: int
    failed: int
    waiting: int
    unsent: int

    @property
    def failure_ratio(self) -> float:
        """failed ÷ finished (0 before anything finished)."""
        return self.failed / self.finished if self.finished else 0.0

    @property
    def success_ratio(self) -> float:
        """healthy ÷ finished (1 before anything finished)."""
        return self.healthy / self.finished if self.finished else 1.0


def count_wave(stations: Iterable[StationView], wave: int) -> WaveCounts:
    """How the stations of ``wave`` stand."""
    members = finished = healthy = failed = waiting = unsent = 0
    for s in stations:
        if s.wave != wave:
            continue
        members += 1
        if s.progress in FINISHED:
            finished += 1
            healthy += s.progress == "healthy"
            failed += s.progress in FAILED
        elif s.progress == "deferred" or (s.progress == "pending" and not s.online):
            waiting += 1
        if not s.sent:
            unsent += 1
    return WaveCounts(members, finished, healthy, failed, waiting, unsent)


def _next_wave(stations: Sequence[StationView], after: int) -> int | None:
    later = sorted({s.wave for s in stations if s.wave > after})
    return later[0] if later else None


def decide(
    rollout: RolloutView, policy: Policy, stations: Sequence[StationView], now: float
) -> Step:
    """Where the rollout goes from here (see the module docstring)."""
    state, wave, accepted = rollout.state, rollout.wave, rollout.accepted_wave
    unchanged = Step(state, wave, accepted)
    if state not in ACTIVE:
        return unchanged
    if policy.deadline is not None and now >= policy.deadline:
        # the release manager's deadline: what has not finished has failed, nothing is
        # interrupted (a deferred station reports its own deadline failure too)
        fail = tuple(
            (s.station, "deadline: not finished by the rollout's deadline")
            for s in stations
            if s.progress not in FINISHED
        )
        return Step("completed", wave, accepted, fail=fail, reason="deadline", changed=True)
    if state == "paused":
        return unchanged
    reason: str | None = None
    if state == "scheduled":
        if policy.start_at is not None and now < policy.start_at:
            return unchanged
        first = _next_wave(stations, -1)
        if first is None:
            return Step("completed", wave, accepted, reason="no stations", changed=True)
        state, wave, reason = "running", first, "started"
    send: list[str] = []
    changed = (state, wave) != (rollout.state, rollout.wave)
    while True:
        counts = count_wave(stations, wave)
        judged = wave != accepted
        if judged and counts.failure_ratio > policy.failure_threshold:
            stop: RolloutState = "aborted" if policy.on_failure == "abort" else "paused"
            why = (
                f"wave {wave}: {counts.failed} of {counts.finished} finished failed "
                f"(threshold {policy.failure_threshold:g})"
            )
            return Step(stop, wave, accepted, tuple(send), reason=why, changed=True)
        unsent = [s.station for s in stations if s.wave == wave and not s.sent]
        if unsent:
            send += unsent
            changed = True
        if unsent or counts.finished + counts.waiting < counts.members:
            return Step(state, wave, accepted, tuple(send), reason=reason, changed=changed)
        if wave == CANARY_WAVE and counts.healthy == 0 and judged:
            # canaries must be healthy before wave 1 starts: offline ones are waited for
            return Step(state, wave, accepted, tuple(send), reason=reason, changed=changed)
        if judged and counts.success_ratio < policy.success:
            stop = "aborted" if policy.on_failure == "abort" else "paused"
            why = (
                f"wave {wave}: {counts.healthy} of {counts.finished} finished healthy "
                f"(success threshold {policy.success:g})"
            )
            return Step(stop, wave, accepted, tuple(send), reason=why, changed=True)
        following = _next_wave(stations, wave)
        if following is None:
            if any(s.progress not in FINISHED for s in stations):
                # every wave started; deferred and offline stations finish later (or fail
                # at the deadline): the rollout is done when they are
                return Step(state, wave, accepted, tuple(send), reason=reason, changed=changed)
            return Step(
                "completed", wave, accepted, tuple(send), reason="all waves done", changed=True
            )
        wave, changed, reason = following, True, f"wave {following} started"


def resume(rollout: RolloutView) -> RolloutView:
    """A person resumes a paused rollout: the current wave is accepted as it stands.

    Raises:
        RolloutError: it is not paused.
    """
    if rollout.state != "paused":
        raise RolloutError(f"only a paused rollout can be resumed; this one is {rollout.state}")
    return replace(rollout, state="running", accepted_wave=rollout.wave)


def pause(rollout: RolloutView) -> RolloutView:
    """A person pauses a running or scheduled rollout.

    Raises:
        RolloutError: it is not running or scheduled.
    """
    if rollout.state not in ("running", "scheduled"):
        raise RolloutError(
            f"only a running or scheduled rollout can be paused; this one is {rollout.state}"
        )
    return replace(rollout, state="paused")


def abort(rollout: RolloutView) -> RolloutView:
    """A person aborts a rollout that has not ended.

    Raises:
        RolloutError: it is aborted or completed already.
    """
    if rollout.state not in ACTIVE:
        raise RolloutError(f"this rollout is {rollout.state} already")
    return replace(rollout, state="aborted")
