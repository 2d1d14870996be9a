"""Bounds that keep a misbehaving caller from hurting the agent."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceLimits:
    """Request, connection and session bounds of the local device service.

    The connection-level ones are uvicorn's own (``max_connections`` is its
    ``limit_concurrency``, ``keepalive_timeout`` its ``timeout_keep_alive``, ``max_head_bytes``
    bounds h11's buffer); the rest are enforced by the service's middleware and protocol.
    """

    #: request body, bytes (413 above; a chunked body is counted as it arrives)
    max_body: int = 64 * 1024
    #: request line plus headers, bytes (a longer head is refused: 400, 414 or 431)
    max_head_bytes: int = 8 * 1024
    #: open connections; beyond, uvicorn answers 503
    max_connections: int = 16
    #: seconds for a request's head (from the connection or its first byte) and for its body
    request_timeout: float = 10.0
    #: seconds an idle keep-alive connection stays open
    keepalive_timeout: int = 30
    #: a cash-in session nobody looked at for this long is abandoned: the escrowed note goes
    #: back, acceptors are disabled, what was credited is reported (a crashed application
    #: must not leave the acceptors taking money, nor block updates forever)
    session_idle_timeout: float = 300.0
    #: how often the bank-card reader is read while it waits for a card or holds one
    card_watch_interval: float = 0.5
