"""The MQTT topic tree (CONTRACT §3): one topic level per station, so ACLs can use %u/%c."""

from typing import Literal, NamedTuple

from kioskfleet.protocol.errors import ProtocolError
from kioskfleet.protocol.stations import is_valid_station_id

ROOT = "fleet/v1"
CONTROLLER_STATE_TOPIC = f"{ROOT}/controller/state"

AgentKind = Literal["state", "telemetry", "events", "reply"]
#: what an agent publishes; the controller subscribes to exactly these
AGENT_KINDS: tuple[AgentKind, ...] = ("state", "telemetry", "events", "reply")

__all__ = [
    "AGENT_KINDS",
    "CONTROLLER_STATE_TOPIC",
    "ROOT",
    "AgentKind",
    "ParsedTopic",
    "ack_topic",
    "cmd_topic",
    "is_valid_station_id",
    "parse_topic",
    "station_topic",
    "subscriptions_for_controller",
]


def station_topic(station: str, kind: AgentKind) -> str:
    """Topic on which ``station`` publishes messages of ``kind``."""
    return f"{ROOT}/{station}/{kind}"


def cmd_topic(station: str, name: str) -> str:
    """Topic of command ``name`` sent to ``station``."""
    return f"{ROOT}/{station}/cmd/{name}"


def ack_topic(station: str) -> str:
    """Topic on which the controller confirms what it stored for ``station``."""
    return f"{ROOT}/{station}/ack"


def subscriptions_for_controller() -> list[str]:
    """Topic filters the controller subscribes to."""
    return [f"{ROOT}/+/{kind}" for kind in AGENT_KINDS]


class ParsedTopic(NamedTuple):
    """A topic taken apart: station, kind and (for commands) the command name."""

    station: str
    kind: str
    name: str | None = None


def parse_topic(topic: str) -> ParsedTopic:
    """Split a ``fleet/v1/...`` topic.

    Raises:
        ProtocolError: the topic is outside the tree or names an illegal station.
    """
    parts = topic.split("/")
    if len(parts) < 4 or parts[0] != "fleet" or parts[1] != "v1":
        raise ProtocolError("topic", f"topic {topic!r} is not in the fleet/v1 tree")
    station, kind = parts[2], parts[3]
    if not is_valid_station_id(station):
        raise ProtocolError("station_id", f"illegal station id {station[:80]!r} in topic")
    if kind == "cmd" and len(parts) == 5:
        return ParsedTopic(station, kind, parts[4])
    if len(parts) != 4:
        raise ProtocolError("topic", f"topic {topic[:200]!r} has too many levels")
    return ParsedTopic(station, kind)
