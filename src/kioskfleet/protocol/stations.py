"""Station vocabulary (CONTRACT §3, §4): station ids, site types and station statuses."""

import re
from typing import Annotated, Final, Literal, get_args

from pydantic import Field

SiteType = Literal[
    "government_service_center",
    "township_service_center",
    "subway_station",
    # Bank of Jiangsu branches acting as government service agents
    "bank_agent_branch",
    "public_place",
]
SITE_TYPES: Final[tuple[SiteType, ...]] = get_args(SiteType)

#: a station's status; precedence offline > silent > degraded > online (CONTRACT §4)
StationStatus = Literal["online", "degraded", "silent", "offline"]
STATION_STATUSES: Final[tuple[StationStatus, ...]] = get_args(StationStatus)

STATION_ID_PATTERN: Final = r"^[a-z0-9][a-z0-9-]{2,63}$"
#: ids that cannot name a station: their topic level means something else
RESERVED_STATION_IDS: Final = frozenset({"controller"})
#: a station id as the wire carries it (the reserved ids are refused by topic parsing)
StationId = Annotated[str, Field(pattern=STATION_ID_PATTERN)]

_STATION_RE: Final = re.compile(STATION_ID_PATTERN)

#: a daily maintenance window, ``HH:MM-HH:MM`` in Asia/Shanghai time (CONTRACT §2; may cross
#: midnight): as the agent's configuration writes it and its birth carries it
MAINTENANCE_WINDOW_PATTERN: Final = (
    r"^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]):([0-5][0-9])$"
)
MaintenanceWindowText = Annotated[str, Field(pattern=MAINTENANCE_WINDOW_PATTERN)]


def is_valid_station_id(station: str) -> bool:
    """Tell whether ``station`` is a legal station id (``[a-z0-9][a-z0-9-]{2,63}``, not
    ``controller``)."""
    return station not in RESERVED_STATION_IDS and _STATION_RE.fullmatch(station) is not None
