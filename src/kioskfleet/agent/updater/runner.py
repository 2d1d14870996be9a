"""The updater inside the agent's event loop: waits for the gate, applies in a worker thread,
reports progress, soaks a trial, and swaps catalogues at their ``effective_from``.

It composes the pure and file-system parts (:class:`~.software.SoftwareUpdater`,
:class:`~.catalogue.CatalogueStore`, :class:`~.gate.UpdateGate`, :class:`~.soak.SoakJudge`)
with the agent's callbacks: ``report`` queues update events on the durable outbox,
``restart`` ends the agent so its supervisor starts ``current`` again, ``catalogue_changed``
republishes the birth with the new ``versions.catalogue``. Downloads are the TUF client's:
an apply takes a ``fetch`` coroutine that returns the :class:`~.target.VerifiedTarget`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal

from kioskfleet.agent.updater.catalogue import CatalogueStore
from kioskfleet.agent.updater.errors import UpdateError, UpdateRejected
from kioskfleet.agent.updater.gate import UpdateGate
from kioskfleet.agent.updater.soak import HealthCheck, SoakJudge
from kioskfleet.agent.updater.software import SoftwareUpdater, Trial
from kioskfleet.agent.updater.target import VerifiedTarget, update_event

log = logging.getLogger(__name__)

#: the TUF client's download of one target (in a thread: the loop never blocks); it raises
#: :class:`UpdateRejected` for metadata or a target it refuses (tampered, expired, rolled
#: back, wrong key) and :class:`~.errors.UpdateInterrupted` for a download that may work later
Fetch = Callable[[], Awaitable[VerifiedTarget]]
Report = Callable[[list[dict[str, Any]]], object]
Outcome = Literal["restarting", "current", "failed", "installed", "committed", "rolled_back"]


class StationUpdates:
    """A station's software and catalogue updates, run from the agent's loop.

    Args:
        software: the release folders and their state.
        catalogue: the station's catalogues (None: the station uses none).
        gate: when an update may interrupt.
        report: queues update events (the agent's ``queue_events``).
        restart: ends the agent for its supervisor to start again.
        catalogue_changed: told the active catalogue's version after a swap or rollback.
        clock: wall-clock seconds (trial timing).
        now: aware wall-clock datetime (gate and ``effective_from``).
        sleep: the loop's sleep (tests pass a fake clock's).
        gate_poll: seconds between looks at a closed gate.
        catalogue_tick: seconds between looks while a due catalogue waits for a citizen.
        catalogue_idle: the longest the catalogue scheduler sleeps.
    """

    def __init__(
        self,
        software: SoftwareUpdater,
        catalogue: CatalogueStore | None,
        gate: UpdateGate,
        *,
        report: Report,
        restart: Callable[[], Awaitable[None]],
        catalogue_changed: Callable[[str | None], object] | None = None,
        clock: Callable[[], float] = time.time,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        gate_poll: float = 5.0,
        catalogue_tick: float = 1.0,
        catalogue_idle: float = 60.0,
    ) -> None:
        self.software = software
        self.catalogue = catalogue
        self.gate = gate
        self.report = report
        self.restart = restart
        self.catalogue_changed = catalogue_changed or (lambda version: None)
        self.clock = clock
        self.now = now
        self.sleep = sleep
        self.gate_poll = gate_poll
        self.catalogue_tick = catalogue_tick
        self.catalogue_idle = catalogue_idle
        self._catalogue_wake = asyncio.Event()
        self._software_lock = asyncio.Lock()

    # -- reports -----------------------------------------------------------------------------
    def flush_reports(self) -> int:
        """Hand the recorded software reports to the outbox; how many."""
        events = list(self.software.reports())
        if events:
            self.report(events)
            self.software.delivered(len(events))
        return len(events)

    def _say(self, events: list[dict[str, Any]]) -> None:
        if events:
            self.report(events)

    # -- software ----------------------------------------------------------------------------
    async def apply_software(
        self,
        fetch: Fetch,
        *,
        release: str,
        rollout: str | None = None,
        deadline: datetime | None = None,
    ) -> Outcome:
        """Download (``fetch``), check, wait for the gate, unpack, switch and restart.

        Returns ``restarting`` (after ``restart`` was awaited), ``current`` (already
        installed), or ``failed`` (reported with its error; nothing switched).
        """
        async with self._software_lock:
            self._say([update_event(release, rollout, "downloading")])
            try:
                target = await fetch()
                if not self.software.check(target):
                    self._say([update_event(release, rollout, "healthy")])
                    return "current"
                if not await self._wait_gate(release, rollout, deadline, restart=True):
                    return "failed"
                prepared = await asyncio.to_thread(self.software.prepare, target)
                # unpacking took time: a citizen may have started meanwhile
                if not await self._wait_gate(release, rollout, deadline, restart=True):
                    return "failed"
                self.software.switch(target, prepared)
            except (UpdateError, OSError) as err:
                never = isinstance(err, UpdateRejected)
                log.error("software %s %s: %s", release, "refused" if never else "failed", err)
                self._say([update_event(release, rollout, "failed", str(err))])
                return "failed"
            self.flush_reports()
            await self.restart()
            return "restarting"

    async def _wait_gate(
        self, release: str, rollout: str | None, deadline: datetime | None, *, restart: bool
    ) -> bool:
        """Wait until the gate opens (one ``deferred`` report per reason); False, and
        ``failed`` with reason ``deadline`` reported, when the deadline passes first."""
        said: str | None = None
        while (why := self.gate.closed(restart=restart)) is not None:
            if deadline is not None and self.now() >= deadline:
                self._say([update_event(release, rollout, "failed", f"deadline ({why})")])
                return False
            if why != said:
                self._say([update_event(release, rollout, "deferred", reason=why)])
                said = why
            await self.sleep(self.gate_poll)
        return True

    async def soak(
        self, trial: Trial, check: HealthCheck, *, interval: float | None = None
    ) -> Outcome:
        """Probe the release on trial until it is healthy for the soak window (commit) or it
        fails or times out (roll back, then restart once no citizen is mid-transaction: the
        maintenance window is not waited for — the bad release must go)."""
        policy = self.software.policy
        judge = SoakJudge(policy, began_at=trial.began_at)
        pause = policy.interval if interval is None else interval
        while True:
            verdict = judge.observe(self.clock(), check())
            try:
                if verdict == "healthy":
                    self.software.commit()
                    self.flush_reports()
                    return "committed"
                if verdict == "failed":
                    self.software.rollback(judge.reason or "unhealthy")
                    self.flush_reports()
                    while self.gate.closed(restart=False) is not None:
                        await self.sleep(self.gate_poll)
                    await self.restart()
                    return "rolled_back"
            except (UpdateError, OSError) as err:
                # the disk refused the state write: the trial stands; try again next probe
                log.error("software trial of %s: %s", trial.to.name, err)
            await self.sleep(pause)

    # -- catalogue ---------------------------------------------------------------------------
    async def apply_catalogue(
        self, fetch: Fetch, *, release: str, rollout: str | None = None
    ) -> Outcome:
        """Download and store a bundle; it becomes active at its ``effective_from``
        (:meth:`catalogue_step`). Storing it interrupts nothing: no gate."""
        if self.catalogue is None:
            self._say([update_event(release, rollout, "failed", "this station has no catalogue")])
            return "failed"
        self._say([update_event(release, rollout, "downloading")])
        try:
            target = await fetch()
            events = self.catalogue.install(target)
        except UpdateError as err:
            self._say([update_event(release, rollout, "failed", str(err))])
            return "failed"
        self._say(events)
        self._catalogue_wake.set()  # the scheduler sleeps until the new effective_from
        if self.catalogue_step():  # effective already, and the kiosk idle: at once
            return "committed"
        return "installed"

    def catalogue_step(self) -> bool:
        """Swap in a due catalogue if no citizen is mid-transaction; whether it swapped."""
        catalogue = self.catalogue
        if catalogue is None or not catalogue.due(self.now()):
            return False
        if self.gate.closed(restart=False) is not None:
            return False
        before = catalogue.active_version
        self._say(catalogue.swap())
        if catalogue.active_version != before:
            self.catalogue_changed(catalogue.active_version)
        return True

    async def catalogue_loop(self) -> None:
        """The agent's scheduled swap. It sleeps until the pending bundle's
        ``effective_from`` (at most :attr:`catalogue_idle` seconds, so a clock that jumps is
        noticed), every ``catalogue_tick`` seconds while a due swap waits for a citizen, and
        wakes at once when a bundle is installed: an idle kiosk does not tick."""
        while True:
            try:
                self.catalogue_step()
            except (UpdateError, OSError) as err:
                log.error("catalogue swap failed: %s", err)
            self._catalogue_wake.clear()
            sleeper = asyncio.ensure_future(self.sleep(self._catalogue_delay()))
            waker = asyncio.ensure_future(self._catalogue_wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (sleeper, waker):
                    task.cancel()
            if sleeper.done() and not sleeper.cancelled():
                error = sleeper.exception()  # an injected sleep's own failure
                if error is not None:
                    raise error

    def _catalogue_delay(self) -> float:
        pending = None if self.catalogue is None else self.catalogue.pending()
        if pending is None:
            return self.catalogue_idle
        left = (pending.effective_from - self.now()).total_seconds()
        return min(max(left, self.catalogue_tick), self.catalogue_idle)
