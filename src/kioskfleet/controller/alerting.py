"""The writer's alert shell (decision 27): the pure core of :mod:`.alerts` run against the
stations the writer keeps, its decisions written in the writer's own transactions.

:class:`Alerting` lives beside :class:`~kioskfleet.controller.store.FleetStore` and reads its
stations. It remembers what the rules need beyond a station row (the latest host metrics of
the current session, since when each device is in its state, since when the station is
unreachable, its site) and the alerts :func:`~.alerts.lifecycle.keep` keeps. The store calls

- :meth:`Alerting.decide` after applying a batch, with the stations it touched: only those
  whose picture changed are evaluated (a replayed batch or an older session's backlog
  changes none, so it opens and closes nothing), each site first, then its stations;
- :meth:`Alerting.sweep` in its sweep: what people changed (re-read by ``updated_at``),
  silences and maintenance (re-read), and what falls due — offline alerts and site
  decisions, flapping quiet time, escalations — from a heap of due times, never a scan;
- :meth:`Alerting.write` inside the transaction that stores the messages (or the sweep's
  changes): each transition by :func:`~.alertrows.write_transition`, its history line and its
  notification rows, all in that one transaction.

Memory changes are journaled between :meth:`Alerting.begin` and :meth:`Alerting.commit`;
:meth:`Alerting.rollback` puts them back when the transaction fails (decision 15), and the
alerts of the stations involved are read back from the database before the next decision (the
COMMIT may have gone through with its answer lost).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from sqlalchemy import Connection, Engine, and_, func, insert, or_, select, update

from kioskfleet.controller.alertrows import ALERT, HISTORY, alert_of, write_transition
from kioskfleet.controller.alerts import lifecycle, rules, sites, suppress
from kioskfleet.controller.alerts.config import AlertsSettings, Severity
from kioskfleet.controller.alerts.model import FLAPPING, SITE_OFFLINE, Alert, Transition
from kioskfleet.controller.alerts.routing import route, teams_for
from kioskfleet.controller.alerts.rules import StationPicture
from kioskfleet.controller.models import MaintenanceRow, SilenceRow, Telemetry
from kioskfleet.controller.notify.config import ReceiversSettings
from kioskfleet.controller.notify.outbox import Escalation, escalation_due, notifications_for
from kioskfleet.controller.notify.sender import insert_rows

log = logging.getLogger(__name__)

_SILENCE: Final = SilenceRow.__table__  # type: ignore[attr-defined]
_MAINTENANCE: Final = MaintenanceRow.__table__  # type: ignore[attr-defined]
_TELEMETRY: Final = Telemetry.__table__  # type: ignore[attr-defined]
_UNREACHABLE: Final = frozenset({"offline", "silent"})
#: people's changes are re-read from this long before the last look: a transaction that took
#: its ``updated_at`` before our read may commit after it
_REREAD_MARGIN: Final = 10.0
#: how often alerts no longer kept (cleared cycles past the flapping window) leave memory
_PRUNE_EVERY: Final = 60.0
_MISSING: Final = object()

SiteKey = tuple[str, str]


def _alert_of(row: Any) -> Alert:
    """:func:`alert_of` of a result row's mapping."""
    return alert_of(row)


class StationView(Protocol):
    """What :class:`Alerting` reads of the store's copy of a station."""

    id: str
    status: str
    status_since: float
    devices: dict[str, Any]
    description: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Picture:
    """What the rules need of a station beyond its row (replaced whole, never changed)."""

    #: the latest host metrics of the current session
    host: Mapping[str, Any] = field(default_factory=dict)
    #: the threshold level each host rule reaches with ``host``: what decides host alerts
    host_levels: tuple[Severity | None, ...] = ()
    #: the devices picture last seen (compared by identity first, then by content)
    devices: Mapping[str, Any] = field(default_factory=dict)
    #: grows when the devices' content changes (not when an equal picture is a new object)
    devices_version: int = 0
    device_since: Mapping[str, float] = field(default_factory=dict)
    status: str = ""
    status_since: float = 0.0
    #: when it became unreachable (silent, then offline, counts from silent)
    down_since: float | None = None
    site: SiteKey | None = None
    site_type: str | None = None
    #: what the last evaluation saw; None: evaluate at the next chance
    signature: tuple[Any, ...] | None = None


