"""The agent's health probe for a release on trial: agent up, MQTT connected, required devices
answering, catalogue loads (``docs/decisions.md``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from kioskfleet.agent.updater.catalogue import CatalogueStore
from kioskfleet.agent.updater.soak import HealthCheck, HealthReport
from kioskfleet.protocol.devices import DeviceStatus

#: device states that mean "does not answer" (a paper-out printer answers: not a failed update)
NOT_ANSWERING = frozenset({"offline", "no_device"})


def agent_health(
    *,
    connected: Callable[[], bool],
    statuses: Callable[[], Mapping[str, DeviceStatus]],
    required: Sequence[str],
    catalogue: CatalogueStore | None,
) -> HealthCheck:
    """A probe over the running agent's own view. The agent is up by construction: the
    probe runs in its loop, so a hung or dead agent never answers and the trial times out.

    Args:
        connected: the MQTT link's state.
        statuses: the coordinator's device statuses, by slot.
        required: slots that must answer (empty: every configured one).
        catalogue: the station's catalogues (None: none used); the active one, if any, must
            still load from disk.
    """

    def probe() -> HealthReport:
        problems: list[str] = []
        if not connected():
            problems.append("MQTT not connected")
        devices = statuses()
        for slot in required or tuple(devices):
            status = devices.get(slot)
            if status is None or status.state in NOT_ANSWERING:
                state = "missing" if status is None else status.state
                problems.append(f"device {slot} not answering ({state})")
        if catalogue is not None and catalogue.active is not None:
            problem = catalogue.probe()
            if problem is not None:
                problems.append(problem)
        return HealthReport(tuple(problems))

    return probe
