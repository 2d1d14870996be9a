"""Real host metrics from psutil, keyed as in
:data:`kioskfleet.protocol.metrics.SAMPLED_METRICS`."""

from __future__ import annotations

import math
import os
import time

import psutil

from kioskfleet.protocol.metrics import SAMPLED_METRIC_KEYS


class HostSampler:
    """Samples the host at most every ``min_interval`` seconds (the fleet simulator shares one).

    Args:
        disk_path: the disk whose use is reported (the agent's data folder).
    """

    def __init__(self, disk_path: str = "/", min_interval: float = 1.0) -> None:
        self.disk_path = disk_path
        self.min_interval = min_interval
        self._process = psutil.Process(os.getpid())
        self._process.cpu_percent(None)
        psutil.cpu_percent(None)
        self._boot = psutil.boot_time()
        self._last: dict[str, float | None] = {}
        self._at = -1e9

    def sample(self) -> dict[str, float | None]:
        """Current host metrics; keys are exactly those of ``SAMPLED_METRICS``."""
        now = time.monotonic()
        if now - self._at < self.min_interval and self._last:
            return self._last
        values: dict[str, float | None] = {
            "cpu_percent": psutil.cpu_percent(None),
            "memory_percent": psutil.virtual_memory().percent,
            "disk_percent": psutil.disk_usage(self.disk_path).percent,
            "temperature_c": _hottest(),
            "uptime_s": round(time.time() - self._boot, 1),
            "load_1m": os.getloadavg()[0],
            "agent_rss_mb": round(self._process.memory_info().rss / 2**20, 1),
        }
        assert values.keys() == SAMPLED_METRIC_KEYS
        # a sensor driver may report NaN; the wire (JSON) and the controller do not take it
        values = {k: v if v is None or math.isfinite(v) else None for k, v in values.items()}
        self._last, self._at = values, now
        return values


def _hottest() -> float | None:
    reader = getattr(psutil, "sensors_temperatures", None)
    if reader is None:
        return None
    try:
        sensors = reader()
    except OSError:
        return None
    readings = [t.current for entries in sensors.values() for t in entries if t.current]
    return max(readings) if readings else None
