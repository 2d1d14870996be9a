"""Rollout progress written by the ingest writer, in the transaction of the batch that
carries it (issue 11: "the writer updates each station's rollout progress in the same
transaction").

The writer hands every ``update`` event it stores (CONTRACT §3: ``{"type": "update",
"release", "rollout", "progress", "error"}``) to a :class:`ProgressBatch`; the batch keeps
the newest per (rollout, station) and writes them with one executemany UPDATE of
``rollout_station`` inside the batch's transaction. A batch without ``update`` events costs
nothing here (no statement). What a rollout should do about it (pause, the next wave) is
judged in the controller process (:mod:`.rollout_runner`), told which rollouts moved by the
batch's report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, bindparam, or_, update

from kioskfleet.controller.models import RolloutStationRow
from kioskfleet.controller.rollout_plan import PROGRESS
from kioskfleet.protocol.messages import Event

_RS = RolloutStationRow.__table__  # type: ignore[attr-defined]

#: the longest error kept for a station
_ERROR_LIMIT = 1000


def progress_of(event: Event) -> tuple[str, str, str | None] | None:
    """(rollout, progress, error) of an ``update`` event that belongs to a rollout; None for
    any other event, an update outside a rollout (``rollout: null``) or an unknown progress.

    A ``deferred`` event's ``reason`` is kept as its error (``deferred: …``): it is what a
    release manager wants to read next to the station."""
    if event.type != "update":
        return None
    extra = event.model_extra or {}
    rollout, progress = extra.get("rollout"), extra.get("progress")
    if not isinstance(rollout, str) or not rollout or progress not in PROGRESS:
        return None
    error = extra.get("error")
    if progress == "deferred" and error is None and extra.get("reason"):
        error = f"deferred: {extra['reason']}"
    return rollout, progress, None if error is None else str(error)[:_ERROR_LIMIT]


@dataclass
class ProgressBatch:
    """The rollout progress one ingest batch carries, newest per (rollout, station)."""

    #: (rollout, station) → the row's parameters
    newest: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def add(self, station: str, ts: float, event: Event) -> None:
        """Take ``event`` (sent by ``station`` at its time ``ts``) if it is rollout progress.
        Of two events for one station the later by station time wins; at the same time the
        one added later (later in the batch)."""
        found = progress_of(event)
        if found is None:
            return
        rollout, progress, error = found
        key = (rollout, station)
        seen = self.newest.get(key)
        if seen is None or seen["at"] <= ts:
            self.newest[key] = {
                "rid": rollout,
                "sid": station,
                "at": ts,
                "p": progress,
                "err": error,
            }

    def write(self, conn: Connection) -> frozenset[str]:
        """Update the stations' rows (one executemany; nothing when there is no progress);
        the rollouts concerned.

        An event older (by the station's clock) than what set the row is ignored: a backlog
        delivered late does not undo ``healthy``. A row still ``pending`` takes any event,
        since its time is the controller's planning time, not the station's. An event for a
        rollout or station the database does not know updates nothing."""
        if not self.newest:
            return frozenset()
        conn.execute(
            update(_RS)
            .where(
                _RS.c.rollout_id == bindparam("rid"),
                _RS.c.station == bindparam("sid"),
                or_(_RS.c.progress == "pending", _RS.c.updated_at <= bindparam("at")),
            )
            .values(progress=bindparam("p"), error=bindparam("err"), updated_at=bindparam("at")),
            list(self.newest.values()),
        )
        return frozenset(rollout for rollout, _ in self.newest)
