"""Alerts decided in the writer (decision 27): real messages through ``FleetStore``, alert rows,
history and notification rows written in the batch's (or the sweep's) own transaction, on
SQLite and PostgreSQL, with injected times."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, func, select

from kioskfleet.controller.alertrows import ALERT, HISTORY, alert_of, write_transition
from kioskfleet.controller.alerts import lifecycle
from kioskfleet.controller.alerts.config import AlertsSettings, Routing
from kioskfleet.controller.alerts.model import Alert
from kioskfleet.controller.db import make_engine, migrate
from kioskfleet.controller.models import MaintenanceRow, Notification, SilenceRow
from kioskfleet.controller.notify.config import ReceiversSettings, Webhook
from kioskfleet.controller.store import FleetStore
from kioskfleet.protocol import decode_agent_message

T0 = 1_700_000_000.0
DISTRICT = "Binhu"
SITE = "Binhu government service center"
STATION = "wx-binhu-gsc-01"
NOTIFICATION = Notification.__table__  # type: ignore[attr-defined]

RECEIVERS = ReceiversSettings(
    webhooks={
        "binhu-hook": Webhook(url="http://127.0.0.1:9/binhu"),
        "second-hook": Webhook(url="http://127.0.0.1:9/second"),
    },
    teams={"binhu-techs": ["binhu-hook"], "second-line": ["second-hook"]},
)
RULES = AlertsSettings(
    routing=Routing(
        teams={DISTRICT: ["binhu-techs", "second-line"]},
        ack_within={"critical": 600.0, "warning": 3600.0},
    )
)


def _msg(station: str, session: int, kind: str, seq: int, **body: Any) -> tuple[str, Any]:
    payload = {"v": 1, "station": station, "session": session, "seq": seq, "ts": 1.0, **body}
    return kind, decode_agent_message(kind, station, json.dumps(payload).encode())


def _printer(state: str = "online", *faults: str, paper: str = "full") -> dict[str, Any]:
    return {
        "device": "printer",
        "driver": "escpos",
        "state": state,
        "faults": list(faults),
        "supplies": {"paper": paper},
    }


PAPER_OUT = _printer("user_error", "paper_out", paper="out")
HEALTHY = _printer()


def _birth(station: str = STATION, session: int = 5, site: str = SITE) -> tuple[str, Any]:
    return _msg(
        station,
        session,
        "state",
        0,
        online=True,
        district=DISTRICT,
        site=site,
        site_type="government_service_center",
        profile="estation-gen2",
        telemetry_interval=600,
        devices={"printer": HEALTHY},
    )


def _death(station: str = STATION, session: int = 5) -> tuple[str, Any]:
    return _msg(station, session, "state", 0, online=False)


def _printer_event(seq: int, status: dict[str, Any], session: int = 5) -> tuple[str, Any]:
    return _msg(
        STATION,
        session,
        "events",
        seq,
        events=[{"type": "device_status", "device": "printer", "status": status}],
    )


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    migrate(engine)
    yield engine
    engine.dispose()


def _store(engine: Engine, **kwargs: Any) -> FleetStore:
    return FleetStore(
        engine,
        alerts=kwargs.pop("alerts", RULES),
        receivers=kwargs.pop("receivers", RECEIVERS),
        offline_alert_after=kwargs.pop("offline_alert_after", 120.0),
        started=kwargs.pop("started", T0),
    )


def _alerts(engine: Engine, **where: Any) -> list[Alert]:
    query = select(ALERT).order_by(ALERT.c.opened_at, ALERT.c.id)
    for name, value in where.items():
        query = query.where(ALERT.c[name] == value)
    with engine.connect() as conn:
        return [alert_of(row) for row in conn.execute(query).mappings()]


def _history(engine: Engine, alert_id: str) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(HISTORY.c.action)
                .where(HISTORY.c.alert_id == alert_id)
                .order_by(HISTORY.c.id)
            ).scalars()
        )


def _notifications(engine: Engine) -> list[tuple[str, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(NOTIFICATION.c.alert_id, NOTIFICATION.c.kind, NOTIFICATION.c.receiver).order_by(
                NOTIFICATION.c.id
            )
        ).all()
    return [(r[0], r[1], r[2]) for r in rows]


def _count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _running(engine: Engine) -> FleetStore:
    """A store with one healthy station reporting (session 5, seqs 1–2 used)."""
    store = _store(engine)
    store.apply([_birth(), _msg(STATION, 5, "telemetry", 1, devices={"printer": HEALTHY})], T0)
    assert _alerts(engine) == []
    return store


def test_a_fault_event_opens_one_alert_with_history_and_notification_and_clears(
    engine: Engine,
) -> None:
    store = _running(engine)
    out = store.apply([_printer_event(2, PAPER_OUT)], T0 + 10)
    assert out.alerts == 1
    [alert] = _alerts(engine)
    assert (alert.station, alert.device, alert.condition, alert.severity, alert.state) == (
        STATION,
        "printer",
        "paper_out",
        "critical",
        "open",
    )
    assert (alert.district, alert.site, alert.opened_at) == (DISTRICT, SITE, T0 + 10)
    assert _history(engine, alert.id) == ["open"]
    assert _notifications(engine) == [(alert.id, "opened", "binhu-hook")]
    with engine.connect() as conn:
        row = conn.execute(select(ALERT).where(ALERT.c.id == alert.id)).mappings().one()
    assert (row["team"], row["level"], row["next_escalation_at"]) == ("binhu-techs", 0, T0 + 610)
    assert row["site_type"] == "government_service_center"

    # telemetry that says the same changes nothing
    store.apply([_msg(STATION, 5, "telemetry", 3, devices={"printer": PAPER_OUT})], T0 + 20)
    assert len(_alerts(engine)) == 1 and _history(engine, alert.id) == ["open"]

    store.apply([_printer_event(4, HEALTHY)], T0 + 30)
    [resolved] = _alerts(engine)
    assert (resolved.state, resolved.resolution, resolved.resolved_at) == (
        "resolved",
        "cleared",
        T0 + 30,
    )
    assert _history(engine, alert.id) == ["open", "resolve"]
    assert [n[1] for n in _notifications(engine)] == ["opened", "resolved"]


def test_a_replayed_batch_doubles_nothing(engine: Engine) -> None:
    store = _running(engine)
    batch = [_printer_event(2, PAPER_OUT), _msg(STATION, 5, "telemetry", 3)]
    store.apply(batch, T0 + 10)
    again = store.apply(batch, T0 + 11)
    assert again.duplicates == 2 and again.alerts == 0
    # and after a restart, which reads the alerts back
    restarted = _store(engine)
    assert restarted.apply(batch, T0 + 12).alerts == 0
    [alert] = _alerts(engine)
    assert _history(engine, alert.id) == ["open"]
    assert len(_notifications(engine)) == 1


def _lose_the_next_commit(engine: Engine, *, committed: bool) -> None:
    """The next COMMIT raises, after it went through (``committed``) or before (nothing
    stored). A SQLAlchemy event, not our code."""
    fired: list[bool] = []

    def on_commit(conn: Connection) -> None:
        if fired:
            return
        fired.append(True)
        if committed:
            conn.connection.dbapi_connection.commit()  # type: ignore[union-attr]
        raise ConnectionResetError("the connection dropped around COMMIT")

    event.listen(engine, "commit", on_commit)


@pytest.mark.parametrize("committed", [True, False], ids=["commit-went-through", "commit-failed"])
def test_a_failed_commit_leaves_alerts_as_they_were_and_the_retry_stores_once(
    engine: Engine, committed: bool
) -> None:
    store = _running(engine)
    batch = [_printer_event(2, PAPER_OUT)]
    _lose_the_next_commit(engine, committed=committed)
    with pytest.raises(ConnectionResetError):
        store.apply(batch, T0 + 10)
    assert store.alerting.alerts == {}  # memory as it was
    if not committed:
        assert _alerts(engine) == [] and _notifications(engine) == []
    out = store.apply(batch, T0 + 11)
    assert out.duplicates == (1 if committed else 0)
    [alert] = _alerts(engine)
    assert alert.state == "open"
    assert _history(engine, alert.id) == ["open"]
    assert len(_notifications(engine)) == 1
    assert list(store.alerting.alerts) == [alert.id]
    # it still clears normally
    store.apply([_printer_event(3, HEALTHY)], T0 + 20)
    assert [a.state for a in _alerts(engine)] == ["resolved"]


def test_a_backlog_of_an_older_session_opens_nothing(engine: Engine) -> None:
    store = _store(engine)
    store.apply([_birth(session=6), _msg(STATION, 6, "telemetry", 1)], T0)
    out = store.apply([_printer_event(7, PAPER_OUT, session=5)], T0 + 5)
    assert out.stored == {"events": 1}
    assert _alerts(engine) == []
    # the current session's own fault does
    store.apply([_printer_event(2, PAPER_OUT, session=6)], T0 + 6)
    assert [a.condition for a in _alerts(engine)] == ["paper_out"]


def test_an_offline_station_alerts_only_after_offline_alert_after(engine: Engine) -> None:
    store = _running(engine)
    store.apply([_death()], T0 + 100)
    store.sweep(T0 + 150)
    store.sweep(T0 + 219)
    assert _alerts(engine) == []
    store.sweep(T0 + 221)
    [alert] = _alerts(engine)
    assert (alert.condition, alert.device, alert.severity, alert.state) == (
        "offline",
        None,
        "critical",
        "open",
    )
    assert alert.details["since"] == T0 + 100
    store.sweep(T0 + 222)
    assert len(_alerts(engine)) == 1
    # back: it resolves
    store.apply([_birth(session=6)], T0 + 300)
    assert [(a.state, a.resolution) for a in _alerts(engine)] == [("resolved", "cleared")]


def test_a_short_outage_raises_nothing(engine: Engine) -> None:
    store = _running(engine)
    store.apply([_death()], T0 + 100)
    store.apply([_birth(session=6)], T0 + 150)
    store.sweep(T0 + 300)
    assert _alerts(engine) == []


def test_a_site_dropping_together_is_one_incident(engine: Engine) -> None:
    store = _store(engine)
    kiosks = [f"wx-binhu-gsc-{n:02d}" for n in range(1, 5)]
    store.apply([_birth(k) for k in kiosks], T0)
    # the first has its printer out before the site drops: its alert closes as grouped
    store.apply([_printer_event(1, PAPER_OUT)], T0 + 1)
    assert [a.condition for a in _alerts(engine)] == ["paper_out"]
    store.apply([_death(kiosks[0])], T0 + 10)
    store.apply([_death(kiosks[1])], T0 + 15)
    store.apply([_death(kiosks[2])], T0 + 20)
    store.sweep(T0 + 129)
    assert len(_alerts(engine, state="open")) == 1  # nothing due yet
    store.sweep(T0 + 131)  # the first one's own alert would be due now
    [incident] = _alerts(engine, condition="site_offline")
    assert incident.stations == tuple(kiosks[:3]) and incident.station is None
    assert (incident.district, incident.site, incident.state) == (DISTRICT, SITE, "open")
    [paper] = _alerts(engine, condition="paper_out")
    assert (paper.state, paper.resolution) == ("resolved", "grouped")
    # a later member joins; no kiosk gets an offline alert of its own
    store.apply([_death(kiosks[3])], T0 + 140)
    for t in (T0 + 200, T0 + 300, T0 + 400):
        store.sweep(t)
    assert _alerts(engine, condition="offline") == []
    [incident] = _alerts(engine, condition="site_offline")
    assert incident.stations == tuple(kiosks)
    assert _history(engine, incident.id) == ["open", "join"]
    # resolves when every member is back
    store.apply([_birth(k, session=6) for k in kiosks[:3]], T0 + 500)
    assert _alerts(engine, condition="site_offline")[0].state == "open"
    store.apply([_birth(kiosks[3], session=6)], T0 + 510)
    [incident] = _alerts(engine, condition="site_offline")
    assert (incident.state, incident.resolution) == ("resolved", "cleared")


def test_two_of_a_bigger_site_alert_on_their_own(engine: Engine) -> None:
    store = _store(engine)
    kiosks = [f"wx-binhu-gsc-{n:02d}" for n in range(1, 6)]
    store.apply([_birth(k) for k in kiosks], T0)
    store.apply([_death(kiosks[0]), _death(kiosks[1])], T0 + 10)
    store.sweep(T0 + 131)
    assert _alerts(engine, condition="site_offline") == []
    assert sorted(a.station or "" for a in _alerts(engine, condition="offline")) == kiosks[:2]


def _maintenance(engine: Engine, station: str, start: float, until: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            MaintenanceRow.__table__.insert().values(  # type: ignore[attr-defined]
                id="m1",
                station=station,
                by="wang",
                reason="paper",
                starts_at=start,
                until=until,
                created_at=start,
            )
        )


def test_maintenance_suppresses_notifications_and_ends_by_itself(engine: Engine) -> None:
    store = _running(engine)
    _maintenance(engine, STATION, T0 + 5, T0 + 100)
    store.sweep(T0 + 6)  # the writer reads maintenance in its sweep
    store.apply([_printer_event(2, PAPER_OUT)], T0 + 10)
    [alert] = _alerts(engine)
    assert alert.state == "open" and alert.suppressed_by == f"maintenance:{STATION}"
    assert _notifications(engine) == []
    store.sweep(T0 + 50)
    assert _notifications(engine) == []
    store.sweep(T0 + 101)  # it ended, the printer still out of paper: now it is notified
    [alert] = _alerts(engine)
    assert alert.suppressed_by is None
    assert _history(engine, alert.id) == ["open", "suppression"]
    assert _notifications(engine) == [(alert.id, "opened", "binhu-hook")]


def test_a_silence_added_later_suppresses_an_open_alert(engine: Engine) -> None:
    store = _running(engine)
    store.apply([_printer_event(2, PAPER_OUT)], T0 + 10)
    with engine.begin() as conn:
        conn.execute(
            SilenceRow.__table__.insert().values(  # type: ignore[attr-defined]
                id="s1",
                matchers=[{"label": "condition", "value": "paper_out"}],
                author="li",
                reason="paper delivery late",
                starts_at=T0 + 15,
                expires_at=T0 + 60,
                created_at=T0 + 15,
            )
        )
    store.sweep(T0 + 20)
    [alert] = _alerts(engine)
    assert alert.suppressed_by == "silence:s1"
    store.sweep(T0 + 61)
    [alert] = _alerts(engine)
    assert alert.suppressed_by is None
    assert [n[1] for n in _notifications(engine)] == ["opened", "opened"]


def _person(engine: Engine, alert: Alert, action: str, now: float) -> None:
    """What the API does: a person's change, written conditionally, ``updated_at`` bumped."""
    if action == "ack":
        transition = lifecycle.acknowledge(alert, by="wang", now=now, note="on my way")
    else:
        transition = lifecycle.resolve(alert, by="wang", now=now)
    with engine.begin() as conn:
        assert write_transition(conn, transition, now)


