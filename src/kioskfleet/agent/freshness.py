"""Whether the kiosk can still trust its update repository: expired metadata and a clock far
from the controller's, reported as host metrics so the controller raises an alert (issue 11:
"Expired metadata, or a kiosk clock more than 5 minutes off the controller's, is reported and
becomes an alert").

Both are learnt from the TUF client's conversations with the controller: every install, and
a refresh of the top-level metadata every ``check_interval`` (the kiosk would otherwise only
find out at the next rollout). They travel in telemetry's ``host`` as ``clock_skew_s`` and
``update_metadata_expired`` (``kioskfleet.protocol.metrics``), where the controller's alert
rules read them like any host metric: an alert opens while the station reports a problem
and clears when its next report no longer does. Host metrics, not events: an alert is a
function of the station's picture (decision 27), and a picture needs the current value, not a
history of single events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from kioskfleet.updates.client import (
    CLOCK_SKEW_LIMIT,
    MetadataExpired,
    UpdateClient,
    UpdateError,
)

log = logging.getLogger(__name__)


class UpdateFreshness:
    """What the station's last conversations with its update repository said."""

    def __init__(self) -> None:
        #: seconds the kiosk's clock is ahead of the controller's (negative: behind), at the
        #: last answer with a ``Date``; None before one
        self.clock_skew: float | None = None
        #: whether the last metadata refresh failed because trusted metadata had expired;
        #: None before a refresh said either way
        self.expired: bool | None = None

    def observe(self, client: UpdateClient, error: BaseException | None) -> None:
        """Take what one TUF cycle of ``client`` said: it succeeded (``error`` None) or failed
        with ``error``. A download that failed for other reasons (the repository away, a
        target refused) says nothing about expiry, and leaves it as it was."""
        skew = client.clock_skew()
        if skew is not None:
            if abs(skew) > CLOCK_SKEW_LIMIT and (
                self.clock_skew is None or abs(self.clock_skew) <= CLOCK_SKEW_LIMIT
            ):
                log.warning(
                    "this kiosk's clock is %.0f s %s the controller's",
                    abs(skew),
                    "ahead of" if skew > 0 else "behind",
                )
            self.clock_skew = skew
        if error is None:
            self.expired = False
        elif isinstance(error, MetadataExpired):
            if not self.expired:
                log.warning("update metadata expired: %s", error)
            self.expired = True

    def host_metrics(self) -> dict[str, float]:
        """What to add to telemetry's ``host``: only what is known."""
        metrics: dict[str, float] = {}
        if self.clock_skew is not None:
            metrics["clock_skew_s"] = round(self.clock_skew, 1)
        if self.expired is not None:
            metrics["update_metadata_expired"] = 1.0 if self.expired else 0.0
        return metrics

    async def check(self, client: UpdateClient) -> None:
        """Refresh the top-level metadata (in a thread: the agent's loop never blocks) and
        observe the outcome."""
        try:
            await asyncio.to_thread(client.refresh)
        except UpdateError as err:
            self.observe(client, err)
        else:
            self.observe(client, None)

    async def run(self, client: Callable[[], UpdateClient | None], interval: float) -> None:
        """Check at once, then every ``interval`` seconds (cancel to stop). ``client`` builds
        the TUF client (None: no update repository configured, nothing to check)."""
        while True:
            try:
                current = client()
                if current is not None:
                    await self.check(current)
            except Exception as err:  # noqa: BLE001 - a local fault (disk): try again later
                log.error("checking the update repository failed: %s", err)
            await asyncio.sleep(interval)
