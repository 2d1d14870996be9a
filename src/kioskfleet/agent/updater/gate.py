"""When an update may be applied: never while a citizen is mid-transaction, and only inside
the station's maintenance window when one is configured (CONTRACT §2).

The busy question goes to the station's transaction state
(:class:`~kioskfleet.agent.tracker.TransactionTracker`), which the agent keeps whether or not
its local device service runs, so the gate works with the service switched off too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from kioskfleet.agent.config import MaintenanceWindow


@dataclass(frozen=True)
class UpdateGate:
    """Answers "may an update interrupt this station now?".

    Args:
        busy: whether a citizen is mid-transaction (the tracker's ``busy``).
        window: the maintenance window; None: always open.
        now: the wall clock (injected in tests).
        settle: seconds the kiosk must have been idle (a citizen between two steps, e.g.
            after paying and before the receipt, is not gone yet).
        idle_for: seconds idle so far (the tracker's ``idle_for``); None: not checked.
    """

    busy: Callable[[], bool]
    window: MaintenanceWindow | None = None
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    settle: float = 0.0
    idle_for: Callable[[], float] | None = None

    def closed(self, *, restart: bool = True) -> str | None:
        """Why an update must wait now (None: it may go ahead).

        ``restart`` False is a catalogue swap, which restarts nothing and happens at the
        release manager's ``effective_from``: only an open transaction holds it back (not
        the window, not the settle time)."""
        if restart and self.window is not None and not self.window.contains(self.now()):
            return f"outside the maintenance window {self.window} (Asia/Shanghai)"
        if self.busy():
            return "a citizen transaction is in progress"
        if not restart:
            return None
        if self.settle > 0 and self.idle_for is not None and self.idle_for() < self.settle:
            return f"the kiosk has been idle for less than {self.settle:g} s"
        return None
