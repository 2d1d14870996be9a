"""The host metrics an agent reports in ``telemetry.host``, described once (STYLE 8).

The agent's sampler (``agent/host.py``) reports exactly these keys and checks that it does.
The controller stores ``host`` as it arrives (the wire model takes any numeric keys, so the
table may grow) and folds it into hourly aggregates key by key, without reading this table: it
exports no Prometheus series for host metrics, and there are no Grafana panels. Whatever
exports or charts them should be generated from this table.
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


#: what the agent's sampler (psutil) reports in every telemetry message
SAMPLED_METRICS: Final[tuple[MetricDescription, ...]] = (
    MetricDescription("cpu_percent", "percent", "gauge", "CPU use of the kiosk computer"),
    MetricDescription("memory_percent", "percent", "gauge", "memory in use"),
    MetricDescription("disk_percent", "percent", "gauge", "use of the agent's data disk"),
    MetricDescription("temperature_c", "celsius", "gauge", "hottest sensor, where available"),
    MetricDescription("uptime_s", "seconds", "gauge", "time since the kiosk booted"),
    MetricDescription("load_1m", "", "gauge", "one-minute load average"),
    MetricDescription("agent_rss_mb", "megabytes", "gauge", "resident memory of the agent"),
)
SAMPLED_METRIC_KEYS: Final[frozenset[str]] = frozenset(m.key for m in SAMPLED_METRICS)
#: what the agent learns from its update repository (``agent/freshness.py``), reported once
#: known (a kiosk without an update repository never reports them)
UPDATE_METRICS: Final[tuple[MetricDescription, ...]] = (
    MetricDescription(
        "clock_skew_s",
        "seconds",
        "gauge",
        "how far the kiosk's clock is ahead of the controller's (negative: behind), from the "
        "Date of the update repository's last answer",
    ),
    MetricDescription(
        "update_metadata_expired",
        "",
        "gauge",
        "1 while the last refresh of the update metadata found it expired, else 0",
    ),
)
HOST_METRICS: Final[tuple[MetricDescription, ...]] = SAMPLED_METRICS + UPDATE_METRICS
HOST_METRIC_KEYS: Final[frozenset[str]] = frozenset(m.key for m in HOST_METRICS)
