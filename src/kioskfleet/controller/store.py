"""The ingest writer: turns a batch of validated messages into one database transaction.

Single writer per controller: it keeps the stations' current picture and the seq ledgers in
memory (loaded at start), so deduplication costs no query, and writes what changed.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter
from pydantic_core import to_json
from sqlalchemy import Connection, Engine, insert, select, tuple_, update

from kioskfleet.controller.alerting import Alerting
from kioskfleet.controller.alerts.config import AlertsSettings
from kioskfleet.controller.db import BulkRows, RawJSON
from kioskfleet.controller.fleet import (
    is_degraded,
    silent_deadline,
    state_is_news,
    station_status,
)
from kioskfleet.controller.ledger import SeqLedger
from kioskfleet.controller.models import (
    CommandReply,
    Counter,
    EventBatch,
    Station,
    StationHistory,
    StationSession,
    Telemetry,
)
from kioskfleet.controller.notify.config import ReceiversSettings
from kioskfleet.controller.rollout_progress import ProgressBatch
from kioskfleet.protocol.devices import DeviceStatus
from kioskfleet.protocol.messages import (
    AgentMessage,
    Event,
    EventsMessage,
    Reply,
    StateMessage,
    TelemetryMessage,
    TelemetryRecord,
)

log = logging.getLogger(__name__)

#: what the store takes: decoded messages; telemetry as the writer decodes it (plain dicts,
#: :func:`~kioskfleet.protocol.messages.decode_telemetry_record`) or as models
StoredMessage = AgentMessage | TelemetryRecord

_STATION = Station.__table__  # type: ignore[attr-defined]
_HISTORY = StationHistory.__table__  # type: ignore[attr-defined]
_SESSION = StationSession.__table__  # type: ignore[attr-defined]
_COUNTER = Counter.__table__  # type: ignore[attr-defined]
_DEVICES: TypeAdapter[dict[str, DeviceStatus]] = TypeAdapter(dict[str, DeviceStatus])
_EVENTS: TypeAdapter[list[Event]] = TypeAdapter(list[Event])
_DESCRIPTION = (
    "district",
    "site",
    "site_type",
    "profile",
    "agent_version",
    "catalogue_version",
    "maintenance_window",
)
#: the station columns every telemetry message moves
_LIVENESS = ("last_seen", "last_telemetry_at", "silent_deadline")
_TELEMETRY_COLUMNS = [
    "station",
    "session",
    "seq",
    "ts",
    "received_at",
    "host",
    "devices",
    "counters",
]
_TABLES = {
    "telemetry": Telemetry.__table__,  # type: ignore[attr-defined]
    "events": EventBatch.__table__,  # type: ignore[attr-defined]
    "reply": CommandReply.__table__,  # type: ignore[attr-defined]
}


@dataclass
class StationState:
    """The writer's copy of one station row."""

    id: str
    status: str = "online"
    online: bool = True
    degraded: bool = False
    session: int = 0
    #: the session whose birth was applied (a birth counts once per session)
    birth_session: int | None = None
    telemetry_interval: float = 10.0
    last_seen: float | None = None
    last_telemetry_at: float | None = None
    silent_deadline: float | None = None
    status_since: float = 0.0
    registered_at: float = 0.0
    devices: dict[str, Any] = field(default_factory=dict)
    required_devices: list[str] | None = None
    description: dict[str, Any] = field(default_factory=dict)
    #: the technician's flag (decision 25), from the birth and ``service_state`` events
    in_service: bool = True
    #: ``ts`` of the birth whose description is applied: a birth of the same session published
    #: again later (new versions) updates the versions; an older copy does not. Memory only.
    birth_ts: float | None = field(default=None, compare=False)
    #: (session, seq) of the ``service_state`` event that set ``in_service``: within a session
    #: an older event (a resent gap) or the session's birth (it predates every event) moves
    #: nothing after it. Memory only: after a restart the next event or birth counts.
    service_mark: tuple[int, int] | None = field(default=None, compare=False)
    #: (the devices dict, its JSON text, the telemetry devices text it was made from): spares
    #: decoding and encoding an unchanged picture every batch
    devices_json: tuple[dict[str, Any], RawJSON, str] | None = field(default=None, compare=False)
    #: the row this state was last written as (None: not known, e.g. read from the database):
    #: a batch that moved only its liveness columns writes those alone
    written: dict[str, Any] | None = field(default=None, compare=False)

    def set_devices_json(self, text: str) -> None:
        """Take the devices picture from telemetry's devices (JSON text, as sent: lean); a
        device whose ``info`` was left out keeps the one the picture has (CONTRACT §3: absent
        means unchanged). Decoded only if it changed since this text last set it: a birth or
        an event may have set another picture since."""
        cached = self.devices_json
        if cached is not None and cached[0] is self.devices and cached[2] == text:
            return
        reported: dict[str, Any] = json.loads(text)
        merged = False
        for slot, status in reported.items():
            if "info" not in status:
                info = self.devices.get(slot, {}).get("info")
                if info is not None:
                    status["info"] = info
                    merged = True
        self.devices = reported
        picture = to_json(reported).decode() if merged else text
        self.devices_json = (reported, RawJSON(picture), text)

    def copy(self) -> StationState:
        """A shallow copy (what a failed batch puts back): its fields' values shared, as
        ``copy.copy`` would, without its generic pickling protocol (a batch copies every
        station it touches)."""
        clone = object.__new__(StationState)
        clone.__dict__.update(self.__dict__)
        return clone

    def row(self) -> dict[str, Any]:
        """Column values for the station table (always every column, so rows of many stations
        go into one bulk update)."""
        return {
            **dict.fromkeys(_DESCRIPTION),
            **self.description,
            "id": self.id,
            "status": self.status,
            "online": self.online,
            "degraded": self.degraded,
            "session": self.session,
            "birth_session": self.birth_session,
            "telemetry_interval": self.telemetry_interval,
            "last_seen": self.last_seen,
            "last_telemetry_at": self.last_telemetry_at,
            "silent_deadline": self.silent_deadline,
            "status_since": self.status_since,
            "registered_at": self.registered_at,
            "devices": (
                self.devices_json[1]
                if self.devices_json is not None and self.devices_json[0] is self.devices
                else self.devices
            ),
            "required_devices": self.required_devices,
            "in_service": self.in_service,
        }