@dataclass
class Plan:
    """What a decision asks to write: transitions and escalations, in order."""

    transitions: list[Transition] = field(default_factory=list)
    escalations: list[Escalation] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.transitions or self.escalations)


def _device_key(status: Mapping[str, Any]) -> tuple[Any, ...]:
    supplies = status.get("supplies") or {}
    return (
        status.get("state"),
        tuple(status.get("faults") or ()),
        tuple(sorted(supplies.items())),
        status.get("media"),
    )


class Alerting:
    """Alerts decided in the writer (see the module's docstring).

    Args:
        stations: the store's stations (read, never written).
        settings: the ``[alerts]`` rules.
        receivers: where notifications go (rows are only stored here; the controller's
            process sends them).
        offline_alert_after: seconds a station stays offline or silent before its alert.
        new_id: a fresh alert id per call (uuid4 hex).
    """

    def __init__(
        self,
        stations: Mapping[str, StationView],
        settings: AlertsSettings,
        receivers: ReceiversSettings,
        offline_alert_after: float,
        *,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self.stations = stations
        self.settings = settings
        self.receivers = receivers
        self.policy = settings.policy(offline_alert_after=offline_alert_after)
        self.routing = settings.routing
        self.new_id = new_id or (lambda: uuid.uuid4().hex)
        #: every alert kept in memory, by id
        self.alerts: dict[str, Alert] = {}
        self._by_station: dict[str, dict[str, None]] = {}
        #: a site's incidents (unresolved, or resolved by a person while members are down)
        self._by_site: dict[SiteKey, dict[str, None]] = {}
        #: (district, site) → its stations
        self._members: dict[SiteKey, dict[str, None]] = {}
        self._pictures: dict[str, _Picture] = {}
        #: alert → the escalation level last notified (the ``level`` column)
        self._levels: dict[str, int] = {}
        #: alert → when its escalation clock (re)started: the end of a suppression
        self._clock_from: dict[str, float] = {}
        #: (when, tiebreak, kind, key): "station" → evaluate it, "escalate" → alert id
        self._due: list[tuple[float, int, str, str]] = []
        self._tiebreak = itertools.count()
        #: memory changes of the decision in progress: (mapping, key, old value or _MISSING)
        self._journal: list[tuple[dict[Any, Any], Any, Any]] | None = None
        #: stations to evaluate at the next sweep whatever their picture says
        self._reeval: set[str] = set()
        #: alerts to read back (an update of ours found the row changed)
        self._reread: set[str] = set()
        #: stations whose alerts to read back (a transaction failed)
        self._stale: set[str] = set()
        self._maintenance: list[suppress.Maintenance] = []
        self._silences: list[suppress.Silence] = []
        self._suppress_seen: tuple[Any, ...] = ()
        self._suppression_moved = False
        self._suppress_next: float | None = None
        self._last_look = 0.0
        self._pruned_at = 0.0
        #: alerts the sweep in progress took off the heap to escalate
        self._escalating: list[str] = []
        #: stations the sweep in progress evaluates
        self._sweeping: set[str] = set()
        self.written = 0

    # -- start -------------------------------------------------------------------------------
    def load(self, engine: Engine, now: float) -> None:
        """Read the kept alerts, silences and maintenance; picture every station; schedule
        what falls due (an offline alert missed while the controller was away is due now)."""
        with engine.connect() as conn:
            newest = conn.execute(select(func.max(ALERT.c.updated_at))).scalar()
            self._last_look = float(newest) if newest is not None else 0.0
            for alert, level in self._read_kept(conn, now):
                self._keep(alert)
                self._levels[alert.id] = level
                self._schedule_escalation(alert, now)
            self._load_suppressions(conn, now)
            hosts = self._load_hosts(conn)
        for station_id, state in self.stations.items():
            pic = self._observe(state, hosts.get(station_id), now, fresh=True)
            self._pictures[station_id] = pic
            if pic.site is not None:
                self._members.setdefault(pic.site, {})[station_id] = None
            self._schedule_station(station_id, pic, now)
            if pic.status in _UNREACHABLE:
                # its alert may have fallen due while the controller was away
                self._push(now, "station", station_id)

    def _read_kept(self, conn: Connection, now: float) -> list[tuple[Alert, int]]:
        window = self.settings.flapping.window
        query = select(ALERT).where(
            or_(
                ALERT.c.state != "resolved",
                ALERT.c.awaiting_clear.is_(True),
                and_(ALERT.c.resolution == "cleared", ALERT.c.opened_at >= now - window),
            )
        )
        return [(_alert_of(row), int(row["level"])) for row in conn.execute(query).mappings()]

    def _load_hosts(self, conn: Connection) -> dict[str, Mapping[str, Any]]:
        """The latest host metrics of stations with a host alert unresolved: without them the
        first evaluation after a restart would clear it until the next telemetry."""
        conditions = {r.condition for r in self.policy.rules_for(None, None).host}
        wanted = {
            a.station
            for a in self.alerts.values()
            if a.station is not None and a.device is None and a.condition in conditions
        }
        hosts: dict[str, Mapping[str, Any]] = {}
        for station in sorted(wanted):
            row = conn.execute(
                select(_TELEMETRY.c.host)
                .where(_TELEMETRY.c.station == station)
                .order_by(_TELEMETRY.c.received_at.desc())
                .limit(1)
            ).first()
            if row is not None and isinstance(row[0], dict):
                hosts[station] = row[0]
        return hosts

    # -- journal -----------------------------------------------------------------------------
    def begin(self) -> None:
        """Start journaling memory changes (one decision and its transaction)."""
        self._journal = []

    def commit(self) -> None:
        """The transaction committed: keep the changes."""
        self._journal = None
        self._escalating = []
        self._sweeping = set()

    def rollback(self, stations: Iterable[str]) -> None:
        """The transaction failed: put memory back, and read the alerts of ``stations`` (and of
        their sites) back from the database before the next decision."""
        journal, self._journal = self._journal or [], None
        for mapping, key, old in reversed(journal):
            if old is _MISSING:
                mapping.pop(key, None)
            else:
                mapping[key] = old
        touched = set(stations)
        self._stale.update(touched)
        self._reeval.update(self._sweeping)
        self._sweeping = set()
        self._reeval.update(touched)
        # what the sweep took off the heap or decided from silences is decided again
        self._suppress_seen = ()
        self._suppression_moved = True
        for alert_id in self._escalating:
            self._push(0.0, "escalate", alert_id)
        self._escalating = []

    def _set(self, mapping: dict[Any, Any], key: Any, value: Any) -> None:
        if self._journal is not None:
            self._journal.append((mapping, key, mapping.get(key, _MISSING)))
        mapping[key] = value

    def _pop(self, mapping: dict[Any, Any], key: Any) -> None:
        if key not in mapping:
            return
        if self._journal is not None:
            self._journal.append((mapping, key, mapping[key]))
        del mapping[key]

    # -- memory of alerts --------------------------------------------------------------------
    def _kept(self, alert: Alert, now: float) -> bool:
        if alert.condition == SITE_OFFLINE and alert.station is None:
            return alert.unresolved or alert.awaiting_clear
        return lifecycle.keep(alert, now, self.settings.flapping)

    def _keep(self, alert: Alert) -> None:
        """Remember ``alert`` (its new state), indexed by station or site."""
        self._set(self.alerts, alert.id, alert)
        if alert.station is not None:
            index = self._by_station.get(alert.station)
            if index is None:
                index = {}
                self._set(self._by_station, alert.station, index)
            self._set(index, alert.id, None)
        elif alert.district is not None and alert.site is not None:
            key = (alert.district, alert.site)
            index = self._by_site.get(key)
            if index is None:
                index = {}
                self._set(self._by_site, key, index)
            self._set(index, alert.id, None)

    def _forget(self, alert: Alert) -> None:
        self._pop(self.alerts, alert.id)
        if alert.station is not None:
            self._pop(self._by_station.get(alert.station, {}), alert.id)
        elif alert.district is not None and alert.site is not None:
            self._pop(self._by_site.get((alert.district, alert.site), {}), alert.id)

    def _remember(self, alert: Alert, now: float) -> None:
        if self._kept(alert, now):
            self._keep(alert)
        else:
            self._forget(alert)

    def _station_alerts(self, station: str) -> list[Alert]:
        return [self.alerts[i] for i in self._by_station.get(station, ())]

    def _incidents(self, key: SiteKey) -> list[Alert]:
        return [self.alerts[i] for i in self._by_site.get(key, ())]

    # -- pictures ----------------------------------------------------------------------------
    def _observe(
        self,
        state: StationView,
        host: Mapping[str, Any] | None,
        now: float,
        *,
        fresh: bool = False,
    ) -> _Picture:
        """The station's picture pieces now (a new :class:`_Picture`; the old one is kept if
        nothing changed)."""
        old = None if fresh else self._pictures.get(state.id)
        if old is None:
            old = _Picture(device_since={})
        description = state.description
        district, site = description.get("district"), description.get("site")
        site_type = description.get("site_type")
        site_key = (district, site) if district is not None and site is not None else None
        changes: dict[str, Any] = {}
        if site_key != old.site:
            changes["site"] = site_key
        if site_type != old.site_type:
            changes["site_type"] = site_type
        if host is not None:
            # the figures change with every telemetry; what decides alerts is which level
            # each threshold reaches, so the picture moves only when one crosses (the figures
            # kept are those of the last crossing: what a host alert's details show)
            levels = self._host_levels(host, district, site_type)
            if levels != old.host_levels or fresh:
                changes["host"] = host
                changes["host_levels"] = levels
        devices = state.devices
        if devices is not old.devices:
            changes["devices"] = devices
            if devices != old.devices:
                changes["devices_version"] = old.devices_version + 1
                since = dict(old.device_since)
                for slot, status in devices.items():
                    before = old.devices.get(slot)
                    if before is None or _device_key(before) != _device_key(status):
                        since[slot] = now if not fresh else state.status_since
                for slot in list(since):
                    if slot not in devices:
                        del since[slot]
                changes["device_since"] = since
        status = state.status
        if status != old.status or state.status_since != old.status_since:
            changes["status"] = status
            changes["status_since"] = state.status_since
            if status not in _UNREACHABLE:
                changes["down_since"] = None
            elif not (old.status == "silent" and status == "offline" and old.down_since):
                changes["down_since"] = state.status_since
        return dataclasses.replace(old, **changes) if changes else old

    def _host_levels(
        self, host: Mapping[str, Any], district: str | None, site_type: str | None
    ) -> tuple[Severity | None, ...]:
        levels: list[Severity | None] = []
        for rule in self.policy.rules_for(district, site_type).host:
            value = host.get(rule.metric)
            levels.append(None if value is None else rule.severity(value))
        return tuple(levels)

    @staticmethod
    def _signature(pic: _Picture) -> tuple[Any, ...]:
        return (
            pic.status,
            pic.down_since,
            pic.devices_version,
            pic.host_levels,
            pic.site,
            pic.site_type,
        )

    def _picture(self, state: StationView, pic: _Picture) -> StationPicture:
        d = state.description
        return StationPicture(
            station=state.id,
            status=state.status,  # type: ignore[arg-type]
            since=state.status_since,
            district=d.get("district"),
            site=d.get("site"),
            site_type=d.get("site_type"),
            devices=state.devices,
            device_since=pic.device_since,
            host={k: v for k, v in pic.host.items() if v is not None},
            down_since=pic.down_since,
        )

    def _update_picture(
        self, state: StationView, host: Mapping[str, Any] | None, now: float
    ) -> tuple[_Picture, bool]:
        """Take in what changed; (the picture, whether it changed since last evaluated)."""
        old = self._pictures.get(state.id)
        pic = self._observe(state, host, now)
        if old is None or pic.site != old.site:
            if old is not None and old.site is not None:
                self._pop(self._members.get(old.site, {}), state.id)
            if pic.site is not None:
                members = self._members.get(pic.site)
                if members is None:
                    members = {}
                    self._set(self._members, pic.site, members)
                self._set(members, state.id, None)
        if pic is old:
            # unchanged since it was last stored, and every stored change gets evaluated
            return pic, pic.signature is None
        self._set(self._pictures, state.id, pic)
        return pic, pic.signature != self._signature(pic)

    # -- deciding ----------------------------------------------------------------------------
    def decide(
        self,
        touched: Iterable[StationView],
        hosts: Mapping[str, Mapping[str, Any]],
        now: float,
    ) -> Plan:
        """After a batch: evaluate the stations whose picture changed (and their sites).

        Args:
            touched: the stations the batch touched (their state after it).
            hosts: station → the latest host metrics its batch brought (current session).
        """
        self._reload_stale_needed()
        changed = []
        for state in touched:
            _, moved = self._update_picture(state, hosts.get(state.id), now)
            if moved or state.id in self._reeval:
                changed.append(state.id)
        return self._evaluate(changed, now)

    def _reload_stale_needed(self) -> None:
        if self._stale:
            raise RuntimeError("Alerting.reload_stale() must run before deciding")

    def _evaluate(self, station_ids: Iterable[str], now: float) -> Plan:
        plan = Plan()
        wanted = [s for s in dict.fromkeys(station_ids) if s in self.stations]
        if not wanted:
            return plan
        suppressed_by = self._suppressor(now)
        grouped: dict[SiteKey, frozenset[str]] = {}
        order: dict[str, None] = {}
        for station_id in wanted:
            pic = self._pictures.get(station_id)
            key = pic.site if pic is not None else None
            if key is not None and key not in grouped:
                decision = self._decide_site(key, now, suppressed_by)
                grouped[key] = decision.grouped
                self._apply_all(decision.transitions, plan, now)
                # members the incident now speaks for resolve their own alerts (grouped)
                for member in decision.grouped:
                    if self._by_station.get(member):
                        order.setdefault(member, None)
            order.setdefault(station_id, None)
        for station_id in order:
            state = self.stations.get(station_id)
            if state is None:
                continue
            pic = self._pictures.get(station_id)
            if pic is None:
                pic, _ = self._update_picture(state, None, now)
            picture = self._picture(state, pic)
            found = rules.evaluate(picture, self.policy, now)
            key = pic.site
            transitions = lifecycle.evaluate(
                station=station_id,
                district=picture.district,
                site=picture.site,
                alerts=self._station_alerts(station_id),
                evaluation=found,
                now=now,
                flapping=self.settings.flapping,
                new_id=self.new_id,
                grouped=key is not None and station_id in grouped.get(key, frozenset()),
                suppressed_by=suppressed_by,
            )
            self._apply_all(transitions, plan, now)
            self._set(
                self._pictures,
                station_id,
                dataclasses.replace(pic, signature=self._signature(pic)),
            )
            self._pop_reeval(station_id)
            self._schedule_station(station_id, pic, now)
        return plan

    def _pop_reeval(self, station_id: str) -> None:
        # not journaled: a failed transaction puts the station back (rollback)
        self._reeval.discard(station_id)

    def _decide_site(
        self, key: SiteKey, now: float, suppressed_by: lifecycle.SuppressFn
    ) -> sites.SiteDecision:
        members = []
        for station_id in self._members.get(key, ()):
            state = self.stations.get(station_id)
            pic = self._pictures.get(station_id)
            if state is None or pic is None:
                continue
            since = pic.down_since if pic.down_since is not None else state.status_since
            members.append(sites.Member(station_id, state.status, since))  # type: ignore[arg-type]
        return sites.evaluate(
            district=key[0],
            site=key[1],
            members=members,
            incidents=self._incidents(key),
            policy=self.policy,
            now=now,
            new_id=self.new_id,
            suppressed_by=suppressed_by,
        )

    def _apply_all(self, transitions: Iterable[Transition], plan: Plan, now: float) -> None:
        for transition in transitions:
            self._remember(transition.alert, now)
            if transition.kind == "suppression" and transition.alert.suppressed_by is None:
                self._set(self._clock_from, transition.alert.id, now)
            plan.transitions.append(transition)

    def _suppressor(self, now: float) -> lifecycle.SuppressFn:
        maintenance, silences = self._maintenance, self._silences
        if not maintenance and not silences:
            return lambda alert: None
        return lambda alert: suppress.suppressed_by(alert, now, maintenance, silences)

    # -- time --------------------------------------------------------------------------------
    def _push(self, when: float, kind: str, key: str) -> None:
        heapq.heappush(self._due, (when, next(self._tiebreak), kind, key))

    def _schedule_station(self, station_id: str, pic: _Picture, now: float) -> None:
        """Wake the station up when its offline alert (and its site's decision) falls due, and
        when a flapping alert of it may end; a wake-up too many costs one evaluation."""
        if pic.status in _UNREACHABLE:
            since = pic.down_since if pic.down_since is not None else pic.status_since
            due = since + self.policy.offline_alert_after
            if due > now:
                self._push(due, "station", station_id)
        quiet = self.settings.flapping.quiet
        for alert_id in self._by_station.get(station_id, ()):
            alert = self.alerts[alert_id]
            if alert.condition == FLAPPING and alert.unresolved:
                last = float(alert.details.get("last_change", alert.opened_at))
                self._push(max(last + quiet, now + 0.001), "station", station_id)

    def _routing(self, alert: Alert, now: float) -> dict[str, Any]:
        """The routing columns: the team it has been notified to, that level, and when it
        escalates next (now, if overdue: the sweep then notifies)."""
        teams = teams_for(alert.district, self.routing)
        level = self._levels.get(alert.id, 0)
        if not teams:
            return {"team": None, "level": level, "next_escalation_at": None}
        where = route(alert, now, self.routing, clock_from=self._clock_from.get(alert.id))
        following = where.next_escalation_at
        if alert.state == "open" and alert.suppressed_by is None and where.level > level:
            following = now
        if alert.state != "open":
            following = None
        return {
            "team": teams[min(level, len(teams) - 1)],
            "level": level,
            "next_escalation_at": following,
        }

    def _schedule_escalation(self, alert: Alert, now: float) -> None:
        if alert.state != "open":
            return
        when = self._routing(alert, now)["next_escalation_at"]
        if when is not None:
            self._push(when, "escalate", alert.id)

    # -- writing -----------------------------------------------------------------------------
    def write(self, conn: Connection, plan: Plan, now: float) -> None:
        """Write ``plan`` in the caller's transaction: each transition and its history line,
        the routing columns, and the notification rows."""
        receivers, routing = self.receivers, self.routing
        for transition in plan.transitions:
            alert = transition.alert
            extra = self._routing(alert, now)
            if transition.kind == "open":
                state = self.stations.get(alert.station or (alert.stations or ("",))[0])
                if state is not None:
                    extra["site_type"] = state.description.get("site_type")
            if not write_transition(conn, transition, now, **extra):
                # someone (a person, through the API) changed it since: read it back and
                # decide its station again at the next sweep
                log.info("alert %s changed under us (%s): read back", alert.id, transition.kind)
                if transition.before is not None and self.alerts.get(alert.id) == alert:
                    self._keep(transition.before)
                self._reread.add(alert.id)
                if alert.station is not None:
                    self._reeval.add(alert.station)
                continue
            self.written += 1
            rows = notifications_for(
                transition, receivers, routing, clock_from=self._clock_from.get(alert.id)
            )
            insert_rows(conn, rows)
            if extra["next_escalation_at"] is not None:
                self._push(extra["next_escalation_at"], "escalate", alert.id)
        for escalation in plan.escalations:
            self._write_escalation(conn, escalation, now)

    def _write_escalation(self, conn: Connection, escalation: Escalation, now: float) -> None:
        alert = escalation.alert
        before = self._levels.get(alert.id, 0)
        self._set(self._levels, alert.id, escalation.level)
        extra = self._routing(alert, now)
        done = conn.execute(
            update(ALERT)
            .where(ALERT.c.id == alert.id, ALERT.c.state == "open", ALERT.c.level == before)
            .values(updated_at=now, **extra)
        )
        if done.rowcount != 1:
            self._set(self._levels, alert.id, before)
            self._reread.add(alert.id)
            return
        conn.execute(
            insert(HISTORY).values(
                alert_id=alert.id,
                at=now,
                action="escalate",
                by=None,
                note=None,
                details={"level": escalation.level, "team": escalation.team},
            )
        )
        insert_rows(conn, notifications_for(escalation, self.receivers, self.routing))
        self.written += 1
        if extra["next_escalation_at"] is not None:
            self._push(extra["next_escalation_at"], "escalate", alert.id)

    # -- the sweep ---------------------------------------------------------------------------
    def reload_stale(self, engine: Engine, now: float) -> None:
        """After a failed transaction: read back the alerts of the stations it involved and of
        their sites (the database is the truth: the COMMIT may have gone through)."""
        if not self._stale:
            return
        stations = sorted(self._stale)
        site_keys = {
            p.site for s in stations if (p := self._pictures.get(s)) is not None and p.site
        }
        found: dict[str, tuple[Alert, int]] = {}
        with engine.connect() as conn:
            for start in range(0, len(stations), 500):
                chunk = stations[start : start + 500]
                query = select(ALERT).where(ALERT.c.station.in_(chunk))
                for row in conn.execute(query).mappings():
                    found[row["id"]] = (_alert_of(row), int(row["level"]))
            for district, site in site_keys:
                query = select(ALERT).where(
                    ALERT.c.district == district,
                    ALERT.c.site == site,
                    ALERT.c.station.is_(None),
                )
                for row in conn.execute(query).mappings():
                    found[row["id"]] = (_alert_of(row), int(row["level"]))
        for station in stations:
            for alert_id in list(self._by_station.get(station, ())):
                self._forget(self.alerts[alert_id])
        for key in site_keys:
            for alert_id in list(self._by_site.get(key, ())):
                self._forget(self.alerts[alert_id])
        for alert, level in found.values():
            if self._kept(alert, now):
                self._keep(alert)
                self._levels[alert.id] = level
        self._stale.clear()

    def refresh(self, engine: Engine, now: float) -> None:
        """Before a sweep decides (outside its journal: this is the database's truth): read
        back what a failed transaction touched, take in people's changes, read silences and
        maintenance, forget what is no longer kept."""
        self.reload_stale(engine, now)
        if now - self._pruned_at >= _PRUNE_EVERY:
            self._prune(now)
        with engine.connect() as conn:
            self._take_people_changes(conn, now)
            self._suppression_moved = self._load_suppressions(conn, now) or (
                self._suppression_moved
            )

    def sweep(self, now: float, changed: Iterable[str]) -> Plan:
        """What the sweep must write (after :meth:`refresh`): suppressions that began or
        ended, and whatever fell due; ``changed``: stations whose status the sweep changed."""
        self._reload_stale_needed()
        plan = Plan()
        if self._suppression_moved:
            self._suppression_moved = False
            unresolved = [a for a in self.alerts.values() if a.unresolved]
            self._apply_all(
                suppress.changes(unresolved, now, self._maintenance, self._silences), plan, now
            )
        stations = set(changed) | self._reeval
        escalate: set[str] = set()
        while self._due and self._due[0][0] <= now:
            _, _, kind, key = heapq.heappop(self._due)
            if kind == "station":
                stations.add(key)
            else:
                escalate.add(key)
        self._escalating = sorted(escalate)
        self._sweeping = set(stations)
        for station_id in stations:
            state = self.stations.get(station_id)
            if state is not None:
                self._update_picture(state, None, now)
        evaluated = self._evaluate(sorted(stations), now)
        plan.transitions.extend(evaluated.transitions)
        for alert_id in sorted(escalate):
            alert = self.alerts.get(alert_id)
            if alert is None or alert.state != "open":
                continue
            escalation = escalation_due(
                alert,
                now,
                self.routing,
                notified_level=self._levels.get(alert_id, 0),
                clock_from=self._clock_from.get(alert_id),
            )
            if escalation is not None:
                plan.escalations.append(escalation)
            else:
                self._schedule_escalation(alert, now)
        return plan

    def _take_people_changes(self, conn: Connection, now: float) -> None:
        """Replace memory copies by the rows changed since the last look (people's ack and
        resolve through the API; our own writes come back equal), and read back the alerts
        an update of ours found changed."""
        since = self._last_look - _REREAD_MARGIN
        query = select(ALERT).where(ALERT.c.updated_at > since)
        if self._reread:
            query = select(ALERT).where(
                or_(ALERT.c.updated_at > since, ALERT.c.id.in_(sorted(self._reread)))
            )
            self._reread.clear()
        for row in conn.execute(query).mappings():
            alert = _alert_of(row)
            self._last_look = max(self._last_look, float(row["updated_at"]))
            known = self.alerts.get(alert.id)
            level = int(row["level"])
            if level > self._levels.get(alert.id, 0):
                self._set(self._levels, alert.id, level)
            if known == alert:
                continue
            if known is None and not self._kept(alert, now):
                continue
            self._remember(alert, now)
            if alert.station is not None:
                self._reeval.add(alert.station)
            elif alert.district is not None and alert.site is not None:
                self._reeval.update(self._members.get((alert.district, alert.site), ()))
            if alert.state == "open":
                self._schedule_escalation(alert, now)

    def _load_suppressions(self, conn: Connection, now: float) -> bool:
        """Read the silences and maintenance in force or to come; whether what suppresses
        what may have changed (new rows, or one began or ended)."""
        silences = []
        for row in conn.execute(select(_SILENCE).where(_SILENCE.c.expires_at > now)).mappings():
            try:
                silences.append(
                    suppress.Silence(
                        id=row["id"],
                        matchers=row["matchers"],
                        author=row["author"],
                        reason=row["reason"],
                        starts_at=row["starts_at"],
                        expires_at=row["expires_at"],
                    )
                )
            except ValueError as err:  # the API validates; a bad row must not stop alerts
                log.error("silence %s ignored: %s", row["id"], err)
        maintenance = []
        query = select(_MAINTENANCE).where(_MAINTENANCE.c.until > now)
        for row in conn.execute(query).mappings():
            try:
                maintenance.append(
                    suppress.Maintenance(
                        station=row["station"],
                        until=row["until"],
                        by=row["by"],
                        reason=row["reason"] or "",
                        starts_at=row["starts_at"],
                    )
                )
            except ValueError as err:
                log.error("maintenance %s ignored: %s", row["id"], err)
        seen = (tuple(silences), tuple(maintenance))
        moved = seen != self._suppress_seen
        due = self._suppress_next
        if due is not None and due <= now:
            moved = True
        self._suppress_seen = seen
        self._silences, self._maintenance = silences, maintenance
        self._suppress_next = suppress.next_change(now, maintenance, silences)
        return moved

    def _prune(self, now: float) -> None:
        """Forget alerts no longer kept (cleared cycles past the flapping window)."""
        self._pruned_at = now
        for alert in list(self.alerts.values()):
            if not self._kept(alert, now):
                self._forget(alert)
                self._levels.pop(alert.id, None)
                self._clock_from.pop(alert.id, None)
