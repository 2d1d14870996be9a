"""The real updater in simulated stations: each station gets a sandbox folder of its own
(release folders, catalogue, TUF metadata and targets), its ``install`` command runs the real
TUF client and :class:`~kioskfleet.agent.updater.runner.StationUpdates`, and a restart is a
new agent session over the same outbox (the fleet's restart hook), after which the updater's
``recover`` and soak run as on a kiosk. The stations chosen by ``--update-failure-rate`` fail
their post-update health probe, so they roll back and report it.

Built on a station's first ``install`` only: a fleet of ten thousand that never updates
creates no folders.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from kioskfleet import __version__
from kioskfleet.agent.agent import StationAgent, StationIdentity
from kioskfleet.agent.install import UpdateTools
from kioskfleet.agent.updater import HealthReport, SoakPolicy, SoftwareUpdater, UpdateError
from kioskfleet.agent.updater.catalogue import CatalogueStore
from kioskfleet.agent.updater.gate import UpdateGate
from kioskfleet.agent.updater.health import agent_health
from kioskfleet.agent.updater.runner import StationUpdates
from kioskfleet.updates.client import UpdateClient

log = logging.getLogger(__name__)

#: a simulated trial: a few seconds of soak (a kiosk's is minutes)
SIM_SOAK: Final = SoakPolicy(soak=3.0, interval=0.5, timeout=120.0, max_failures=6, max_starts=3)
#: what a station chosen to fail says in its probe
FAILING_PROBE: Final = "simulated: the post-update health check fails"


def fetch_root(repository_url: str, timeout: float = 10.0) -> bytes:
    """The repository's first root, trusted on first use: the simulator's stand-in for the
    ``update_root`` a kiosk is shipped with (a simulated fleet tests rollouts, not trust)."""
    base = repository_url if repository_url.endswith("/") else repository_url + "/"
    with urllib.request.urlopen(base + "metadata/1.root.json", timeout=timeout) as answer:  # noqa: S310 - http(s) URL from the command line
        data: bytes = answer.read()
    return data


@dataclass
class SimUpdates:
    """A station's update sandbox.

    Args:
        folder: the station's own folder.
        identity: the station.
        failing: whether its post-update health probe fails.
        agent: the station's current agent (it changes at every simulated restart).
        restart: the fleet's restart hook for this station.
        client: its TUF client.
    """

    folder: Path
    identity: StationIdentity
    failing: bool
    agent: Callable[[], StationAgent]
    restart: Callable[[], Awaitable[None]]
    client: UpdateClient
    policy: SoakPolicy = SIM_SOAK
    busy: Callable[[], bool] = lambda: False
    tasks: set[asyncio.Task[object]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.software = SoftwareUpdater(
            self.folder / "software", base_version=__version__, policy=self.policy
        )
        self.catalogue = CatalogueStore(self.folder / "catalogue", self.identity.site_type)
        self.catalogue.open()
        self.updates = StationUpdates(
            self.software,
            self.catalogue,
            UpdateGate(busy=self.busy),
            report=lambda events: self.agent().queue_events(events),
            restart=self.restart,
            catalogue_changed=lambda version: self.agent().set_versions(catalogue=version),
            gate_poll=1.0,
        )
        self._spawn(self.updates.catalogue_loop())

    def tools(self) -> UpdateTools:
        """For the ``install`` command."""
        return UpdateTools(self.updates, self.client)

    def _spawn(self, work: Awaitable[object]) -> None:
        async def run() -> object:
            return await work

        task = asyncio.get_running_loop().create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def identity_now(self, identity: StationIdentity) -> StationIdentity:
        """The birth's identity with the versions this sandbox runs."""
        return replace(
            identity,
            agent_version=self.software.running_version(),
            catalogue_version=self.catalogue.active_version or identity.catalogue_version,
        )

    def started(self, agent: StationAgent) -> None:
        """A new agent session of this station started: finish or undo what the restart
        interrupted, hand over the recorded reports, and soak a release on trial."""
        try:
            plan = self.software.recover()
            if plan.kind == "restart":  # the "process" now runs what current names
                plan = self.software.recover()
        except UpdateError as err:
            log.error("%s: software updates disabled: %s", self.identity.station, err)
            return
        agent.set_versions(agent=self.software.running_version())
        self.updates.flush_reports()
        if plan.kind == "trial" and plan.trial is not None:
            healthy = agent_health(
                connected=lambda: agent.link.connected,
                statuses=lambda: agent.coordinator.statuses,
                required=self.identity.required_devices,
                catalogue=self.catalogue,
            )

            def probe() -> HealthReport:
                if self.failing:
                    return HealthReport((FAILING_PROBE,))
                return healthy()

            self._spawn(self.updates.soak(plan.trial, probe))

    async def stop(self) -> None:
        """Cancel the sandbox's background work (catalogue scheduler, soak)."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
