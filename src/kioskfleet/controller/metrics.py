"""Prometheus instruments of one controller (its own registry: tests run several).

The counters and the histogram are fed by ingest; the fleet's families (stations, devices,
supplies, alerts, availability, one status and one last-seen series per station) are read
from the database at each scrape by ``controller.fleetmetrics``. docs/metrics.md lists them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final, get_args

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from kioskfleet.controller.fleetmetrics import FleetSnapshot, fleet_exposition
from kioskfleet.protocol.errors import RejectReason
from kioskfleet.protocol.topics import AGENT_KINDS

log = logging.getLogger(__name__)

#: every reason a message can be rejected for (``kioskfleet_rejected_messages_total``)
REJECT_REASONS: Final[tuple[str, ...]] = get_args(RejectReason)


class Metrics:
    """The controller's metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.ingested = Counter(
            "kioskfleet_ingested_messages",
            "Messages stored, by topic kind",
            ["kind"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "kioskfleet_rejected_messages",
            "Messages rejected, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.duplicates = Counter(
            "kioskfleet_duplicate_messages",
            "Messages received again and not stored twice",
            registry=self.registry,
        )
        self.resend_requests = Counter(
            "kioskfleet_resend_requests",
            "Ranges of missing messages asked for again (cmd/resend)",
            registry=self.registry,
        )
        self.db_errors = Counter(
            "kioskfleet_db_errors", "Failed batch commits (retried)", registry=self.registry
        )
        self.batch_seconds = Histogram(
            "kioskfleet_ingest_batch_seconds",
            "Time to validate, store and acknowledge one batch",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )

        self.fleet_read_errors = Counter(
            "kioskfleet_fleet_metrics_read_errors",
            "Scrapes whose fleet families could not be read from the database",
            registry=self.registry,
        )
        # every label value we know of is exported from the start (zeros), so rate() and the
        # dashboards have a series before the first message of that kind or reason
        for kind in AGENT_KINDS:
            self.ingested.labels(kind)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)

        self._read_fleet: Callable[[], FleetSnapshot] | None = None

    def watch_fleet(self, read: Callable[[], FleetSnapshot]) -> None:
        """Export the fleet's families (``controller.fleetmetrics``), read by ``read`` at each
        scrape."""
        self._read_fleet = read

    def exposition(self) -> bytes:
        """``GET /metrics``: the registry's instruments and the fleet's families. A failed
        read of the fleet exports no fleet family for that scrape (not zeros, which would
        look like an empty fleet) and counts in ``kioskfleet_fleet_metrics_read_errors``."""
        fleet = b""
        if self._read_fleet is not None:
            try:
                fleet = fleet_exposition(self._read_fleet())
            except SQLAlchemyError as err:
                self.fleet_read_errors.inc()
                log.error("fleet metrics: cannot read the database: %s", err)
        return generate_latest(self.registry) + fleet
