"""The fleet simulator: N stations running the real agent code, only their devices simulated.

One event loop carries thousands of stations (paho in external-loop mode), a few SQLite files
(OUTBOX_SHARDS at most, chosen by station id) hold every outbox, so thousands of stations fit
in one small process; larger fleets spread over several (``fleetsim.processes``).
"""

from kioskfleet.fleetsim.fleet import FleetResult, FleetSpec, run_fleet, wuxi_fleet

__all__ = ["FleetResult", "FleetSpec", "run_fleet", "wuxi_fleet"]
