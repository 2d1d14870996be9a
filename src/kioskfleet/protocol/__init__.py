"""The wire contract shared by agent and controller: topics, messages, device vocabulary.

Pure data: nothing here opens a socket, a file or reads a clock.
"""

from kioskfleet.protocol.devices import (
    DEVICE_KINDS,
    DEVICE_STATES,
    DRIVERS,
    SERVING_STATES,
    DeviceInfo,
    DeviceStatus,
    is_serving,
)
from kioskfleet.protocol.errors import ProtocolError
from kioskfleet.protocol.messages import (
    MAX_PAYLOAD_BYTES,
    PROTOCOL_VERSION,
    Ack,
    Command,
    ControllerState,
    EventsMessage,
    Reply,
    StateMessage,
    TelemetryMessage,
    decode_agent_message,
    encode,
)
from kioskfleet.protocol.topics import (
    AGENT_KINDS,
    CONTROLLER_STATE_TOPIC,
    ParsedTopic,
    ack_topic,
    cmd_topic,
    is_valid_station_id,
    parse_topic,
    station_topic,
)

__all__ = [
    "AGENT_KINDS",
    "CONTROLLER_STATE_TOPIC",
    "DEVICE_KINDS",
    "DEVICE_STATES",
    "DRIVERS",
    "MAX_PAYLOAD_BYTES",
    "PROTOCOL_VERSION",
    "SERVING_STATES",
    "Ack",
    "Command",
    "ControllerState",
    "DeviceInfo",
    "DeviceStatus",
    "EventsMessage",
    "ParsedTopic",
    "ProtocolError",
    "Reply",
    "StateMessage",
    "TelemetryMessage",
    "ack_topic",
    "cmd_topic",
    "decode_agent_message",
    "encode",
    "is_serving",
    "is_valid_station_id",
    "parse_topic",
    "station_topic",
]
