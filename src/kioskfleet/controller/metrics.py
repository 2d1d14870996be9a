"""Prometheus instruments of one controller (its own registry: tests run several)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kioskfleet.controller.alerts.config import SEVERITIES
from kioskfleet.controller.alerts.model import ALERT_STATES
from kioskfleet.controller.fleet import STATUSES

#: the states an alert is counted in while unresolved
UNRESOLVED_STATES = tuple(state for state in ALERT_STATES if state != "resolved")


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
        self._alerts_watched = False

    def watch_alerts(
        self, counts: Callable[[], tuple[dict[tuple[str, str, str], int], set[str]]]
    ) -> None:
        """Export unresolved alerts by district, severity and state, read when scraped:
        ``counts`` gives {(district, severity, state): n} and the districts known (each gets
        a zero for every severity and unresolved state). Once per registry: a second call
        keeps the first source."""
        if self._alerts_watched:
            return
        self._alerts_watched = True
        self.registry.register(_AlertCollector(counts))

    def watch_fleet(self, counts: Callable[[], dict[tuple[str, str], int]]) -> None:
        """Export station counts by district and status, read when scraped."""
        self.registry.register(_FleetCollector(counts))


class _FleetCollector(Collector):
    def __init__(self, counts: Callable[[], dict[tuple[str, str], int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "kioskfleet_stations", "Stations by district and status", labels=["district", "status"]
        )
        counts = self._counts()
        districts = sorted({d for d, _ in counts})
        for district in districts:
            for status in STATUSES:
                family.add_metric([district, status], counts.get((district, status), 0))
        yield family


class _AlertCollector(Collector):
    def __init__(
        self, counts: Callable[[], tuple[dict[tuple[str, str, str], int], set[str]]]
    ) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "kioskfleet_alerts",
            "Unresolved alerts by district, severity and state (open, acknowledged)",
            labels=["district", "severity", "state"],
        )
        counts, known = self._counts()
        for district in sorted(known | {d for d, _, _ in counts}):
            for severity in SEVERITIES:
                for state in UNRESOLVED_STATES:
                    family.add_metric(
                        [district, severity, state], counts.get((district, severity, state), 0)
                    )
        yield family