def test_an_acknowledged_alert_resolves_itself_when_its_condition_clears(engine: Engine) -> None:
    store = _running(engine)
    store.apply([_printer_event(2, PAPER_OUT)], T0 + 10)
    [alert] = _alerts(engine)
    _person(engine, alert, "ack", T0 + 20)
    store.sweep(T0 + 21)
    assert store.alerting.alerts[alert.id].state == "acknowledged"
    store.apply([_printer_event(3, HEALTHY)], T0 + 30)
    [alert] = _alerts(engine)
    assert (alert.state, alert.resolution, alert.acknowledged_by) == ("resolved", "cleared", "wang")
    assert _history(engine, alert.id) == ["open", "acknowledge", "resolve"]


def test_an_ack_the_writer_has_not_seen_yet_is_not_overwritten(engine: Engine) -> None:
    """The writer decides from the open state; the row was acknowledged meanwhile: its update
    finds nothing to change, it reads the alert back and decides again."""
    store = _running(engine)
    store.apply([_printer_event(2, PAPER_OUT)], T0 + 10)
    [alert] = _alerts(engine)
    _person(engine, alert, "ack", T0 + 20)
    store.apply([_printer_event(3, HEALTHY)], T0 + 21)  # no sweep in between
    [stale] = _alerts(engine)
    assert stale.state == "acknowledged"
    store.sweep(T0 + 22)
    [alert] = _alerts(engine)
    assert (alert.state, alert.resolution) == ("resolved", "cleared")
    assert _history(engine, alert.id) == ["open", "acknowledge", "resolve"]


