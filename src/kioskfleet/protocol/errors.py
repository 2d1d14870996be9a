"""Errors of the wire contract."""

from typing import Literal

RejectReason = Literal[
    "too_large", "not_json", "schema", "station_mismatch", "version", "topic", "station_id"
]


class ProtocolError(ValueError):
    """A payload or topic that breaks the contract (CONTRACT §3).

    ``reason`` is a short stable code, used as a metrics label and in logs; the message says
    what exactly was wrong. Example scenarios: a payload that is not JSON, a 70 KiB payload,
    ``seq`` given as a string, ``"v": 2`` from a newer agent, a station id that does not match
    the topic.
    """

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason: RejectReason = reason
