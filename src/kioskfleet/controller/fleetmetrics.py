"""The fleet as Prometheus sees it: aggregates by district and site type, one series per
station in two bounded families, the rollouts by state and the few recent ones by progress,
read at scrape time in a few queries (decision 41).

Cardinality is the design constraint. Everything that multiplies (device × state, supply ×
level, severity × state) is aggregated by district; per station there is exactly one series
in ``kioskfleet_station_status`` and one in ``kioskfleet_station_last_seen_timestamp_seconds``,
never multiplied by device or state. Every label combination of the known vocabularies is
exported from the start, with zeros, so that dashboards and rules have data on a fresh fleet.

:func:`read_snapshot` reads the database (one scan of the station table, one grouped query
of active alerts, two counts of the outbox, three small queries of the rollouts);
:func:`fleet_exposition` turns a :class:`FleetSnapshot` into the text exposition
(:func:`families` for the aggregates, :func:`station_exposition` for the per-station lines)
and needs no database.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic_core import from_json
from sqlalchemy import Connection, Engine, Text, case, cast, func, or_, select

from kioskfleet.controller.alerts.config import SEVERITIES
from kioskfleet.controller.auditlog import head_seq
from kioskfleet.controller.fleet import STATUSES
from kioskfleet.controller.models import (
    AlertRow,
    Notification,
    RolloutRow,
    RolloutStationRow,
    Station,
)
from kioskfleet.controller.rollout_plan import ACTIVE, PROGRESS, ROLLOUT_STATES
from kioskfleet.protocol.devices import (
    CASHBOX_LEVELS,
    DEVICE_KINDS,
    DEVICE_STATES,
    PAPER_LEVELS,
    slot_kind,
)
from kioskfleet.protocol.stations import SITE_TYPES

log = logging.getLogger(__name__)

_S = Station.__table__  # type: ignore[attr-defined]
_A = AlertRow.__table__  # type: ignore[attr-defined]
_N = Notification.__table__  # type: ignore[attr-defined]
_R = RolloutRow.__table__  # type: ignore[attr-defined]
_RS = RolloutStationRow.__table__  # type: ignore[attr-defined]

#: ``kioskfleet_station_status``: a station's status as a number, worse is higher (the
#: contract's precedence offline > silent > degraded > online), so ``max`` finds the worst
STATUS_NUMBER: Final[dict[str, int]] = {"online": 0, "degraded": 1, "silent": 2, "offline": 3}
#: the label value of a station without a district or site type (a station known only from a
#: message, before its birth)
UNKNOWN: Final = "unknown"
#: supplies reported by devices, and every level each may have (CONTRACT §5)
SUPPLY_LEVELS: Final[dict[str, tuple[str, ...]]] = {
    "paper": PAPER_LEVELS,
    "cashbox": CASHBOX_LEVELS,
}
#: alert states that count as "active" (the ``alert`` table, migration 0008)
ACTIVE_ALERT_STATES: Final = ("open", "acknowledged")
#: notification outbox states exported
NOTIFICATION_STATES: Final = ("pending", "given_up")
#: rollouts exported one by one (``kioskfleet_rollout_*{rollout=…}``): the active ones
#: (scheduled, running, paused) and those that changed in the last day, newest first, at most
#: this many: a bound on those families' series whatever the rollouts' history
ROLLOUTS_EXPORTED: Final = 10
#: how long a finished (completed or aborted) rollout stays exported, seconds
ROLLOUT_RECENT_S: Final = 24 * 3600.0


@dataclass(frozen=True)
class RolloutPoint:
    """What the per-rollout families need of one active or recent rollout."""

    id: str
    release: str
    state: str
    #: its current wave: -1 before it started, 0 the canaries
    wave: int
    #: progress → its stations
    progress: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class StationPoint:
    """What the per-station families need of one station."""

    id: str
    district: str
    status: str
    #: UTC Unix seconds of its last message (its registration when it sent none since)
    last_seen: float


@dataclass
class FleetSnapshot:
    """The fleet's numbers at one scrape."""

    #: districts exported even without a station (``Settings.districts``)
    districts: Sequence[str] = ()
    stations: list[StationPoint] = field(default_factory=list)
    #: (district, site_type, status) → stations
    by_site_type: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    #: (district, device kind, state) → devices of stations that are not offline
    devices: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    #: (district, supply, level) → devices reporting that level
    supplies: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    #: (district, severity, state) → open or acknowledged alerts
    alerts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    #: pending / given_up → notifications in the outbox
    notifications: Counter[str] = field(default_factory=Counter)
    #: rollout state → rollouts (all of them)
    rollouts: Counter[str] = field(default_factory=Counter)
    #: the rollouts exported one by one (:data:`ROLLOUTS_EXPORTED`), newest first
    recent_rollouts: list[RolloutPoint] = field(default_factory=list)
    #: the audit chain's head ``seq``: entries ever appended (decision 51)
    audit_entries: int = 0


