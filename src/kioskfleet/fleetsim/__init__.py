"""The fleet simulator: N stations running the real agent code, only their devices simulated.

One event loop carries every station (paho in external-loop mode), one SQLite file holds every
outbox, so thousands of stations fit on one small machine.
"""

from kioskfleet.fleetsim.fleet import FleetResult, FleetSpec, run_fleet, wuxi_fleet

__all__ = ["FleetResult", "FleetSpec", "run_fleet", "wuxi_fleet"]
