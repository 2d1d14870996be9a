"""The post-update health verdict: a pure state machine over probe results and a clock.

A trial is healthy once every probe has passed for a whole soak window; it fails after
``max_failures`` failed probes in a row (the new release cannot keep the station healthy), or
when ``timeout`` seconds after the trial began it has still not been healthy for a soak window
(a station that flaps, or keeps restarting: the time counts across restarts, from the trial's
start recorded in the state file). Like ``agent/transactions.py`` it does no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class HealthReport:
    """One probe's answer: healthy, or the problems that make it not."""

    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems


#: the agent's probe: agent up, MQTT connected, required devices answering, catalogue loads
HealthCheck = Callable[[], HealthReport]


@dataclass(frozen=True)
class SoakPolicy:
    """How long and how hard a new release is watched before it is committed."""

    #: seconds every probe must pass for, in a row
    soak: float = 120.0
    #: seconds between probes
    interval: float = 5.0
    #: seconds after the trial began by which it must be healthy (across restarts)
    timeout: float = 600.0
    #: failed probes in a row that roll back at once
    max_failures: int = 6
    #: agent starts within one trial that roll back (a crash loop)
    max_starts: int = 3

    def __post_init__(self) -> None:
        if not (0 <= self.soak < self.timeout and self.interval > 0):
            raise ValueError("need 0 <= soak < timeout and interval > 0")
        if self.max_failures < 1 or self.max_starts < 1:
            raise ValueError("max_failures and max_starts must be at least 1")


Verdict = Literal["wait", "healthy", "failed"]


@dataclass
class SoakJudge:
    """Judges one trial from its probes.

    Args:
        policy: the bounds.
        began_at: when the trial began (wall clock seconds, as persisted).
    """

    policy: SoakPolicy
    began_at: float
    healthy_since: float | None = None
    failures: int = 0
    #: why it failed, once :meth:`observe` said ``failed``
    reason: str | None = None
    last_problems: tuple[str, ...] = field(default=())

    def observe(self, now: float, report: HealthReport) -> Verdict:
        """Take one probe's answer at ``now``; the verdict so far."""
        if report.ok:
            self.failures = 0
            if self.healthy_since is None:
                self.healthy_since = now
            if now - self.healthy_since >= self.policy.soak:
                return "healthy"
        else:
            self.healthy_since = None
            self.failures += 1
            self.last_problems = report.problems
            if self.failures >= self.policy.max_failures:
                self.reason = f"health probe failed {self.failures} times: " + "; ".join(
                    report.problems
                )
                return "failed"
        if now - self.began_at >= self.policy.timeout:
            why = "; ".join(self.last_problems) or "not healthy for a whole soak window"
            self.reason = f"not healthy {self.policy.timeout:g} s after the update: {why}"
            return "failed"
        return "wait"