def read_snapshot(
    conn: Connection, *, districts: Sequence[str] = (), now: float | None = None
) -> FleetSnapshot:
    """Read the fleet's numbers: one scan of the station table (its narrow columns and its
    devices' JSON text, decoded here by pydantic-core's parser: cheaper than SQL's
    ``json_each`` on either database, docs/benchmarks.md), one grouped query over active
    alerts (index on state), two counts of the notification outbox (the pending one on its
    partial index), the rollouts (:func:`read_rollouts`) as of ``now`` (default: the
    clock)."""
    snap = FleetSnapshot(districts=districts)
    rows = conn.execute(
        select(
            _S.c.id,
            _S.c.district,
            _S.c.site_type,
            _S.c.status,
            func.coalesce(_S.c.last_seen, _S.c.registered_at),
            cast(_S.c.devices, Text),
        )
    )
    # (district, slot, state, paper, cashbox) → devices; slots become kinds afterwards, once
    # per distinct key
    seen: Counter[tuple[str, str, str | None, str | None, str | None]] = Counter()
    for station, district, site_type, status, last_seen, devices in rows:
        district = district or UNKNOWN
        snap.stations.append(StationPoint(station, district, status, float(last_seen or 0.0)))
        snap.by_site_type[(district, site_type or UNKNOWN, status)] += 1
        # an offline station's devices are left out: its last report is not the present
        if status == "offline" or not devices:
            continue
        try:
            parsed = from_json(devices)
        except ValueError:
            log.warning("fleet metrics: station %s: its devices are not JSON", station)
            continue
        if not isinstance(parsed, dict):
            continue
        for slot, device in parsed.items():
            if isinstance(device, dict):
                supplies = device.get("supplies")
                if not isinstance(supplies, dict):
                    supplies = {}
                key = (
                    district,
                    slot,
                    _label(device.get("state")),
                    _label(supplies.get("paper")),
                    _label(supplies.get("cashbox")),
                )
                seen[key] += 1
    for (district, slot, state, paper, cashbox), n in seen.items():
        snap.devices[(district, _kind(slot), state or UNKNOWN)] += n
        if paper is not None:
            snap.supplies[(district, "paper", paper)] += n
        if cashbox is not None:
            snap.supplies[(district, "cashbox", cashbox)] += n

    alert_district = func.coalesce(_A.c.district, UNKNOWN)
    for district, severity, state, n in conn.execute(
        select(alert_district, _A.c.severity, _A.c.state, func.count())
        .where(_A.c.state.in_(ACTIVE_ALERT_STATES))
        .group_by(alert_district, _A.c.severity, _A.c.state)
    ):
        snap.alerts[(district, severity, state)] += int(n)

    pending = select(func.count()).where(_N.c.sent_at.is_(None), _N.c.given_up_at.is_(None))
    given_up = select(func.count()).where(_N.c.given_up_at.is_not(None))
    snap.notifications["pending"] = int(conn.execute(pending.select_from(_N)).scalar_one())
    snap.notifications["given_up"] = int(conn.execute(given_up.select_from(_N)).scalar_one())
    read_rollouts(conn, snap, time.time() if now is None else now)
    snap.audit_entries = head_seq(conn=conn)
    return snap


def read_rollouts(conn: Connection, snap: FleetSnapshot, now: float) -> None:
    """Fill ``snap``'s rollouts: every rollout counted by state (a grouped query of a small
    table), and the active or recent ones (at most :data:`ROLLOUTS_EXPORTED`, the active
    first, newest first) with their stations counted by progress (one grouped query on the
    ``rollout_station`` primary key's leading column)."""
    for state, n in conn.execute(select(_R.c.state, func.count()).group_by(_R.c.state)):
        snap.rollouts[state] += int(n)
    active = _R.c.state.in_(sorted(ACTIVE))
    rows = conn.execute(
        select(_R.c.id, _R.c.release, _R.c.state, _R.c.wave)
        .where(or_(active, _R.c.updated_at >= now - ROLLOUT_RECENT_S))
        .order_by(case((active, 0), else_=1), _R.c.created_at.desc(), _R.c.id)
        .limit(ROLLOUTS_EXPORTED)
    ).all()
    if not rows:
        return
    points = {row.id: RolloutPoint(row.id, row.release, row.state, int(row.wave)) for row in rows}
    for rollout, progress, n in conn.execute(
        select(_RS.c.rollout_id, _RS.c.progress, func.count())
        .where(_RS.c.rollout_id.in_(list(points)))
        .group_by(_RS.c.rollout_id, _RS.c.progress)
    ):
        points[rollout].progress[progress] += int(n)
    snap.recent_rollouts.extend(points.values())