@dataclass
class BatchOutcome:
    """What a committed batch asks the MQTT side to do."""

    #: (station, session) → watermark to confirm
    acks: dict[tuple[str, int], int] = field(default_factory=dict)
    #: stations to ask for a birth
    rebirth: set[str] = field(default_factory=set)
    stored: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    #: seqs stations declared dropped (their outbox bound) or lost (their local state)
    declared: dict[str, int] = field(default_factory=dict)
    #: status changes (station, old, new) for metrics and, later, alerts
    changes: list[tuple[str, str, str]] = field(default_factory=list)
    #: alert transitions and escalations decided (and written) with the batch
    alerts: int = 0
    #: rollouts whose stations' progress the batch wrote (judged by the controller next)
    rollouts: frozenset[str] = frozenset()


class FleetStore:
    """The single writer of fleet state and messages.

    Args:
        engine: the migrated database.
        alerts: the ``[alerts]`` rules (defaults when None).
        receivers: where notifications go (rows stored with the alert changes; none when None).
        offline_alert_after: seconds a station stays offline or silent before its alert.
        started: the time it starts at (now; tests inject it): what fell due while the
            controller was away is decided at the first sweep.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        alerts: AlertsSettings | None = None,
        receivers: ReceiversSettings | None = None,
        offline_alert_after: float = 120.0,
        started: float | None = None,
    ) -> None:
        self.engine = engine
        self.stations: dict[str, StationState] = {}
        self._ledgers: dict[tuple[str, int], SeqLedger] = {}
        #: ledgers that already have a row (update, not insert)
        self._persisted: set[tuple[str, int]] = set()
        #: (station, session) with seqs missing below the highest stored → since when
        self.gappy: dict[tuple[str, int], float] = {}
        self._touched_at: dict[tuple[str, int], float] = {}
        self._evicted_at = 0.0
        self._bulk = BulkRows(engine)
        #: what a failed transaction touched: read back from the database before the next
        #: batch (decision 15)
        self._stale_stations: set[str] = set()
        self._stale_ledgers: set[tuple[str, int]] = set()
        #: station → (its last telemetry's devices, their JSON text)
        self._sent_devices: dict[str, tuple[dict[str, Any], str]] = {}
        self._load()
        #: alerts decided after each batch and in the sweep (decision 27)
        self.alerting = Alerting(
            self.stations,
            alerts or AlertsSettings(),
            receivers or ReceiversSettings(),
            offline_alert_after,
        )
        self.alerting.load(engine, time.time() if started is None else started)

    def _load(self) -> None:
        with self.engine.connect() as conn:
            for row in conn.execute(select(_STATION)).mappings():
                self.stations[row["id"]] = _state_of(row)

    def _reload_stale(self, now: float) -> None:
        """After a failed transaction the database is the truth, not memory: it may hold the
        batch after all (the COMMIT went through, its answer was lost). Read back what that
        batch touched — one query for stations, one per 500 ledgers — so its retry finds what
        was stored (duplicates, acked) and stores what was not."""
        if not self._stale_stations and not self._stale_ledgers:
            self.alerting.reload_stale(self.engine, now)
            return
        stations = sorted(self._stale_stations)
        keys = set(self._stale_ledgers)
        found: dict[str, StationState] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(stations), 500):
                chunk = stations[start : start + 500]
                query = select(_STATION).where(_STATION.c.id.in_(chunk))
                for row in conn.execute(query).mappings():
                    found[row["id"]] = _state_of(row)
        # only once the database answered: a retry while it is away reads back again
        for station in stations:
            if station in found:
                self.stations[station] = found[station]
            else:
                self.stations.pop(station, None)
        for key in keys:
            self._ledgers.pop(key, None)
            self._persisted.discard(key)
        self._load_ledgers(keys)
        for key in keys:
            if self._ledgers[key].above:
                self.gappy.setdefault(key, self._touched_at.get(key, 0.0))
            else:
                self.gappy.pop(key, None)
        self._stale_stations.clear()
        self._stale_ledgers.clear()
        self.alerting.reload_stale(self.engine, now)

    # -- the batch -----------------------------------------------------------------------------
    def apply(
        self, messages: list[tuple[str, StoredMessage]], now: float, rejected: int = 0
    ) -> BatchOutcome:
        """Store ``messages`` ((kind, message) in arrival order) in one transaction.

        Returns what to confirm and whom to ask for a birth once the commit is done. When the
        transaction fails, the in-memory picture and ledgers are put back as they were, and what
        the batch touched is read back from the database before the next batch: the COMMIT may
        have gone through (its answer lost), so the same batch applied again is found stored
        (duplicates) if it was, and stored once if it was not.
        """
        self._reload_stale(now)
        undo = _Undo()
        try:
            return self._apply(messages, now, rejected, undo)
        except BaseException:
            undo.restore(self)
            self.alerting.rollback(undo.stations)
            self._stale_stations.update(undo.stations)
            self._stale_ledgers.update(undo.ledgers)
            raise

    def _apply(
        self, messages: list[tuple[str, StoredMessage]], now: float, rejected: int, undo: _Undo
    ) -> BatchOutcome:
        out = BatchOutcome()
        touched: dict[str, StationState] = {}
        new_stations: set[str] = set()
        history: list[dict[str, Any]] = []
        rows: dict[str, list[dict[str, Any]]] = {"events": [], "reply": []}
        telemetry_rows: list[tuple[Any, ...]] = []
        ledgers_touched: set[tuple[str, int]] = set()
        #: ``update`` events, written to their rollouts in this batch's transaction
        progress = ProgressBatch()

        def ledger_for(station: str, session: int) -> SeqLedger:
            key = (station, session)
            ledger = self._ledger(station, session)
            if key not in ledgers_touched:
                ledgers_touched.add(key)
                undo.ledgers[key] = (ledger.watermark, set(ledger.above))
            return ledger

        def station_for(station_id: str, *, online: bool) -> StationState:
            state = self.stations.get(station_id)
            if state is not None and station_id not in touched:
                undo.stations[station_id] = state.copy()
            if state is None:
                undo.stations[station_id] = None
                state = StationState(
                    id=station_id,
                    status="online" if online else "offline",
                    online=online,
                    registered_at=now,
                    status_since=now,
                    silent_deadline=silent_deadline(now, 10.0),
                )
                self.stations[station_id] = state
                new_stations.add(station_id)
                history.append(_hist(station_id, state.status, "registered", 0, now))
                if online:
                    out.rebirth.add(station_id)
            touched[station_id] = state
            return state

        #: the newest host metrics of each station's current session in the batch
        latest_hosts: dict[str, dict[str, Any]] = {}
        #: the newest devices (JSON text) a station's telemetry reported, turned into the
        #: station's picture once per batch (not once per message)
        latest_devices: dict[str, str] = {}

        def settle_devices(station_id: str) -> None:
            devices = latest_devices.pop(station_id, None)
            if devices is not None:
                touched[station_id].set_devices_json(devices)

        sequenced = [m for _, m in messages if not isinstance(m, StateMessage)]
        needed = {(m.station, m.session) for m in sequenced}
        needed.update((m.station, d.session) for m in sequenced if m.dropped for d in m.dropped)
        self._load_ledgers(needed)
        for kind, message in messages:
            station = message.station
            if isinstance(message, StateMessage):
                settle_devices(station)
                self._apply_state(station_for, message, now, history, out)
                continue
            state = station_for(station, online=True)
            if message.session > state.session:
                # a session newer than its last birth: it connected again, and that birth did
                # not reach us (yet): count it online in that session, and ask for the birth
                state.online = True
                state.session = message.session
                out.rebirth.add(station)
            # a backlog of an older session (a kiosk catching up after hours away) is stored,
            # and nothing else: the picture and liveness are those of the current session
            current = message.session == state.session
            if current:
                state.last_seen = now
            ledger = ledger_for(station, message.session)
            out.acks[(station, message.session)] = 0
            for dropped in message.dropped:
                ledger_d = ledger_for(station, dropped.session)
                declared = ledger_d.add_range(dropped.from_seq, dropped.to_seq)
                name = "declared_lost" if dropped.kind == "lost" else "declared_dropped"
                out.declared[name] = out.declared.get(name, 0) + declared
                out.acks[(station, dropped.session)] = 0
            if not ledger.add(message.seq):
                out.duplicates += 1
                continue
            if isinstance(message, TelemetryRecord | TelemetryMessage):
                devices = self._devices_text(message)
                # a tuple in _TELEMETRY_COLUMNS order, JSON as text: no dict per row
                telemetry_rows.append(
                    (
                        station,
                        message.session,
                        message.seq,
                        message.ts,
                        now,
                        to_json(message.host).decode(),
                        devices,
                        to_json(message.counters).decode(),
                    )
                )
                if current:
                    if message.host:
                        latest_hosts[station] = message.host
                    state.last_telemetry_at = now
                    state.silent_deadline = silent_deadline(now, state.telemetry_interval)
                    if message.devices:
                        latest_devices[station] = devices
                continue
            row: dict[str, Any] = {
                "station": station,
                "session": message.session,
                "seq": message.seq,
                "ts": message.ts,
                "received_at": now,
            }
            if isinstance(message, EventsMessage):
                row["events"] = RawJSON(
                    _EVENTS.dump_json(message.events, exclude_none=True).decode()
                )
                settle_devices(station)
                for event in message.events:  # a backlog's progress counts too (by its ts)
                    progress.add(station, message.ts, event)
                for event in message.events if current else ():
                    if event.type == "service_state":
                        _apply_service_state(state, message.session, message.seq, event)
                    elif event.type == "device_status" and event.device and event.status:
                        state.devices = {
                            **state.devices,
                            event.device: _status_entry(
                                event.status, state.devices.get(event.device)
                            ),
                        }
            elif isinstance(message, Reply):
                row.update(
                    command_id=message.id,
                    status=message.status,
                    result=message.result,
                    error=message.error,
                )
            rows[kind].append(row)

        counts = {"telemetry": len(telemetry_rows), **{k: len(r) for k, r in rows.items()}}
        out.stored.update((kind, n) for kind, n in counts.items() if n)
        for station in list(latest_devices):
            settle_devices(station)
        for state in touched.values():
            self._restatus(state, now, history, out, reason="message")
        # alerts: from the pictures the batch changed (a replay or a backlog changes none)
        self.alerting.begin()
        plan = self.alerting.decide(touched.values(), latest_hosts, now)

        with self.engine.begin() as conn:
            written = self._update_stations(conn, touched, new_stations)
            self._bulk.insert_tuples(
                conn, _TABLES["telemetry"], _TELEMETRY_COLUMNS, telemetry_rows, ignore=True
            )
            for kind, kind_rows in rows.items():
                self._bulk.insert_ignore(conn, _TABLES[kind], kind_rows)
            if history:
                self._bulk.insert(conn, _HISTORY, history)
            self._save_ledgers(conn, ledgers_touched, now)
            increments = {f"ingested_{k}": n for k, n in out.stored.items()}
            increments.update(out.declared)
            if rejected:
                increments["rejected"] = rejected
            self._bump(conn, increments)
            if plan:
                self.alerting.write(conn, plan, now)
            out.rollouts = progress.write(conn)
        self.alerting.commit()
        for state, row in written:
            state.written = row
        out.alerts = len(plan.transitions) + len(plan.escalations)
        self._persisted.update(ledgers_touched)
        for key in out.acks:
            self._touched_at[key] = now
            ledger = self._ledgers[key]
            out.acks[key] = ledger.watermark
            if ledger.above:
                self.gappy.setdefault(key, now)
            else:
                self.gappy.pop(key, None)
        return out

    def _update_stations(
        self, conn: Connection, touched: dict[str, StationState], new_stations: set[str]
    ) -> list[tuple[StationState, dict[str, Any]]]:
        """Write the batch's stations: every column of a new one or one whose picture,
        status or description moved; only the liveness columns (what each telemetry message
        moves) of the others, most of a batch. Returns each state with the row it now is
        (its ``written`` once committed)."""
        written: list[tuple[StationState, dict[str, Any]]] = []
        new: list[dict[str, Any]] = []
        full: list[dict[str, Any]] = []
        live: list[dict[str, Any]] = []
        for station_id, state in touched.items():
            row = state.row()
            written.append((state, row))
            if station_id in new_stations:
                new.append(row)
                continue
            before = state.written
            if before is not None and {**before, **{c: row[c] for c in _LIVENESS}} == row:
                live.append({c: row[c] for c in ("id", *_LIVENESS)})
            else:
                full.append(row)
        if new:
            self._bulk.insert(conn, _STATION, new)
        self._bulk.update(conn, _STATION, ("id",), full)
        self._bulk.update(conn, _STATION, ("id",), live, stage="live")
        return written

    def _devices_text(self, message: TelemetryRecord | TelemetryMessage) -> str:
        """A telemetry message's devices as JSON text, as sent: a device's info travels only
        when it changed (lean telemetry). A station's devices rarely change between two
        messages: equal to its last ones (a dict comparison), their text is reused."""
        if isinstance(message, TelemetryMessage):  # decoded into models (not the writer's way)
            return _DEVICES.dump_json(
                message.devices, exclude_none=True, exclude_unset=True
            ).decode()
        devices = message.devices
        last = self._sent_devices.get(message.station)
        if last is not None and last[0] == devices:
            return last[1]
        text = to_json(devices).decode()
        self._sent_devices[message.station] = (devices, text)
        return text

    def _apply_state(
        self,
        station_for: Any,
        message: StateMessage,
        now: float,
        history: list[dict[str, Any]],
        out: BatchOutcome,
    ) -> None:
        known = message.station in self.stations
        state: StationState = station_for(message.station, online=message.online)
        if known and not state_is_news(
            session=state.session,
            online=state.online,
            birth_session=state.birth_session,
            message_session=message.session,
            birth=message.online,
        ):
            if (
                message.online
                and state.online
                and message.session == state.session
                and message.ts >= (state.birth_ts or 0.0)
            ):
                # the session's birth published again: an agent says so when its versions
                # changed (a catalogue swapped in without a restart); only they are news
                state.birth_ts = message.ts
                state.description = {**state.description, **_versions(message)}
            return  # a stale will or birth, the same one again, or a birth after its death
        state.session = message.session
        state.online = message.online
        state.last_seen = now
        out.rebirth.discard(message.station)
        if message.online:
            state.birth_session = message.session
            state.telemetry_interval = float(message.telemetry_interval or 10.0)
            state.silent_deadline = silent_deadline(now, state.telemetry_interval)
            state.devices = {k: v.model_dump(exclude_none=True) for k, v in message.devices.items()}
            state.required_devices = message.required_devices
            mark = state.service_mark
            if mark is None or mark[0] != message.session:
                # a birth states the flag as the session began: an event of the same session
                # already applied (it overtook the birth) is newer
                state.in_service = message.in_service
            state.birth_ts = message.ts
            state.description = {
                "district": message.district,
                "site": message.site,
                "site_type": message.site_type,
                "profile": message.profile,
                "maintenance_window": message.maintenance_window,
                **_versions(message),
            }

    def _restatus(
        self,
        state: StationState,
        now: float,
        history: list[dict[str, Any]],
        out: BatchOutcome,
        reason: str,
    ) -> None:
        state.degraded = is_degraded(state.devices, state.required_devices)
        silent = state.silent_deadline is not None and now > state.silent_deadline
        status = station_status(online=state.online, silent=silent, degraded=state.degraded)
        if status != state.status:
            out.changes.append((state.id, state.status, status))
            history.append(_hist(state.id, status, reason, state.session, now))
            state.status, state.status_since = status, now

    def sweep(self, now: float) -> list[tuple[str, str, str]]:
        """Turn stations silent whose telemetry stopped, and decide what alerts fell due
        (decision 27); returns the status changes."""
        self._reload_stale(now)
        if now - self._evicted_at > 60:
            self._evict_idle_ledgers(now)
        out = BatchOutcome()
        history: list[dict[str, Any]] = []
        before: dict[str, StationState] = {}
        for state in self.stations.values():
            if (
                state.online
                and state.status != "silent"
                and state.silent_deadline is not None
                and now > state.silent_deadline
            ):
                before[state.id] = state.copy()
                self._restatus(state, now, history, out, reason="no_telemetry")
        alerting = self.alerting
        try:
            alerting.refresh(self.engine, now)
            alerting.begin()
            plan = alerting.sweep(now, [station for station, _, _ in out.changes])
            if out.changes or plan:
                with self.engine.begin() as conn:
                    for station_id, _, new in out.changes:
                        state = self.stations[station_id]
                        conn.execute(
                            update(_STATION)
                            .where(_STATION.c.id == station_id)
                            .values(status=new, status_since=state.status_since)
                        )
                    if history:
                        self._bulk.insert(conn, _HISTORY, history)
                    if plan:
                        alerting.write(conn, plan, now)
            alerting.commit()
        except BaseException:
            # as after a failed batch: memory as it was, decided again at the next sweep
            for station_id, state in before.items():
                self.stations[station_id] = state
            alerting.rollback(before)
            raise
        return out.changes

    def gaps(self, now: float, min_age: float) -> list[tuple[str, int, list[tuple[int, int]]]]:

        due = []
        for (station, session), since in self.gappy.items():
            state = self.stations.get(station)
            if now - since < min_age or state is None or not state.online:
                continue
            ranges = self._ledgers[(station, session)].gaps()
            if ranges:
                due.append((station, session, ranges))
        return due

    # -- ledgers and counters ------------------------------------------------------------------
    def _evict_idle_ledgers(self, now: float, idle: float = 600.0) -> None:
        """Forget complete ledgers of sessions quiet for ``idle`` s (their rows stay; a late
        redelivery reloads them): every reconnect starts a session, memory must not grow."""
        self._evicted_at = now
        for key, at in list(self._touched_at.items()):
            if now - at > idle and key not in self.gappy:
                del self._touched_at[key]
                self._ledgers.pop(key, None)
                self._persisted.discard(key)

    def _load_ledgers(self, keys: set[tuple[str, int]]) -> None:
        """Bring the ledgers of ``keys`` into memory with a query per 500 sessions, not one
        each (a district reconnecting starts hundreds of sessions in one batch)."""
        missing = sorted(key for key in keys if key not in self._ledgers)
        if not missing:
            return
        with self.engine.connect() as conn:
            for start in range(0, len(missing), 500):
                chunk = missing[start : start + 500]
                found = conn.execute(
                    select(
                        _SESSION.c.station,
                        _SESSION.c.session,
                        _SESSION.c.watermark,
                        _SESSION.c.above,
                    ).where(tuple_(_SESSION.c.station, _SESSION.c.session).in_(chunk))
                )
                for station, session, watermark, above in found:
                    key = (station, int(session))
                    self._ledgers[key] = SeqLedger(int(watermark), set(above or ()))
                    self._persisted.add(key)
        for key in missing:
            self._ledgers.setdefault(key, SeqLedger())

    def _ledger(self, station: str, session: int) -> SeqLedger:
        key = (station, session)
        if key not in self._ledgers:
            self._load_ledgers({key})
        return self._ledgers[key]

    def _save_ledgers(self, conn: Connection, keys: set[tuple[str, int]], now: float) -> None:
        updates: list[dict[str, Any]] = []
        inserts: list[dict[str, Any]] = []
        for station, session in keys:
            ledger = self._ledgers[(station, session)]
            values = {
                "watermark": ledger.watermark,
                "above": sorted(ledger.above),
                "updated_at": now,
            }
            if (station, session) in self._persisted:
                updates.append({"station": station, "session": session, **values})
            else:
                inserts.append({"station": station, "session": session, **values})
        self._bulk.update(conn, _SESSION, ("station", "session"), updates)
        if inserts:
            self._bulk.insert(conn, _SESSION, inserts)

    def _bump(self, conn: Connection, increments: dict[str, int]) -> None:
        for name, n in increments.items():
            done = conn.execute(
                update(_COUNTER).where(_COUNTER.c.name == name).values(value=_COUNTER.c.value + n)
            )
            if done.rowcount == 0:
                conn.execute(insert(_COUNTER).values(name=name, value=n))

    def count_rejected(self, n: int) -> None:
        """Persist rejected messages that came without anything to store."""
        with self.engine.begin() as conn:
            self._bump(conn, {"rejected": n})


@dataclass
class _Undo:
    """What a batch changed in memory, to put back when its transaction fails."""

    #: station → its state before the batch (None: the batch registered it)
    stations: dict[str, StationState | None] = field(default_factory=dict)
    #: (station, session) → (watermark, above) before the batch
    ledgers: dict[tuple[str, int], tuple[int, set[int]]] = field(default_factory=dict)

    def restore(self, store: FleetStore) -> None:
        for station, state in self.stations.items():
            if state is None:
                store.stations.pop(station, None)
            else:
                store.stations[station] = state
        for key, (watermark, above) in self.ledgers.items():
            ledger = store._ledgers.get(key)
            if ledger is not None:
                ledger.watermark, ledger.above = watermark, above


def _state_of(row: Any) -> StationState:
    """The writer's copy of a station row (a mapping of its columns)."""
    return StationState(
        id=row["id"],
        status=row["status"],
        online=row["online"],
        degraded=row["degraded"],
        session=row["session"],
        birth_session=row["birth_session"],
        telemetry_interval=row["telemetry_interval"],
        last_seen=row["last_seen"],
        last_telemetry_at=row["last_telemetry_at"],
        silent_deadline=row["silent_deadline"],
        status_since=row["status_since"],
        registered_at=row["registered_at"],
        devices=dict(row["devices"] or {}),
        required_devices=row["required_devices"],
        description={key: row[key] for key in _DESCRIPTION},
        in_service=row["in_service"],
    )


