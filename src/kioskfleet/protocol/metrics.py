"""Telemetry described once (STYLE 8): the host metrics an agent reports.

The agent fills the payload from this table, the controller turns it into Prometheus series
and the Grafana panels are generated from it, so the three cannot drift apart.
"""

from dataclasses import dataclass
from typing import Final, Literal


@dataclass(frozen=True)
class MetricDescription:
    """One host metric: its key in ``telemetry.host``, unit and meaning."""

    key: str
    unit: str
    kind: Literal["gauge", "counter"]
    help: str


HOST_METRICS: Final[tuple[MetricDescription, ...]] = (
    MetricDescription("cpu_percent", "percent", "gauge", "CPU use of the kiosk computer"),
    MetricDescription("memory_percent", "percent", "gauge", "memory in use"),
    MetricDescription("disk_percent", "percent", "gauge", "use of the agent's data disk"),
    MetricDescription("temperature_c", "celsius", "gauge", "hottest sensor, where available"),
    MetricDescription("uptime_s", "seconds", "gauge", "time since the kiosk booted"),
    MetricDescription("load_1m", "", "gauge", "one-minute load average"),
    MetricDescription("agent_rss_mb", "megabytes", "gauge", "resident memory of the agent"),
)
HOST_METRIC_KEYS: Final[frozenset[str]] = frozenset(m.key for m in HOST_METRICS)
