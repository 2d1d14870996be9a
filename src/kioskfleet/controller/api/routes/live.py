"""``GET /api/events``: the console's live stream (server-sent events)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from kioskfleet.controller.api.deps import READ, ControllerDep
from kioskfleet.controller.console.live import Change

router = APIRouter(prefix="/api", tags=["live"])

#: seconds between ``tick`` events when nothing changes (keeps proxies from closing the
#: stream; pages re-read what changes without a status change, e.g. paper running low)
TICK: Final = 5.0
#: after a change, more changes arriving within this many seconds go in the same event
COALESCE: Final = 0.25
#: at most one ``changes`` event a second per stream: each makes a page re-read its fragment
#: (the overview reads the whole station table), so a busy fleet costs a second's worth
MIN_GAP: Final = 1.0
#: what the browser waits before reconnecting a lost stream (milliseconds, SSE ``retry``)
RETRY_MS: Final = 2000

_DESCRIPTION = """A `text/event-stream` that never ends while the controller runs. Events:

- `hello` once at the start, data `{}`;
- `changes`: stations whose status changed (the writer's batches and its sweep of silent
  stations), data `{"changes": [{"station": id, "old": status, "new": status}, ...]}`, sent
  a quarter of a second after the change was committed, at most one event a second (changes
  that close together share one event);
- `tick` every 5 s without a change, data `{}`: re-read what changes without a status change
  (supplies, a new station).

A client that loses the stream reconnects after `retry` (2 s); it may have missed changes
meanwhile, so it re-reads what it shows."""


def _event(name: str, data: object) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@router.get(
    "/events",
    dependencies=[READ],
    response_class=StreamingResponse,
    description=_DESCRIPTION,
    responses={
        200: {
            "description": "server-sent events",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def events(request: Request, controller: ControllerDep) -> StreamingResponse:
    """Status changes as they are committed (the console's live updates)."""
    broadcaster = controller.live

    async def stream() -> AsyncIterator[str]:
        sub = broadcaster.subscribe()
        try:
            yield f"retry: {RETRY_MS}\n" + _event("hello", {})
            sent = 0.0
            loop = asyncio.get_running_loop()
            while not broadcaster.closed:
                try:
                    first = await asyncio.wait_for(sub.queue.get(), TICK)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield _event("tick", {})
                    continue
                if first is None:
                    return
                batch: list[Change] = [first]
                await asyncio.sleep(max(COALESCE, sent + MIN_GAP - loop.time()))
                while not sub.queue.empty():
                    more = sub.queue.get_nowait()
                    if more is None:
                        return
                    batch.append(more)
                yield _event(
                    "changes",
                    {
                        "changes": [
                            {"station": c.station, "old": c.old, "new": c.new} for c in batch
                        ]
                    },
                )
        finally:
            broadcaster.unsubscribe(sub)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
