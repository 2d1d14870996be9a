"""Pure rules of the fleet picture: a station's status from what is known about it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from kioskfleet.protocol.devices import SERVING_STATES
from kioskfleet.protocol.stations import STATION_STATUSES, StationStatus

#: every station status, in the contract's order
STATUSES: Final = STATION_STATUSES
#: a connected station that sends no telemetry for this many intervals is silent
SILENT_AFTER_INTERVALS: Final = 3


def station_status(*, online: bool, silent: bool, degraded: bool) -> StationStatus:
    """CONTRACT §4: precedence offline > silent > degraded > online."""
    if not online:
        return "offline"
    if silent:
        return "silent"
    if degraded:
        return "degraded"
    return "online"


def is_degraded(devices: Mapping[str, Mapping[str, Any]], required: Iterable[str] | None) -> bool:
    """True when a device the station needs is in a non-serving state.

    ``required`` None means every device the station reports is needed. A required device
    that the station does not report at all counts as missing, hence degraded.
    """
    slots = list(devices) if required is None else list(required)
    for slot in slots:
        status = devices.get(slot)
        if status is None or status.get("state") not in SERVING_STATES:
            return True
    return False


def silent_deadline(now: float, interval: float) -> float:
    """When a station that just reported turns silent without further telemetry."""
    return now + SILENT_AFTER_INTERVALS * interval


def state_is_news(
    *, session: int, online: bool, birth_session: int | None, message_session: int, birth: bool
) -> bool:
    """Whether a state message changes a station now at (``session``, ``online``).

    CONTRACT §3: state is idempotent by (session, online). A message of an older session is
    old news (a stale will, a stale birth); a newer session always counts. Within the current
    session a birth counts once (``birth_session``: the session whose birth was applied; the
    broker hands the retained birth out again at every re-subscription), and a death is final
    (a birth arriving after its session's death does not revive the station).
    """
    if message_session != session:
        return message_session > session
    if not online:
        return False
    return not birth or birth_session != message_session