def _apply_service_state(state: StationState, session: int, seq: int, event: Event) -> None:
    """Take ``in_service`` from a ``service_state`` event of the station's current session,
    unless a later event of that session already set it."""
    value = (event.model_extra or {}).get("in_service")
    if not isinstance(value, bool):
        log.warning("station %s: service_state event without a boolean in_service", state.id)
        return
    mark = state.service_mark
    if mark is not None and mark[0] == session and mark[1] > seq:
        return
    state.in_service = value
    state.service_mark = (session, seq)


def _versions(birth: StateMessage) -> dict[str, str | None]:
    """The versions a birth reports, as station columns."""
    versions = birth.versions
    return {
        "agent_version": versions.agent if versions else None,
        "catalogue_version": versions.catalogue if versions else None,
    }


def _status_entry(status: DeviceStatus, before: dict[str, Any] | None) -> dict[str, Any]:
    """A device's entry in the picture from a ``device_status`` event; an ``info`` the event
    left out is the one the picture had (CONTRACT §3)."""
    entry = status.model_dump(exclude_none=True, exclude={"events"})
    if "info" not in status.model_fields_set and before is not None and "info" in before:
        entry["info"] = before["info"]
    return entry


def _hist(station: str, status: str, reason: str, session: int, now: float) -> dict[str, Any]:
    return {"station": station, "status": status, "reason": reason, "session": session, "at": now}
