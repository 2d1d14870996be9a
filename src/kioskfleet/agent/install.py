"""The ``install`` command (CONTRACT §3–§4): a rollout asks the station to install a release.

The reply says only that the station took the job (``accepted``); the work goes on in the
background and speaks through ``update`` progress events (``downloading``, ``deferred``,
``installed``, ``healthy``, ``failed``, ``rolled_back``), which the updater
(:class:`~kioskfleet.agent.updater.runner.StationUpdates`) reports: a software install ends
in a restart, long after any reply could wait. The download is the TUF client's
(:class:`~kioskfleet.updates.client.UpdateClient`), run in a thread: the agent's loop never
blocks on it. Its errors become the updater's, split the same way: a refused target
(tampered, expired, wrong key, older than installed) is ``UpdateRejected``, a failed download
``UpdateInterrupted``; either is reported as ``failed`` with the reason.

Args of the command: ``release`` (the controller's id), ``kind`` (``software`` or
``catalogue``), ``target`` (the TUF target name: for a catalogue the one of this station's
site type), ``rollout`` (id or null), optional ``deadline`` (Unix seconds: a deferred update
still waiting then fails with reason ``deadline``), and ``version`` / ``counter`` for people
reading the command (the signed metadata is what counts).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kioskfleet.agent.commands import CommandError
from kioskfleet.agent.freshness import UpdateFreshness
from kioskfleet.agent.updater.errors import UpdateInterrupted, UpdateRejected
from kioskfleet.agent.updater.target import VerifiedTarget
from kioskfleet.updates import client as tuf_client
from kioskfleet.updates.targets import ReleaseTarget, TargetError

if TYPE_CHECKING:
    from kioskfleet.agent.updater.runner import StationUpdates

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpdateTools:
    """What an install needs: the station's updater and its TUF client."""

    updates: StationUpdates
    client: tuf_client.UpdateClient


#: the tools, built when first needed (the simulator makes a station's sandbox only then);
#: None: this agent has no updater or no update repository configured
ToolsProvider = Callable[[], UpdateTools | None]


@dataclass(frozen=True)
class InstallRequest:
    """An ``install`` command's args, checked."""

    release: str
    target: ReleaseTarget
    rollout: str | None
    deadline: datetime | None

    @classmethod
    def parse(cls, args: dict[str, Any], site_type: str) -> InstallRequest:
        """Check the args.

        Raises:
            CommandError: a missing or wrong arg, or another site type's catalogue.
        """
        release, kind, name = args.get("release"), args.get("kind"), args.get("target")
        rollout, deadline = args.get("rollout"), args.get("deadline")
        if not isinstance(release, str) or not release:
            raise CommandError("args.release is required: the release id, e.g. 'software-r3'")
        if kind not in ("software", "catalogue"):
            raise CommandError("args.kind must be 'software' or 'catalogue'")
        if not isinstance(name, str) or not name:
            raise CommandError("args.target is required: the signed target's name")
        try:
            target = ReleaseTarget.from_name(name)
        except TargetError as err:
            raise CommandError(f"args.target: {err}") from err
        if target.kind != kind:
            raise CommandError(f"args.target {name} is a {target.kind} target, not {kind}")
        if target.kind == "catalogue" and target.site_type != site_type:
            raise CommandError(
                f"args.target {name} is the catalogue of {target.site_type}; "
                f"this station is a {site_type}"
            )
        if rollout is not None and not isinstance(rollout, str):
            raise CommandError("args.rollout must be a rollout id or null")
        when = None
        if deadline is not None:
            if isinstance(deadline, bool) or not isinstance(deadline, int | float):
                raise CommandError("args.deadline must be Unix seconds or null")
            when = datetime.fromtimestamp(deadline, UTC)
        return cls(release, target, rollout, when)


class Installer:
    """The ``install`` handler of one agent.

    Args:
        station: the station's id (for the log).
        site_type: the station's site type (its catalogue).
        tools: the updater and TUF client, or None where this agent has none.
        freshness: told how each TUF cycle went (expired metadata, the clock's skew).
    """

    def __init__(
        self,
        station: str,
        site_type: str,
        tools: ToolsProvider,
        freshness: UpdateFreshness | None = None,
    ) -> None:
        self.station = station
        self.site_type = site_type
        self.tools = tools
        self.freshness = freshness
        #: installs under way (a reference, so the loop does not drop them)
        self.running: set[asyncio.Task[str]] = set()

    async def install(self, args: dict[str, Any]) -> dict[str, Any]:
        """Check the args, start the install in the background, answer ``accepted``."""
        request = InstallRequest.parse(args, self.site_type)
        tools = self.tools()
        if tools is None:
            raise CommandError(
                "this agent has no update repository configured (update_root, update_url)"
            )
        task = asyncio.get_running_loop().create_task(self.run(tools, request))
        self.running.add(task)
        task.add_done_callback(self.running.discard)
        return {"accepted": True, "release": request.release, "target": request.target.name}

    async def run(self, tools: UpdateTools, request: InstallRequest) -> str:
        """Download through TUF and apply; the updater's outcome."""
        target = request.target

        async def fetch() -> VerifiedTarget:
            installed = 0
            if target.kind == "software":
                current = tools.updates.software.state().installed
                installed = current.counter if current is not None else 0
            try:
                got = await asyncio.to_thread(
                    tools.client.fetch,
                    target.name,
                    kind=target.kind,
                    site_type=target.site_type,
                    installed_counter=installed,
                )
            except tuf_client.UpdateRejected as err:
                self._observe(tools, err)
                raise UpdateRejected(str(err)) from err
            except tuf_client.UpdateError as err:
                self._observe(tools, err)
                raise UpdateInterrupted(str(err)) from err
            self._observe(tools, None)
            return VerifiedTarget(
                path=got.path,
                kind=got.release.kind,
                version=got.release.version,
                counter=got.release.release_counter,
                release=request.release,
                rollout=request.rollout,
                custom=got.release.custom(),
            )

        if target.kind == "software":
            outcome = await tools.updates.apply_software(
                fetch, release=request.release, rollout=request.rollout, deadline=request.deadline
            )
        else:
            outcome = await tools.updates.apply_catalogue(
                fetch, release=request.release, rollout=request.rollout
            )
        log.info("%s: install of %s: %s", self.station, target.name, outcome)
        return outcome

    def _observe(self, tools: UpdateTools, error: BaseException | None) -> None:
        if self.freshness is not None:
            self.freshness.observe(tools.client, error)