def test_a_person_resolving_a_failing_device_is_not_reopened_until_it_clears(
    engine: Engine,
) -> None:
    store = _running(engine)
    store.apply([_printer_event(2, PAPER_OUT)], T0 + 10)
    [alert] = _alerts(engine)
    _person(engine, alert, "resolve", T0 + 20)
    store.sweep(T0 + 21)
    store.apply([_msg(STATION, 5, "telemetry", 3, devices={"printer": PAPER_OUT})], T0 + 30)
    store.apply([_printer_event(4, _printer("user_error", "paper_out", paper="out"))], T0 + 31)
    store.sweep(T0 + 40)
    [alert] = _alerts(engine)
    assert (alert.state, alert.resolution) == ("resolved", "by_person")
    # clear, and back: a new alert
    store.apply([_printer_event(5, HEALTHY)], T0 + 50)
    store.apply([_printer_event(6, PAPER_OUT)], T0 + 60)
    alerts = _alerts(engine)
    assert [(a.state, a.resolution) for a in alerts] == [
        ("resolved", "by_person"),
        ("open", None),
    ]
    assert _history(engine, alerts[0].id) == ["open", "resolve", "rearm"]


def test_an_alert_nobody_acknowledges_escalates(engine: Engine) -> None:
    store = _running(engine)
    store.apply([_printer_event(2, PAPER_OUT)], T0 + 10)
    [alert] = _alerts(engine)
    store.sweep(T0 + 600)
    assert _history(engine, alert.id) == ["open"]
    store.sweep(T0 + 611)
    assert _history(engine, alert.id) == ["open", "escalate"]
    with engine.connect() as conn:
        row = conn.execute(select(ALERT).where(ALERT.c.id == alert.id)).mappings().one()
    assert (row["team"], row["level"], row["next_escalation_at"]) == ("second-line", 1, None)
    assert _notifications(engine)[-1] == (alert.id, "escalated", "second-hook")
    store.sweep(T0 + 1300)
    assert _history(engine, alert.id) == ["open", "escalate"]  # the last team: no further