def _label(value: Any) -> str | None:
    """A JSON value as a label value: a string as it is, null as None, anything else (the
    writer validates statuses: only a hand-edited row has it) as its JSON text."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def _kind(slot: str) -> str:
    try:
        return slot_kind(slot)
    except ValueError:
        return "other"  # the writer validates slots: only a hand-edited row gets here


def _all_districts(snap: FleetSnapshot) -> list[str]:
    seen: set[str] = set(snap.districts)
    seen.update(s.district for s in snap.stations)
    for counts in (snap.devices, snap.supplies, snap.alerts):
        seen.update(key[0] for key in counts)
    return sorted(seen)


def _with_extra(known: Iterable[str], seen: Iterable[str]) -> list[str]:
    """``known`` in its order, then values ``seen`` that it lacks, sorted."""
    first = list(known)
    return first + sorted(set(seen) - set(first))


def families(snap: FleetSnapshot) -> list[GaugeMetricFamily]:
    """The fleet's aggregate families, every known label combination present (zeros
    included); the per-station ones are :func:`station_exposition`'s."""
    districts = _all_districts(snap)

    stations = GaugeMetricFamily(
        "kioskfleet_stations",
        "Stations by district, site type and status (online, degraded, silent, offline)",
        labels=["district", "site_type", "status"],
    )
    site_types = _with_extra(SITE_TYPES, (k[1] for k in snap.by_site_type))
    statuses = _with_extra(STATUSES, (k[2] for k in snap.by_site_type))
    for district in districts:
        for site_type in site_types:
            for status in statuses:
                stations.add_metric(
                    [district, site_type, status],
                    snap.by_site_type.get((district, site_type, status), 0),
                )

    availability = GaugeMetricFamily(
        "kioskfleet_availability_ratio",
        "Share of a district's stations that are online now (not degraded, silent or "
        "offline); 0 for a district without stations",
        labels=["district"],
    )
    total: Counter[str] = Counter()
    online: Counter[str] = Counter()
    for (district, _, status), n in snap.by_site_type.items():
        total[district] += n
        if status == "online":
            online[district] += n
    for district in districts:
        share = online[district] / total[district] if total[district] else 0.0
        availability.add_metric([district], share)

    devices = GaugeMetricFamily(
        "kioskfleet_devices",
        "Devices of connected (not offline) stations by district, kind and state (CONTRACT §5)",
        labels=["district", "device", "state"],
    )
    kinds = _with_extra(DEVICE_KINDS, (k[1] for k in snap.devices))
    states = _with_extra(DEVICE_STATES, (k[2] for k in snap.devices))
    for district in districts:
        for kind in kinds:
            for state in states:
                devices.add_metric(
                    [district, kind, state], snap.devices.get((district, kind, state), 0)
                )

    supplies = GaugeMetricFamily(
        "kioskfleet_supplies",
        "Devices of connected stations by district and the level of a supply they report "
        "(paper: full, low, out, jammed, unknown; cashbox: ok, high, full, missing, unknown)",
        labels=["district", "supply", "level"],
    )
    for district in districts:
        for supply, levels in SUPPLY_LEVELS.items():
            seen = (k[2] for k in snap.supplies if k[1] == supply)
            for level in _with_extra(levels, seen):
                supplies.add_metric(
                    [district, supply, level], snap.supplies.get((district, supply, level), 0)
                )

    alerts = GaugeMetricFamily(
        "kioskfleet_alerts",
        "Active alerts (open or acknowledged) by district, severity and state",
        labels=["district", "severity", "state"],
    )
    severities = _with_extra(SEVERITIES, (k[1] for k in snap.alerts))
    for district in districts:
        for severity in severities:
            for state in ACTIVE_ALERT_STATES:
                alerts.add_metric(
                    [district, severity, state], snap.alerts.get((district, severity, state), 0)
                )

    notifications = GaugeMetricFamily(
        "kioskfleet_notifications",
        "Notifications in the outbox: pending (not yet delivered) and given_up (delivery "
        "abandoned after its retries)",
        labels=["state"],
    )
    for state in NOTIFICATION_STATES:
        notifications.add_metric([state], snap.notifications.get(state, 0))

    audit = GaugeMetricFamily(
        "kioskfleet_audit_entries",
        "Entries appended to the audit log's hash chain (its head seq): it only grows, so a "
        "drop means the log was cut back",
    )
    audit.add_metric([], snap.audit_entries)
    return [
        stations,
        availability,
        devices,
        supplies,
        alerts,
        notifications,
        *rollout_families(snap),
        audit,
    ]


