"""An in-memory alert table for the alert tests: the thin shell the writer will be, without a
database. It applies transitions the way the writer will (an insert for ``open``, an update
conditional on the row still being ``before`` otherwise) and fails loudly when one does not
apply, so a test sees a lifecycle that decides on stale state."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from kioskfleet.controller.alerts import lifecycle, rules, sites
from kioskfleet.controller.alerts.config import AlertPolicy, AlertsSettings
from kioskfleet.controller.alerts.model import SITE_OFFLINE, Alert, HistoryEntry, Transition
from kioskfleet.controller.alerts.rules import StationPicture
from kioskfleet.controller.alerts.suppress import Maintenance, Silence, suppressed_by

T0 = 1_800_000_000.0


def device(
    kind: str,
    state: str = "online",
    faults: Iterable[str] = (),
    **extra: Any,
) -> dict[str, Any]:
    """A §5 device status as the controller stores it."""
    drivers = {
        "printer": "escpos",
        "cash_acceptor": "ssp",
        "coin_acceptor": "cctalk",
        "id_reader": "ga467",
        "card_reader": "crt591",
    }
    status: dict[str, Any] = {
        "device": kind,
        "driver": drivers[kind],
        "state": state,
        "faults": list(faults),
        "info": {"model": "M", "serial": None, "firmware": None},
    }
    status.update(extra)
    return status


def healthy_devices() -> dict[str, dict[str, Any]]:
    """A station's five devices, all well."""
    return {
        "printer": device("printer", supplies={"paper": "full"}),
        "cash_acceptor": device("cash_acceptor", supplies={"cashbox": "ok"}),
        "coin_acceptor": device("coin_acceptor"),
        "id_reader": device("id_reader"),
        "card_reader": device("card_reader", media="not_present"),
    }


def picture(
    station: str = "kiosk-001",
    status: str = "online",
    since: float = T0,
    *,
    district: str = "binhu",
    site: str = "site-a",
    site_type: str = "subway_station",
    devices: Mapping[str, Mapping[str, Any]] | None = None,
    host: Mapping[str, float] | None = None,
    down_since: float | None = None,
) -> StationPicture:
    """A station's picture with sensible defaults."""
    return StationPicture(
        station=station,
        status=status,  # type: ignore[arg-type]
        since=since,
        district=district,
        site=site,
        site_type=site_type,
        devices=healthy_devices() if devices is None else devices,
        host={"disk_percent": 40.0, "memory_percent": 50.0, "temperature_c": 45.0}
        if host is None
        else host,
        down_since=down_since,
    )


class Book:
    """Alert rows and their history, in memory."""

    def __init__(
        self,
        settings: AlertsSettings | None = None,
        *,
        offline_alert_after: float = 120.0,
    ) -> None:
        self.settings = settings or AlertsSettings()
        self.policy: AlertPolicy = self.settings.policy(offline_alert_after=offline_alert_after)
        self.alerts: dict[str, Alert] = {}
        self.history: list[HistoryEntry] = []
        self.maintenance: list[Maintenance] = []
        self.silences: list[Silence] = []
        self._ids = itertools.count(1)

    def new_id(self) -> str:
        return f"alert-{next(self._ids)}"

    def apply(self, transitions: Iterable[Transition]) -> list[Transition]:
        applied = list(transitions)
        for t in applied:
            if t.kind == "open":
                assert t.before is None
                assert t.alert.id not in self.alerts
            else:
                assert self.alerts[t.alert.id] == t.before, f"stale {t.kind} of {t.alert.id}"
            self.alerts[t.alert.id] = t.alert
            self.history.append(t.entry)
        return applied

    def suppress(self, now: float) -> lifecycle.SuppressFn:
        return lambda alert: suppressed_by(alert, now, self.maintenance, self.silences)

    def kept(self, now: float) -> list[Alert]:
        return [a for a in self.alerts.values() if lifecycle.keep(a, now, self.settings.flapping)]

    def step(self, pic: StationPicture, now: float, *, grouped: bool = False) -> list[Transition]:
        """Evaluate one station at ``now`` and apply what it decides."""
        found = rules.evaluate(pic, self.policy, now)
        return self.apply(
            lifecycle.evaluate(
                station=pic.station,
                district=pic.district,
                site=pic.site,
                alerts=self.kept(now),
                evaluation=found,
                now=now,
                flapping=self.settings.flapping,
                new_id=self.new_id,
                grouped=grouped,
                suppressed_by=self.suppress(now),
            )
        )

    def tick(self, pictures: Iterable[StationPicture], now: float) -> list[Transition]:
        """Evaluate a fleet at ``now``: each site first, then its stations."""
        by_site: dict[tuple[str | None, str | None], list[StationPicture]] = {}
        for pic in pictures:
            by_site.setdefault((pic.district, pic.site), []).append(pic)
        out: list[Transition] = []
        for (district, site), members in by_site.items():
            decision = sites.evaluate(
                district=district,
                site=site,
                members=[sites.Member(p.station, p.status, p.unreachable_since) for p in members],
                incidents=[
                    a
                    for a in self.alerts.values()
                    if a.condition == SITE_OFFLINE
                    and (a.district, a.site) == (district, site)
                    and (a.unresolved or a.awaiting_clear)
                ],
                policy=self.policy,
                now=now,
                new_id=self.new_id,
                suppressed_by=self.suppress(now),
            )
            out.extend(self.apply(decision.transitions))
            for pic in members:
                out.extend(self.step(pic, now, grouped=pic.station in decision.grouped))
        return out

    # -- views ------------------------------------------------------------------------------
    def unresolved(self, station: str | None = None) -> list[Alert]:
        return [
            a
            for a in self.alerts.values()
            if a.unresolved and (station is None or a.station == station)
        ]

    def of(self, station: str | None, condition: str) -> list[Alert]:
        return [
            a for a in self.alerts.values() if a.station == station and a.condition == condition
        ]

    def sites_open(self) -> list[Alert]:
        return [a for a in self.alerts.values() if a.condition == SITE_OFFLINE and a.unresolved]