def test_an_acknowledged_alert_does_not_escalate(engine: Engine) -> None:
    store = _running(engine)
    store.apply([_printer_event(2, PAPER_OUT)], T0 + 10)
    [alert] = _alerts(engine)
    _person(engine, alert, "ack", T0 + 300)
    store.sweep(T0 + 301)
    store.sweep(T0 + 700)
    assert _history(engine, alert.id) == ["open", "acknowledge"]


def test_host_thresholds_alert_when_crossed(engine: Engine) -> None:
    store = _running(engine)
    host = {"disk_percent": 50.0, "memory_percent": 40.0, "temperature_c": 50.0}
    store.apply([_msg(STATION, 5, "telemetry", 2, host=host)], T0 + 10)
    assert _alerts(engine) == []
    store.apply([_msg(STATION, 5, "telemetry", 3, host={**host, "disk_percent": 96.0})], T0 + 20)
    [disk] = _alerts(engine)
    assert (disk.condition, disk.severity, disk.device) == ("disk", "critical", None)
    store.apply([_msg(STATION, 5, "telemetry", 4, host={**host, "disk_percent": 90.0})], T0 + 30)
    [disk] = _alerts(engine)
    assert disk.severity == "warning"
    # a restarted writer keeps it (the latest host metrics are read back), then it clears
    restarted = _store(engine)
    restarted.apply(
        [_msg(STATION, 5, "telemetry", 5, host={**host, "disk_percent": 91.0})], T0 + 40
    )
    assert [(a.state, a.severity) for a in _alerts(engine)] == [("open", "warning")]
    restarted.apply([_msg(STATION, 5, "telemetry", 6, host=host)], T0 + 50)
    assert [(a.state, a.resolution) for a in _alerts(engine)] == [("resolved", "cleared")]


