"""The agent's updater: software releases and service catalogues, applied atomically, probed,
committed or rolled back (issue 11, CONTRACT §3–§4; ``docs/decisions.md``).

- :mod:`.target` — :class:`VerifiedTarget`, what the TUF client hands over;
- :mod:`.tarball` — a release tarball checked whole before it is unpacked;
- :mod:`.software` — release folders, the named steps, recovery at start;
- :mod:`.soak` — the health verdict over a soak window (pure);
- :mod:`.catalogue` — bundles stored, swapped at ``effective_from``, rolled back;
- :mod:`.gate` — never during a citizen transaction, only in the maintenance window;
- :mod:`.health` — the agent's probe;
- :mod:`.runner` — :class:`StationUpdates`, all of it in the agent's loop.
"""

from kioskfleet.agent.updater.errors import UpdateError, UpdateInterrupted, UpdateRejected
from kioskfleet.agent.updater.soak import HealthCheck, HealthReport, SoakJudge, SoakPolicy
from kioskfleet.agent.updater.software import (
    APPLY_STEPS,
    START_STEPS,
    STEPS,
    SoftwareUpdater,
    StartPlan,
)
from kioskfleet.agent.updater.target import VerifiedTarget, update_event

__all__ = [
    "APPLY_STEPS",
    "START_STEPS",
    "STEPS",
    "HealthCheck",
    "HealthReport",
    "SoakJudge",
    "SoakPolicy",
    "SoftwareUpdater",
    "StartPlan",
    "UpdateError",
    "UpdateInterrupted",
    "UpdateRejected",
    "VerifiedTarget",
    "update_event",
]
