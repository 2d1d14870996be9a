"""The live stream's source: status changes the writer reported, fanned out to subscribers.

``publish`` runs on ingest's report thread (``Controller._on_changes``); each subscriber is an
``asyncio.Queue`` of one event loop (the HTTP server's), fed with ``call_soon_threadsafe``. A
subscriber that falls behind loses the oldest changes, never blocks the writer: the page
re-reads what it shows on every event, so a lost change costs nothing but the detail.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass
from typing import Final

#: changes a subscriber may have waiting before the oldest are dropped
QUEUE_MAX: Final = 1000


@dataclass(frozen=True)
class Change:
    """One station's status change: ``old`` → ``new``."""

    station: str
    old: str
    new: str


class _Subscriber:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Change | None] = asyncio.Queue(QUEUE_MAX)

    def put(self, item: Change | None) -> None:
        # on the subscriber's loop
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(item)


class Broadcaster:
    """Status changes to every open stream. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: set[_Subscriber] = set()
        self.closed = False
        #: changes published since start (for the API description's example and tests)
        self.published = 0

    def subscribe(self) -> _Subscriber:
        """A new subscriber on the running loop."""
        sub = _Subscriber(asyncio.get_running_loop())
        with self._lock:
            self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: _Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(sub)

    def publish(self, changes: list[Change]) -> None:
        """Hand ``changes`` to every subscriber (from any thread)."""
        with self._lock:
            subs = list(self._subscribers)
            self.published += len(changes)
        for sub in subs:
            for change in changes:
                try:
                    sub.loop.call_soon_threadsafe(sub.put, change)
                except RuntimeError:  # its loop is closed: the server stopped
                    self.unsubscribe(sub)
                    break

    def close(self) -> None:
        """End every stream for good (the controller stops): each subscriber gets ``None``."""
        with self._lock:
            self.closed = True
        self.drop()

    def drop(self) -> None:
        """End the streams open now; clients reconnect (as after a network failure)."""
        with self._lock:
            subs = list(self._subscribers)
        for sub in subs:
            with contextlib.suppress(RuntimeError):  # its loop is closed: the server stopped
                sub.loop.call_soon_threadsafe(sub.put, None)