def test_without_receivers_no_notification_rows(engine: Engine) -> None:
    store = _store(engine, receivers=ReceiversSettings())
    store.apply([_birth(), _printer_event(1, PAPER_OUT)], T0)
    assert len(_alerts(engine)) == 1
    assert _count(engine, Notification) == 0


def test_a_flapping_printer_makes_one_alert_that_ends_after_quiet_time(engine: Engine) -> None:
    store = _running(engine)
    seq, t = 2, T0
    for _ in range(4):  # four open/clear cycles within the 10-minute window
        store.apply([_printer_event(seq, PAPER_OUT)], t + 10)
        store.apply([_printer_event(seq + 1, HEALTHY)], t + 20)
        seq, t = seq + 2, t + 30
    [flapping] = _alerts(engine, condition="flapping")
    assert (flapping.of, flapping.state, flapping.device) == ("paper_out", "open", "printer")
    assert [a.resolution for a in _alerts(engine, condition="paper_out")] == [
        "cleared",
        "cleared",
        "cleared",
        "flapping",
    ]
    # it flaps on: still one alert, no new paper_out alert
    store.apply([_printer_event(seq, PAPER_OUT)], t + 10)
    store.apply([_printer_event(seq + 1, HEALTHY)], t + 20)
    assert len(_alerts(engine, state="open")) == 1
    store.sweep(t + 20 + 599)
    assert _alerts(engine, condition="flapping")[0].state == "open"
    store.sweep(t + 20 + 601)  # quiet for 10 minutes: it ends by the sweep, nothing opens
    [flapping] = _alerts(engine, condition="flapping")
    assert (flapping.state, flapping.resolution) == ("resolved", "cleared")
    assert _alerts(engine, state="open") == []


@pytest.mark.parametrize("committed", [True, False], ids=["commit-went-through", "commit-failed"])
def test_a_failed_sweep_decides_again_at_the_next_one(engine: Engine, committed: bool) -> None:
    store = _running(engine)
    store.apply([_death()], T0 + 100)
    _lose_the_next_commit(engine, committed=committed)
    with pytest.raises(ConnectionResetError):
        store.sweep(T0 + 221)
    assert store.alerting.alerts == {}
    store.sweep(T0 + 222)
    [alert] = _alerts(engine)
    assert (alert.condition, alert.state) == ("offline", "open")
    assert _history(engine, alert.id) == ["open"]
    assert list(store.alerting.alerts) == [alert.id]


def test_an_offline_alert_due_while_the_controller_was_away_opens_at_its_first_sweep(
    engine: Engine,
) -> None:
    store = _running(engine)
    store.apply([_death()], T0 + 100)
    store.sweep(T0 + 110)
    # stopped before the alert fell due, back after
    restarted = _store(engine, started=T0 + 399)
    restarted.sweep(T0 + 400)
    [alert] = _alerts(engine)
    assert (alert.condition, alert.state, alert.details["since"]) == ("offline", "open", T0 + 100)