def rollout_families(snap: FleetSnapshot) -> list[GaugeMetricFamily]:
    """The rollouts' families: by state (every state, zeros included) and, for each active or
    recent rollout only (:data:`ROLLOUTS_EXPORTED`), its release and state, its wave and its
    stations by progress (every progress value, zeros included)."""
    by_state = GaugeMetricFamily(
        "kioskfleet_rollouts",
        "Rollouts by state (scheduled, running, paused, aborted, completed)",
        labels=["state"],
    )
    for state in _with_extra(ROLLOUT_STATES, snap.rollouts):
        by_state.add_metric([state], snap.rollouts.get(state, 0))
    info = GaugeMetricFamily(
        "kioskfleet_rollout_info",
        "1 for each active rollout and each that changed in the last day (at most "
        f"{ROLLOUTS_EXPORTED}): its release and state",
        labels=["rollout", "release", "state"],
    )
    wave = GaugeMetricFamily(
        "kioskfleet_rollout_wave",
        "The current wave of an active or recent rollout: -1 before it started, 0 the canaries",
        labels=["rollout"],
    )
    stations = GaugeMetricFamily(
        "kioskfleet_rollout_stations",
        "Stations of an active or recent rollout by their progress (pending, deferred, "
        "downloading, installed, healthy, failed, rolled_back)",
        labels=["rollout", "progress"],
    )
    for point in snap.recent_rollouts:
        info.add_metric([point.id, point.release, point.state], 1)
        wave.add_metric([point.id], point.wave)
        for progress in _with_extra(PROGRESS, point.progress):
            stations.add_metric([point.id, progress], point.progress.get(progress, 0))
    return [by_state, info, wave, stations]


STATION_STATUS_HELP: Final = (
    "A station's status as a number: 0 online, 1 degraded, 2 silent, 3 offline"
)
LAST_SEEN_HELP: Final = "When the controller last heard from a station (UTC Unix seconds)"


def _escape(value: str) -> str:
    """A label value in the text exposition format (prometheus_client's escaping)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def station_exposition(stations: Iterable[StationPoint]) -> str:
    """The two per-station families in the text exposition format, written directly: through
    prometheus_client's families they cost ~10 µs a series, a fifth of a second at 10,000
    stations (docs/benchmarks.md). The same format its parser reads (tests/test_metrics.py)."""
    status = [
        f"# HELP kioskfleet_station_status {STATION_STATUS_HELP}",
        "# TYPE kioskfleet_station_status gauge",
    ]
    seen = [
        f"# HELP kioskfleet_station_last_seen_timestamp_seconds {LAST_SEEN_HELP}",
        "# TYPE kioskfleet_station_last_seen_timestamp_seconds gauge",
    ]
    districts: dict[str, str] = {}
    for point in stations:
        station = _escape(point.id)
        district = districts.get(point.district)
        if district is None:
            district = districts[point.district] = _escape(point.district)
        number = STATUS_NUMBER.get(point.status)
        if number is not None:
            status.append(
                f'kioskfleet_station_status{{station="{station}",district="{district}"}} {number}'
            )
        seen.append(
            f'kioskfleet_station_last_seen_timestamp_seconds{{station="{station}"}} '
            f"{point.last_seen!r}"
        )
    return "\n".join(status + seen) + "\n"


class _Families(Collector):
    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self._families = families

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families


def fleet_exposition(snap: FleetSnapshot) -> bytes:
    """Every fleet family of ``snap`` in the text exposition format: the aggregates through
    prometheus_client, the per-station families by :func:`station_exposition`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families(snap)))
    return generate_latest(registry) + station_exposition(snap.stations).encode()


def engine_reader(engine: Engine, districts: Sequence[str]) -> Callable[[], FleetSnapshot]:
    """A reader of ``engine``'s fleet (``Metrics.watch_fleet``)."""

    def read() -> FleetSnapshot:
        with engine.connect() as conn:
            return read_snapshot(conn, districts=districts)

    return read
